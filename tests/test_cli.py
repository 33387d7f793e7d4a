"""The command lines as a user meets them: clean output in a pipe, and one line for every user error.

    python -m pytest -q tests/test_cli.py

A normal run whose output goes to a pipe (CI, Vertex AI, `> log`) shows no library start-up lines, warnings,
progress bars or stray output, and one line per training epoch; `--verbose` shows the rest. Every command
answers a missing path, a wrong flag, an unreadable file or a bad value with one line naming it and a
non-zero exit code, not a traceback.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys

import pytest

from tests import data_fixtures as fx
from tfds_person_attrs import cli
from trainer.training import progress

REPO = fx.REPO
# What must not reach a user's terminal or log in a normal run.
NOISE = [
    (re.compile(r"^[IWEF]\d{4} "), "a C++ (absl/TensorFlow) log line"),
    (re.compile(r"absl::InitializeLog|oneDNN|cuda|cuInit", re.I), "TensorFlow start-up"),
    (re.compile(r"Warning:|WARNING:"), "a library warning"),
    (re.compile(r"apitools"), "Beam's apitools note"),
    (re.compile(r"Traceback"), "a traceback"),
    (re.compile(r"\x1b\[|\r"), "terminal control characters (a progress bar)"),
    (re.compile(r"^\{\}$|^\{$"), "a stray JSON dump"),
    (re.compile(r"Downloading and preparing|Subsequent calls will reuse"), "TFDS chatter"),
]


def run_command(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a subprocess with stdout and stderr to pipes, as in CI or a redirected log."""
    inherited = (cli.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL", "TQDM_DISABLE")  # set in this process by `import trainer`
    environ = {k: v for k, v in os.environ.items() if k not in inherited}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          env={**environ, **(env or {})}, timeout=600)


def assert_clean(text: str) -> None:
    for line in text.splitlines():
        for pattern, what in NOISE:
            assert not pattern.search(line), f"{what} in a normal run's output: {line[:200]!r}"


def test_training_in_a_pipe_prints_one_line_per_epoch_to_stderr_and_its_result_to_stdout(hvc_data_dir, tmp_path):
    job = tmp_path / "job"
    flags = ["--config", "smoke", "--data_dir", hvc_data_dir, "--job_dir", str(job), "--data.height=32",
             "--data.width=16", "--train.epochs=2", "--train.steps_per_epoch=2", "--train.validation_steps=1"]
    r = run_command("trainer.task", *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    # the result alone on stdout, for a script: where the run is and its best score
    assert re.fullmatch(f"done: model, metrics.json and history.csv in {re.escape(str(job))} \\(best val mean "
                        r"balanced accuracy / mA 0\.\d{3}\)\n", r.stdout), r.stdout
    assert_clean(r.stderr)
    lines = r.stderr.splitlines()  # progress and diagnostics
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [e.split()[1] for e in epochs] == ["1/2", "2/2"]
    assert all("val mean bal" in e and "val mean acc" in e for e in epochs)
    assert len(lines) <= 5, lines  # strategy, run summary, 2 epochs


def test_a_data_dir_with_several_datasets_is_one_line_naming_them(tmp_path):
    for name in ("hvc", "street_people"):
        (tmp_path / "data" / "person_attrs" / name / "1.0.0").mkdir(parents=True)
        (tmp_path / "data" / "person_attrs" / name / "1.0.0" / "dataset_info.json").write_text("{}")
    r = run_command("trainer.task", "--config", "par", "--data_dir", str(tmp_path / "data"), "--job_dir",
                    str(tmp_path / "job"))
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"error: {tmp_path / 'data'} holds several datasets ['hvc', 'street_people']: pick one with "
        "--data.dataset=NAME"]


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path):
    quiet = run_command("trainer.evaluate", "--model", str(tmp_path / "missing"))
    assert quiet.returncode == 2 and quiet.stderr.splitlines() == [
        f"error: --model {tmp_path / 'missing'}: no such file or folder; pass a job dir, a .keras file or an "
        "exported model folder (JOB_DIR/model)"]
    loud = run_command("trainer.evaluate", "--model", str(tmp_path / "missing"), "--verbose")
    assert loud.returncode == 2 and "Traceback" in loud.stderr
    assert loud.stderr.splitlines()[-1] == quiet.stderr.splitlines()[0]


