"""The code's layers: docs/architecture.md's picture names every module in its folder and marks the runnable ones,
import-linter's contracts (pyproject.toml) hold and draw the same layers as the doc, and no import hides inside
a function.

    python -m pytest -q tests/test_architecture_doc.py
"""

import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

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


def _contracts() -> dict:
    text = (ROOT / "pyproject.toml").read_text()
    return {c["id"]: c for c in tomllib.loads(text)["tool"]["importlinter"]["contracts"]}


def _lint_imports(root: pathlib.Path) -> subprocess.CompletedProcess:
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_layer_contracts_hold():
    """import-linter's contracts (pyproject.toml): no upward import, no cycle, the demo generator and the
    orchestration apart; function-level imports count too."""
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_a_planted_upward_import_breaks_the_contracts(tmp_path):
    """The contracts are not vacuous: a building block that imports a command fails them, naming the edge."""
    for name in (*PACKAGES, "pyproject.toml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    network = tmp_path / "trainer" / "model" / "network.py"
    network.write_text(network.read_text() + "\nimport trainer.task  # noqa: E402,F401\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "trainer.model.network -> trainer.task" in out.stdout


def test_the_doc_draws_the_layers_the_contract_checks():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## The layers"):]
    block = section[section.index("```") + 3:section.index("```", section.index("```") + 3)]
    drawn = [line.split("  ", 1)[1].strip() for line in block.strip().splitlines() if "  " in line.strip()]
    checked = [" ".join(layer.split()) for layer in _contracts()["layers"]["layers"]]
    assert [" ".join(d.split()) for d in drawn] == checked


# Function-level imports allowed: heavy or optional third-party packages, each with a comment saying so on its
# line or the line above. A project module is always imported at the top, so the contracts see every edge.
_REASON = re.compile(r"#.*\b(heavy|optional|only when|KFP)\b", re.I)


# KFP runs a lightweight component's function body alone in the container, so its imports must live inside it.
_COMPONENT_MODULES = ("pipeline/kfp_components.py",)


def test_function_level_imports_are_third_party_and_say_why():
    own = set(PACKAGES)
    problems = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() in _COMPONENT_MODULES:
                continue
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for sub in ast.walk(node):
                    if not isinstance(sub, (ast.Import, ast.ImportFrom)) or (
                            isinstance(sub, ast.ImportFrom) and sub.level):
                        continue
                    names = [sub.module] if isinstance(sub, ast.ImportFrom) else [a.name for a in sub.names]
                    where = f"{path.relative_to(ROOT)}:{sub.lineno} ({', '.join(names)})"
                    if any(n.split(".")[0] in own for n in names):
                        problems.append(f"{where}: a project module imported inside a function")
                    elif not any(_REASON.search(lines[i]) for i in (sub.lineno - 1, sub.lineno - 2) if i >= 0):
                        problems.append(f"{where}: no comment saying why it is imported here")
    assert not problems, "\n".join(problems)
