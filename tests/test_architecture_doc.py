"""docs/architecture.md's picture of the code names every module in its folder, and marks exactly the runnable ones.

    python -m pytest -q tests/test_architecture_doc.py
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "pipeline", "tfds_person_attrs")
# A row of the picture: an optional stage word, then the folder its modules are in (kept for the rows below that
# name none), then the modules.
FOLDER = re.compile(r"^(?:[a-z]+)?\s+((?:" + "|".join(PACKAGES) + r")/(?:[a-z_]+/)*)\s")


def picture() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Where the code is: one picture"):]
    return section[section.index("```") + 3:section.index("```", section.index("```") + 3)]


def shown() -> dict[str, bool]:
    """{module path as the picture places it: whether it is marked * (runs as python -m)}."""
    out, folder = {}, ""
    for line in picture().splitlines():
        match = FOLDER.match(line)
        if match:
            folder, line = match.group(1), line[match.end():]
        for name, star in re.findall(r"([a-z_]+\.py)(\*?)", line):
            out[folder + name] = bool(star)
    return out


def modules() -> dict[str, bool]:
    """{module path: whether it runs as `python -m`}, over every module of the packages (TFDS' *_test.py aside)."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "__init__.py" and not path.name.endswith("_test.py"):
                out[path.relative_to(ROOT).as_posix()] = "if __name__ == \"__main__\"" in path.read_text()
    return out


def test_every_module_is_in_its_folder_in_the_picture_and_runnable_ones_are_marked():
    pictured, actual = shown(), modules()
    missing = sorted(set(actual) - set(pictured))
    assert not missing, f"modules missing from docs/architecture.md's picture (or under the wrong folder): {missing}"
    extra = sorted(set(pictured) - set(actual))
    assert not extra, f"the picture names modules that do not exist: {extra}"
    wrong = sorted(path for path, runs in actual.items() if runs != pictured[path])
    assert not wrong, f"marked * (runs as python -m) wrongly: {wrong}"


def test_the_picture_reads_rows_by_folder():
    """The parser above would accept an empty picture; this one holds modules from every package."""
    folders = {path.rsplit("/", 1)[0] for path in shown()}
    assert {"trainer", "trainer/training", "trainer/evaluation", "pipeline", "tfds_person_attrs"} <= folders


def test_the_building_blocks_import_no_stage_above_them():
    """trainer/input, model, objective and optim import nothing of the trainer but trainer.config and each other,
    as docs/architecture.md says: training, the job dir, evaluation and the commands build on them, not the
    reverse."""
    blocks = ("input", "model", "objective", "optim")
    allowed = re.compile(r"trainer\.(config|" + "|".join(blocks) + r")\b")
    for package in blocks:
        for path in (ROOT / "trainer" / package).glob("*.py"):
            code = path.read_text().split('"""', 2)[-1]  # the code after the docstring, whose example may import
            for imported in re.findall(r"^\s*(?:from|import) (trainer\S*)", code, re.M):
                assert allowed.match(imported), f"{path.relative_to(ROOT)} imports {imported}"