def test_dataset_build_in_a_pipe_prints_only_its_summary(tmp_path):
    manual = fx.write_real_slice(tmp_path / "manual", 30, num_missing=2)
    r = run_command("pipeline.preprocess", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert_clean(r.stdout + r.stderr)
    assert "every CSV row accounted for: yes" in r.stdout and len(r.stdout.splitlines()) <= 12


def test_progress_bar_on_a_terminal_one_line_per_epoch_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress.fit_verbosity("auto", Terminal()) == (1, [])
    verbose, callbacks = progress.fit_verbosity("auto", io.StringIO())
    assert verbose == 0 and [type(c) for c in callbacks] == [progress.EpochLine]
    assert progress.fit_verbosity("2", io.StringIO()) == (2, [])


def test_library_records_below_error_show_only_with_verbose(capsys):
    import logging

    def main(argv):
        logging.getLogger("absl").info("a library's chatter")
        logging.getLogger("apache_beam.io").warning("a library's warning")
        logging.getLogger("trainer.demo_step").info("the project's own line")
        try:
            raise RuntimeError("inner")
        except RuntimeError:
            logging.getLogger("apache_beam.runners").error("a library's error", exc_info=True)

    cli.run(main, [])
    quiet = capsys.readouterr().err.splitlines()
    assert quiet == ["the project's own line", "error: a library's error"]  # its one line, no traceback
    cli.run(main, ["--verbose"])
    loud = capsys.readouterr().err
    assert "INFO absl: a library's chatter" in loud and "WARNING apache_beam.io" in loud and "Traceback" in loud
    cli.run(main, [])  # back to quiet for the tests after this one


def test_only_the_known_library_warnings_are_silenced():
    """Known noise is dropped by its message; any other warning (a deprecation announcing a break) still shows."""
    import warnings

    def main(argv):
        for line, (category, message) in enumerate([(DeprecationWarning, "label() is deprecated. Use is_required()"),
                                                    (DeprecationWarning, "a new deprecation: f() goes in 3.0")]):
            warnings.warn_explicit(message, category, "library.py", line)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        cli.run(main, [])
    assert [str(w.message) for w in seen] == ["a new deprecation: f() goes in 3.0"]


def test_verbose_is_taken_off_before_a_double_dash_only():
    seen = []
    cli.run(lambda argv: seen.append(argv), ["--image", "x", "--", "--verbose"])
    assert seen == [["--image", "x", "--", "--verbose"]] and not cli.verbose()


# A command whose process writes to file descriptor 2 after its last line, as TensorFlow's C++ threads can while
# the interpreter shuts down (an atexit write stands in for them: it runs after main has returned), and one that
# fails with a bug.
TEARDOWN = """
import atexit, os, sys
from tfds_person_attrs import cli

def main(argv):
    if argv == ["bug"]:
        raise RuntimeError("a bug")
    atexit.register(lambda: os.write(2, b"E0000 late C++ line\\n"))
    print("error: the last line", file=sys.stderr)
    return 1

sys.exit(cli.run(main))
"""


@pytest.mark.parametrize("argv, last", [([], "error: the last line"), (["--verbose"], "E0000 late C++ line"),
                                        (["bug"], "RuntimeError: a bug")])
def test_what_the_process_writes_after_the_commands_last_line_shows_only_with_verbose(argv, last):
    proc = subprocess.run([sys.executable, "-c", TEARDOWN, *argv], capture_output=True, text=True, cwd=fx.REPO,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == last, proc.stderr


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Paths a user might get wrong: one that does not exist, an empty folder, a folder of text, one image."""
    root = tmp_path_factory.mktemp("places")
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images here")
    (root / "one.jpg").write_bytes(fx.encoded("RGB"))
    (root / "a_file").write_text("a file where a folder is expected")
    manual = fx.write_real_slice(root / "manual", 3)
    return {"missing": str(root / "missing"), "empty": str(root / "empty"), "notes": str(root / "notes"),
            "image": str(root / "one.jpg"), "manual": str(manual), "tmp": str(root),
            "file": str(root / "a_file")}


VERTEX = ["--image", "img", "--data_dir", "gs://b/d", "--job_dir", "gs://b/j"]
USER_ERRORS = [
    ("pipeline.preprocess", ["--data_dir", "{tmp}/d"], "--manual_dir"),
    ("pipeline.preprocess", ["--manual_dir", "{missing}", "--data_dir", "{tmp}/d"], "{missing}"),
    ("pipeline.preprocess", ["--manual_dir", "{manual}", "--data_dir", "{tmp}/d", "--overwirte"], "--overwirte"),
    ("pipeline.preprocess", ["--manual_dir", "{manual}", "--data_dir", "{tmp}/d", "--split", "80,x"], "80,x"),
    ("trainer.task", ["--config", "smoke", "--model.widht=2"], "widht"),
    ("trainer.task", ["--config", "smoke", "--model.width=two"], "model.width"),
    ("trainer.task", ["--config", "{missing}.yaml"], "{missing}.yaml"),
    ("trainer.task", ["--config", "smoke", "--job_dir", "{tmp}/j"], "--data_dir"),
    ("trainer.task", ["--config", "smoke", "--data_dir", "{missing}", "--job_dir", "{tmp}/j"], "{missing}"),
    ("trainer.task", ["--config", "smoke", "--data_dir", "{empty}", "--job_dir", "{file}"],
     "--job_dir {file} is a file, not a folder"),
    ("trainer.task", ["--config", "smoke", "--data_dir", "{empty}", "--job_dir", "{file}/run"],
     "--job_dir {file}/run is under {file}, which is a file"),
    ("trainer.evaluate", ["--model", "{empty}", "--out", "{file}/eval"], "--out {file}/eval is under {file}"),
    ("trainer.evaluate", ["--model", "{empty}", "--out", "{file}"], "--out {file} is a file"),
    ("trainer.export", ["--job_dir", "{empty}", "--export_dir", "{file}/model"], "--export_dir {file}/model is under"),
    ("trainer.evaluate", ["--model", "{missing}"], "{missing}"),
    ("trainer.evaluate", ["--model", "{empty}"], "no model in {empty}"),
    ("trainer.evaluate", ["--model", "{empty}", "--batch_size", "0"], "--batch_size"),
    ("trainer.export", ["--job_dir", "{missing}"], "{missing}"),
    ("trainer.export", ["--job_dir", "{empty}"], "no model in {empty}"),
    ("trainer.predict", ["--model", "{empty}", "{image}"], "{empty}: no saved_model.pb"),
    ("trainer.predict", ["--model", "{empty}", "{empty}"], "nothing to predict"),
    ("trainer.predict", ["--model", "{empty}", "{image}", "--format", "xml"], "--format"),
    ("trainer.lr_find", ["--config", "smoke", "--steps", "0"], "--steps"),
    ("trainer.lr_find", ["--config", "smoke", "--start_lr", "1", "--end_lr", "0.1"], "--start_lr"),
    ("trainer.lr_find", ["--config", "smoke", "--data_dir", "{missing}"], "{missing}"),
    ("trainer.vertex", ["--data_dir", "gs://b/d", "--job_dir", "gs://b/j"], "--image"),
    ("trainer.vertex", [*VERTEX, "--env", "NO_VALUE", "--dry_run"], "--env"),
    ("trainer.vertex", [*VERTEX, "--replica_count", "0", "--dry_run"], "--replica_count"),
    ("trainer.vertex", [*VERTEX, "--tuning", "--param", "train.max_lr=float:0:1", "--dry_run"], "--param"),
    ("pipeline.kubeflow", ["compile", "{missing}/pipeline.yaml"], "{missing}"),
    ("pipeline.kubeflow", ["run", "--project", "p", "--pipeline_root", "gs://b/r", "--template", "{missing}"],
     "--template"),
    ("pipeline.kubeflow", ["run", "--project", "p", "--pipeline_root", "{tmp}"], "gs://"),
    ("pipeline.kubeflow", ["run", "--project", "p", "--pipeline_root", "gs://b/r", "--param", "epochs=3"], "epochs"),
    ("pipeline.demo", ["--data", "{missing}"], "{missing}"),
    ("pipeline.demo", ["--num_images", "-5"], "--num_images"),
]


@pytest.mark.parametrize("module, argv, named", USER_ERRORS, ids=[f"{m}:{' '.join(a)[:40]}" for m, a, _ in USER_ERRORS])
def test_user_errors_get_one_line_and_a_non_zero_exit(places, capsys, module, argv, named):
    main = importlib.import_module(module).main
    argv = [a.format(**places) for a in argv]
    try:
        code = cli.run(main, argv)
    except SystemExit as e:  # argparse's own exit, as `python -m` would end
        code = e.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), f"exit code {code}"
    assert "Traceback" not in err
    assert len(lines) == 1 and named.format(**places) in lines[0], err


def test_a_failing_demo_step_ends_the_demo_with_its_exit_code(places, capfd):
    from pipeline import demo

    code = demo.main(["--out", f"{places['tmp']}/demo_out", "--data", places["empty"]])
    err = capfd.readouterr().err.splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-2].startswith("error: no hvc_annotations.csv in")  # the step's own one line
    assert err[-1] == "error: step 'build the dataset (Beam, DirectRunner)' failed (exit code 2); its output is above"
