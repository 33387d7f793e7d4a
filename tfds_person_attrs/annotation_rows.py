"""The manual data's CSV validated against a schema: each row becomes an `Annotation` or a `Skipped` record
with its reason, so that a wrong column or an unreadable file fails before any worker starts.

    python -m tfds_person_attrs.annotation_rows ../shared/data   # prints row counts and skip reasons
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import posixpath
import sys

from tfds_person_attrs.build_errors import ManualDataError
from tfds_person_attrs.manual_data import ManualData, unsafe_path_reason
from tfds_person_attrs.schema import HVC, Schema

OUTSIDE_REASON = "path_outside_manual_dir"


@dataclasses.dataclass(frozen=True)
class Annotation:
    row: int  # 1-based data row number in the CSV (the header is row 0)
    image_id: str  # the CSV's image path, normalised (`resized//2.jpg` and `./resized/2.jpg` are `resized/2.jpg`)
    labels: dict  # attribute name -> class index (single) or tuple of 0/1 (multi)
    group: str | None = None

    def to_json(self) -> str:
        return json.dumps([self.row, self.image_id, self.labels, self.group])


def batches_to_jsonl(annotations: list[Annotation], batch_size: int) -> str:
    """Annotations as JSON lines of `batch_size` rows each (a Beam build reads a line as one batch)."""
    return "".join("[" + ",".join(a.to_json() for a in annotations[i:i + batch_size]) + "]\n"
                   for i in range(0, len(annotations), batch_size))


def batch_from_json(line: str) -> list[Annotation]:
    return [Annotation(*fields) for fields in json.loads(line)]


@dataclasses.dataclass(frozen=True)
class Skipped:
    row: int
    image_id: str
    reason: str  # short key: missing_image, unreadable_image, bad_label, duplicate_id, ...
    message: str



def parse_annotations(csv_bytes: bytes, schema: Schema, source: str = "CSV") -> tuple[list[Annotation], list[Skipped]]:
    """Validates every row; returns the usable ones and the skipped ones, each with its reason."""
    try:
        text = csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = csv_bytes[: e.start].count(b"\n") + 1
        raise ManualDataError(f"{source} is not UTF-8 (bad byte at line {line}, byte {e.start}); re-save it as UTF-8, "
                              f"e.g. `iconv -f latin1 -t utf-8`") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        raise ManualDataError(f"{source} is empty: it needs a header row with columns {list(schema.required_columns)}")
    missing = [c for c in schema.required_columns if c not in header]
    if missing:
        raise ManualDataError(f"{source} lacks column(s) {missing} that schema {schema.name!r} needs; it has {header}. "
                              f"Fix the CSV header or pass a schema file that names the right columns")
    kept: list[Annotation] = []
    skipped: list[Skipped] = []
    first_row_of: dict[str, int] = {}
    for row_num, row in enumerate(reader, start=1):
        written = (row.get(schema.image_column) or "").strip()
        if not written:
            skipped.append(Skipped(row_num, "", "missing_image_path",
                                   f"row {row_num}: column {schema.image_column!r} is empty"))
            continue
        unsafe = unsafe_path_reason(written)
        if unsafe:
            skipped.append(Skipped(row_num, written, OUTSIDE_REASON,
                                   f"row {row_num}: image path {written!r} {unsafe}; image paths must be relative "
                                   f"to the manual dir and stay inside it, so it was not read"))
            continue
        image_id = posixpath.normpath(written)  # one file, one id: resized//2.jpg is resized/2.jpg
        labels, label_errors = _parse_labels(schema, row)
        if image_id in first_row_of:  # every problem of the row is reported, under the first one's reason
            same = "" if written == image_id else f" (the same file as {image_id})"
            also = "".join(f"; also {e}" for e in label_errors)
            skipped.append(Skipped(row_num, image_id, "duplicate_id", f"row {row_num}: image {written}{same} already "
                                                                      f"used by row {first_row_of[image_id]}{also}"))
            continue
        if label_errors:
            skipped.append(Skipped(row_num, image_id, "bad_label", f"row {row_num} ({image_id}): "
                                                                   + "; ".join(label_errors)))
            continue
        first_row_of[image_id] = row_num
        group = (row.get(schema.group_column) or "").strip() or None if schema.group_column else None
        kept.append(Annotation(row_num, image_id, labels, group))
    if not kept and not skipped:
        raise ManualDataError(f"{source} has a header but no data rows")
    return kept, skipped


def _parse_labels(schema: Schema, row: dict) -> tuple[dict, list[str]]:
    """The row's labels by attribute, and what is wrong with each bad one (all of them, not just the first)."""
    labels, errors = {}, []
    for a in schema.attributes:
        try:
            labels[a.name] = _parse_label(a, row)
        except ValueError as e:
            errors.append(str(e))
    return labels, errors


def _parse_label(attr, row: dict):
    if not attr.is_multi_label:
        value = (row.get(attr.column) or "").strip()
        if value not in attr.classes:
            raise ValueError(f"{attr.column}={value!r} is not one of {list(attr.classes)}")
        return attr.classes.index(value)
    if attr.columns:
        values = [(col, (row.get(col) or "").strip()) for col in attr.columns]
        bad = [f"{col}={value!r}" for col, value in values if value not in ("0", "1")]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be 0 or 1")
        bits = [int(value) for _, value in values]
        return tuple(bits)
    names = [n.strip() for n in (row.get(attr.column) or "").split(attr.delimiter) if n.strip()]
    unknown = [n for n in names if n not in attr.classes]
    if unknown:
        raise ValueError(f"{attr.column} has {unknown}, not in {list(attr.classes)}")
    return tuple(int(c in names) for c in attr.classes)


def main(argv: list[str]) -> int:
    data = ManualData(argv[0], HVC)
    kept, skipped = parse_annotations(data.read_csv_bytes(), HVC, source=data.csv_path)
    by_reason = dict(collections.Counter(s.reason for s in skipped))
    print(f"{data}: {len(kept)} usable rows, {len(skipped)} skipped: {by_reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
