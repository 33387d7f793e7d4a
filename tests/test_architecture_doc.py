"""docs/architecture.md's picture of the code names every module, and marks exactly the runnable ones.

    python -m pytest -q tests/test_architecture_doc.py
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "pipeline", "tfds_person_attrs")


def picture() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Where the code is: one picture"):]
    return section[section.index("```") + 3:section.index("```", section.index("```") + 3)]


def modules() -> dict[str, bool]:
    """{module file name: whether it runs as `python -m`}, over the packages' top-level modules."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            if path.name != "__init__.py":
                out[path.name] = "if __name__ == \"__main__\"" in path.read_text()
    return out


def test_every_module_is_in_the_picture_and_runnable_ones_are_marked():
    shown = dict(re.findall(r"([a-z_]+\.py)(\*?)", picture()))
    missing = sorted(set(modules()) - set(shown))
    assert not missing, f"modules missing from docs/architecture.md's picture: {missing}"
    wrong = sorted(name for name, runs in modules().items() if runs != bool(shown[name]))
    assert not wrong, f"marked * (runs as python -m) wrongly: {wrong}"
    assert not set(shown) - set(modules()), "the picture names a module that does not exist"
