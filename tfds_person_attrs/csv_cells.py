"""CSV cells that a spreadsheet shows as text, and that read back as they were written.

Every CSV the project writes from data (predictions, label_issues.csv, a fold's held_out.csv, build_skipped.csv)
holds names from users' files: an image path or class name such as `=HYPERLINK("http://x", "y")` would be a live
formula once the CSV is opened in a spreadsheet. `as_text` writes such a cell with a leading `'` (OWASP's advice
against CSV injection), which spreadsheets show as text; `original` undoes it, so the project's own readers (e.g.
`--data.exclude_ids=label_issues.csv`) get the ids back exactly.

    python -c "from tfds_person_attrs.csv_cells import as_text, original; c = as_text('=1+2'); print(c, original(c))"

Standard library only: the dataset build and the trainer both import it.
"""

from __future__ import annotations

from typing import Any, Mapping

# A spreadsheet reads a cell starting with one of these as a formula (tab and CR: LibreOffice strips them first).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
_ESCAPED = FORMULA_STARTS + (QUOTE,)  # a cell that already starts with ' is quoted too, so that reading is exact


def as_text(value: Any) -> Any:
    """The CSV cell for `value`: a string a spreadsheet would take for a formula gets a leading `'`; numbers and
    other strings are written as they are."""
    if isinstance(value, str) and value.startswith(_ESCAPED):
        return QUOTE + value
    return value


def original(cell: str) -> str:
    """The value `as_text` wrote as `cell` (a cell it did not change comes back unchanged)."""
    if cell.startswith(QUOTE) and cell[1:].startswith(_ESCAPED):
        return cell[1:]
    return cell


def text_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A csv.DictWriter row with every cell through `as_text`."""
    return {key: as_text(value) for key, value in row.items()}
