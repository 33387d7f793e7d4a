"""`python -m trainer.vertex --local`: the job spec trainer.vertex submits, run here as the service runs it.

    python -m pytest -q tests/test_cloud_local.py

Real processes: two replicas training to the end on a `file://` job dir (a scheme every process shares that
takes the code's remote branches: "://" in the path, `tf.io.gfile`, Keras' remote saving), then evaluated; and
a tuning job of two trials whose metric files are read back to report the better one. Tiny model and data.
"""

import json
import os
import re
import subprocess
import sys

from tests import trainer_fixtures as fx
from trainer import evaluate
from trainer.objective.log_keys import MONITOR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "smoke", "--data.height=32", "--data.width=16", "--train.verbose=2",
        "--distribute.jit_compile=false", "--train.epochs=1", "--train.steps_per_epoch=2",
        "--train.validation_steps=1"]


def vertex_local(*flags, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC", "CLOUD_ML_TRIAL_ID")}
    proc = subprocess.run([sys.executable, "-m", "trainer.vertex", "--local", "--data_dir", fx.fixture_data_dir(),
                           *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def test_two_replicas_train_to_the_end_on_a_remote_scheme_and_the_job_dir_evaluates(tmp_path, capsys):
    job = f"file://{tmp_path}/job"
    code, lines, err = vertex_local("--job_dir", job, "--replica_count", "2", "--", *TINY)
    assert code == 0, "\n".join(lines[-30:]) + err
    for replica in ("chief:0", "worker:0"):  # every line prefixed by its replica; both trained the same steps
        assert any(line.startswith(f"[{replica}] hvc: ") and "on 2 replica(s)" in line for line in lines)
    assert any(line.startswith("[chief:0] done: ") for line in lines)
    written = sorted(os.listdir(tmp_path / "job"))
    assert {"checkpoints", "config.yaml", "layout.json", "logs", "model", "model.keras"} <= set(written)
    assert ".lock" not in written  # the lock released at the end (the backup stays, marked finished)
    evaluate.evaluate(job, None, "test", out_dir=str(tmp_path / "eval"))
    assert f"loaded {job}/checkpoints/best.keras (the best epoch's checkpoint" in capsys.readouterr().err


def test_two_trials_report_the_better_one(tmp_path):
    job = str(tmp_path / "tune")
    code, lines, err = vertex_local("--job_dir", job, "--tuning", "--max_trials", "2",
                                    "--param", "optim.max_lr=discrete:0.00001,0.5", "--", *TINY,
                                    "--train.export=false")
    assert code == 0, "\n".join(lines[-30:]) + err
    reported = {}
    for line in lines:
        m = re.match(rf"\[vertex --local\] trial (\d): {MONITOR}=([0-9.]+)  --optim.max_lr=(\S+)", line)
        if m:
            reported[m[1]] = (float(m[2]), m[3])
    assert sorted(v[1] for v in reported.values()) == ["0.5", "1e-05"]  # each value tried once
    for trial, (value, _) in reported.items():  # read back from what each trial's chief reported
        with open(os.path.join(job, trial, "metrics.json")) as f:  # the trial's own dir, as on the service
            assert round(json.load(f)[f"best_{MONITOR}"], 4) == value
        assert os.path.exists(os.path.join(job, trial, "checkpoints", "best.keras"))
    best = max(reported, key=lambda t: (reported[t][0], -int(t)))
    assert [line for line in lines if "] best trial" in line][0].startswith(f"[vertex --local] best trial {best}: ")
