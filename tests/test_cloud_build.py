"""Cloud Build and container files name only what exists, and define every substitution they use.

    python -m pytest -q tests/test_cloud_build.py
"""

import importlib.util
import os
import pathlib
import re
import shlex
import tarfile

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Flags whose value is a file the step reads from the build's source tree.
FILE_FLAGS = {"-f", "--file", "-c", "-r", "--requirement", "--constraint", "--setup_file", "--requirements_file"}
SUBSTITUTION = re.compile(r"\$(?:\{(_[A-Z0-9_]+)\}|(_[A-Z0-9_]+))")


@pytest.fixture(scope="module")
def build():
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def step_words(step):
    """A step's command line as words; a `bash -c SCRIPT` step is split into its script's words."""
    args = [str(a) for a in step.get("args", [])]
    if step.get("entrypoint") in ("bash", "sh") and args[:1] == ["-c"]:
        args = shlex.split(" ".join(args[1:]).replace("&&", " "))
    return [str(step.get("entrypoint", ""))] + args


def test_every_substitution_is_defined(build):
    text = (ROOT / "cloudbuild.yaml").read_text().replace("$$", "")  # $$ escapes a literal $
    used = {a or b for a, b in SUBSTITUTION.findall(text)}
    assert used, "no user substitutions found: the pattern is broken"
    assert used <= set(build["substitutions"]), f"undefined: {sorted(used - set(build['substitutions']))}"
    assert {"_REGION", "_REPOSITORY", "_TAG", "_IMAGE"} <= set(build["substitutions"])
    assert build["options"]["dynamicSubstitutions"]  # _IMAGE is built from the others
    assert "${PROJECT_ID}" in build["substitutions"]["_IMAGE"]


def test_named_files_and_modules_exist(build):
    steps = {s["id"]: s for s in build["steps"]}
    assert list(steps) == ["build", "test", "compile-pipeline"]  # image first, push only after tests pass
    produced = set()
    for step in steps.values():
        words = step_words(step)
        for flag, value in zip(words, words[1:]):
            if flag in FILE_FLAGS:
                assert (ROOT / value).is_file(), f"step {step['id']} reads {value}, which is not in the repo"
            if flag == "-m" and value != "pytest":
                assert importlib.util.find_spec(value), f"step {step['id']} runs python -m {value}: no such module"
        if "compile" in words:
            produced.add(words[words.index("compile") + 1])
        for word in words:
            if word in ("tests", "tfds_person_attrs"):
                assert (ROOT / word).is_dir()
    assert "Dockerfile" in step_words(steps["build"])
    assert build["images"] == ["${_IMAGE}"]
    assert set(build["artifacts"]["objects"]["paths"]) <= produced, "an artifact no step writes"


def test_dockerfile_copies_what_exists():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"tensorflow/tensorflow:\d+\.\d+\.\d+-gpu(@sha256:[0-9a-f]{64})?", base), base
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and line[0] != "#"]
    for sources in re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", text, re.M):
        for src in sources.split():
            assert src == "." or (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
            assert src not in ignored, f"{src} is copied but .dockerignore drops it"
    assert re.search(r"pip install -c constraints\.txt \"\.\[gcp\]\"", text)  # the pins CI and Dataflow use


def test_sdist_ships_the_requirement_files(tmp_path):
    """Dataflow's --setup_file builds an sdist and pip-installs it on workers; setup.py reads requirements.txt."""
    import subprocess
    import sys

    # A fresh --egg-base: an old SOURCES.txt in the tree would otherwise hide a missing MANIFEST.in entry.
    command = ["setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d", str(tmp_path)]
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True)
    [sdist] = tmp_path.glob("*.tar.gz")
    names = {n.split("/", 1)[-1] for n in tarfile.open(sdist).getnames()}
    assert {"setup.py", "requirements.txt", "requirements-dev.txt", "pipeline/kubeflow.py", "trainer/task.py",
            "trainer/evaluation/templates/report.html"} <= names


def test_installed_package_finds_the_report_template(tmp_path):
    """What an install copies (build_py: the packages and their package_data) holds the report's template, and
    the report renders with it from there."""
    import subprocess
    import sys

    build = tmp_path / "lib"
    command = ["setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "build_py", "--build-lib", str(build)]
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True)
    templates = {p.name for p in (ROOT / "trainer" / "evaluation" / "templates").iterdir()}
    assert templates and templates == {p.name for p in (build / "trainer" / "evaluation" / "templates").iterdir()}
    render = "from trainer import report; print(report.__file__); print(report.write_report('r', metrics={'x': 1}))"
    out = subprocess.run([sys.executable, "-c", render], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(build)},
                         check=True, capture_output=True, text=True)
    module, page = out.stdout.split()
    assert module == str(build / "trainer" / "report.py")  # the built copy, not this checkout
    assert "<td>x</td><td>1</td>" in (tmp_path / page).read_text()
