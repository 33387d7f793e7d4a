"""Multi-worker training with real processes on 127.0.0.1, as Vertex AI runs it: same command, same --job_dir.

    python -m pytest -q tests/test_trainer_multiworker.py

- Two workers with per-replica batch b compute what one process computes with batch 2b: same losses and
  weights after k steps (the gradients really are all-reduced; augmentation and dropout off).
- (kill -9 of the chief mid-epoch, and SIGTERM to one worker: tests/test_trainer_resume.py)
- Bad input (TF_CONFIG, port in use, global batch, a job dir in use): one line, exit status 2.
Tiny model (WRN-10-1 at 32x16) on the generated fixture dataset.
"""

import contextlib
import csv
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tests import trainer_fixtures as fx
from trainer.training import cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "smoke", "--data.height=32", "--data.width=16", "--train.verbose=2",
        "--distribute.jit_compile=false"]


def trainer_args(job, *extra):
    return [*TINY, "--data_dir", fx.fixture_data_dir(), "--job_dir", str(job), *extra]


def start(args, tf_config=None, launcher_workers=0):
    """A trainer (or launcher) process whose output goes to files: pipes nobody reads would fill and stall it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config:
        env["TF_CONFIG"] = tf_config
    command = ["-m", "trainer.launch", "--workers", str(launcher_workers), "--"] if launcher_workers else \
        ["-m", "trainer.task"]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, *command, *args], cwd=REPO, env=env, stdout=out, stderr=err, text=True)
    proc.outputs = (out, err)
    return proc


@contextlib.contextmanager
def killed_at_exit(procs):
    """Whatever happens in the test, no process it started outlives it."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def finish(proc, timeout=300):
    """(exit status, stdout, stderr) once the process ends."""
    proc.wait(timeout=timeout)
    texts = []
    for f in proc.outputs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return proc.returncode, *texts


def rows(job):
    with open(f"{job}/history.csv") as f:
        return list(csv.DictReader(f))


def final_weights(job):
    import keras

    from trainer.evaluation.eval_model import load_job

    model, _, _ = load_job(str(job) + "/model.keras")
    return model.get_weights(), keras


def test_two_workers_match_one_process(tmp_path):
    # train[:16] with a global batch of 16: every step the two workers read the two halves of the slice, and the
    # single process reads the whole slice, so both compute the gradient of the same 16 examples.
    same = ["--data.train_split=train[:16]", "--train.global_batch_size=16", "--train.steps_per_epoch=1",
            "--train.epochs=3", "--train.validation_steps=0", "--augment.enabled=false", "--model.dropout=0.0",
            "--data.shuffle_buffer=0",
            # equal head weights, not the hvc schema's: the tolerances below were measured with them
            "--loss.weights={gender: 1, image_quality: 1, age: 1, weight: 1, bag: 1, footwear: 1, emotion: 1, pose: 1}"]
    with killed_at_exit([start(trainer_args(tmp_path / "two", *same), launcher_workers=2),
                         start(trainer_args(tmp_path / "one", *same))]) as (two, one):
        (code2, out2, err2), (code1, out1, err1) = finish(two), finish(one)
    assert code2 == 0, (out2 + err2)[-3000:]
    assert code1 == 0, (out1 + err1)[-3000:]
    assert any(line.startswith("[chief:0] ") for line in out2.splitlines())
    assert any(line.startswith("[worker:0] ") for line in out2.splitlines())

    r1, r2 = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert len(r1) == len(r2) == 3
    for a, b in zip(r1, r2):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4)
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-4)  # validation sharded too
        assert float(b["val_mean_accuracy"]) == pytest.approx(float(a["val_mean_accuracy"]), abs=1e-6)
    # Float tolerance: summation order differs (two partial sums all-reduced; synchronised batch norm's
    # E[x^2]-E[x]^2 against one process's moments). Measured: max |difference| 1.4e-4, mean 5e-6 over all weights;
    # a process that saw only the chief's half of each batch (no all-reduce) ends max 0.057, mean 5.2e-3 away.
    w1, _ = final_weights(tmp_path / "one")
    w2, _ = final_weights(tmp_path / "two")
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-4)
    assert np.mean([np.abs(a - b).mean() for a, b in zip(w1, w2)]) < 1e-4
    assert float(r1[0]["loss"]) != pytest.approx(float(r1[-1]["loss"]), rel=1e-3)  # it did train
    assert sorted(os.listdir(tmp_path / "two")) == ["backup", "checkpoints", "config.yaml", "history.csv",
                                                    "layout.json", "logs", "metrics.json", "model",
                                                    "model.keras"]  # chief only


def run_task(args, tf_config=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return subprocess.run([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("tf_config, message", [
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]', "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG task worker:2 is outside the cluster: worker has 2 task(s), indices 0-1"),
    ('{"cluster": {"worker": ["localhost:1"], "ps": ["localhost:2"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG cluster has a 'ps' job"),
    ('{"cluster": {"worker": ["localhost", "localhost:2"]}, "task": {"type": "worker", "index": 0}}',
     "address 'localhost' is not host:port"),
])
def test_bad_tf_config_is_one_line(tmp_path, tf_config, message):
    proc = run_task(["--config", "smoke", "--data_dir", str(tmp_path), "--job_dir", str(tmp_path / "job")], tf_config)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        tf_config = cluster.tf_config({"worker": [f"localhost:{port}", "localhost:1"]}, "worker", 0)
        proc = run_task(["--config", "smoke", "--data_dir", str(tmp_path), "--job_dir", str(tmp_path)], tf_config)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"port {port} of this task (worker:0 at localhost:{port} in TF_CONFIG) is already in use" in proc.stderr


def error_line(proc) -> str:
    """The error a failed run ends with: its last line on stderr, with no traceback before it."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def test_batch_not_divisible_and_job_dir_in_use_are_one_line(tmp_path):
    from trainer.jobdir.joblock import JobLock

    bad_batch = run_task(trainer_args(tmp_path / "a", "--distribute.cpu_devices=2", "--train.global_batch_size=3"))
    assert bad_batch.returncode == 2 and error_line(bad_batch) == (
        "error: train.global_batch_size=3 is not divisible by the 2 replicas; pick a multiple of 2")
    with JobLock(str(tmp_path / "b")):  # held by this (live) test process
        in_use = run_task(trainer_args(tmp_path / "b"))
    assert in_use.returncode == 2
    assert error_line(in_use).startswith(f"error: job dir {tmp_path / 'b'} is in use by another run: host "
                                         f"{socket.gethostname()} pid {os.getpid()}")
