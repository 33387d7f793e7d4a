"""A run stopped twice at random steps, once by SIGTERM (Vertex AI's preemption notice) and once by SIGKILL (a lost
machine), and started again each time with the same command, ends as a run never stopped: the same weights and
the same examples at every step, in one process and with two workers (real processes, deterministic ops).

    python -m pytest -q tests/test_trainer_resume.py

Each test starts the uninterrupted run and the run to be stopped side by side. SIGTERM goes to one task once the
stopped run's backup (one per step) has passed a step drawn at random: every task commits a backup at the same
step boundary and exits 143 with one line naming it. The same command again resumes there; SIGKILL then hits the
chief (lock holder and collective leader) after a later random step: with two workers the other one stops by
itself with one line saying it lost contact. The same command again takes over the dead run's lock,
resumes from the last backup and finishes; the final model.keras and the ids each step trained on
(`--train.log_example_ids`) are compared with the uninterrupted run's. Float tolerance: none; with deterministic
ops the weights are equal bit for bit (assert_array_equal). The random steps are printed on failure. Tiny
model, 3 epochs of 4 steps, MixUp and the default augmentation on (their random states are part of what must
resume).
"""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from tests import trainer_fixtures as fx
from tests.test_trainer_startup import listeners
from trainer.input.data import read_ids_log
from trainer.jobdir import backup
from trainer.launch import free_ports
from trainer.training import cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS = 3, 4
# TF_DETERMINISTIC_OPS is TensorFlow's switch for tf.config.experimental.enable_op_determinism(): without it,
# two runs may differ in the last bits however they were stopped.
ENV = {**{k: v for k, v in os.environ.items() if k != "TF_CONFIG"}, "TF_DETERMINISTIC_OPS": "1"}
STOPPED = re.compile(r"error: stopped by SIGTERM after step (\d+): backup written to (\S+); start the same "
                     r"command again to resume from it")


def command(job) -> list[str]:
    return [sys.executable, "-m", "trainer.task", "--config", "smoke", "--data_dir", fx.fixture_data_dir(),
            "--job_dir", str(job), "--data.height=32", "--data.width=16", "--train.verbose=2",
            "--distribute.jit_compile=false", f"--train.epochs={EPOCHS}", f"--train.steps_per_epoch={STEPS}",
            "--train.validation_steps=1", "--train.backup_every_steps=1", "--train.log_example_ids=true",
            "--augment.mixup=0.2", "--data.shuffle_buffer=16", "--train.export=false"]


class Run:
    """The tasks of one run of the command: one process, or one per worker on `ports` (worker 0 the chief)."""

    def __init__(self, job, ports: list[int]):
        layout = {"worker": [f"localhost:{p}" for p in ports]}
        self.procs = []
        for i in range(len(ports)):
            env = {**ENV, "TF_CONFIG": cluster.tf_config(layout, "worker", i)} if len(ports) > 1 else ENV
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            proc = subprocess.Popen(command(job), cwd=REPO, env=env, stdout=out, stderr=err, text=True)
            proc.outputs = (out, err)
            self.procs.append(proc)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def finish(self, timeout=900) -> list[tuple[int, str]]:
        """(exit status, stderr) of each task once it ended; a task still running after `timeout` s is killed."""
        results = []
        for p in self.procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.outputs[1].seek(0)
            results.append((p.returncode, p.outputs[1].read()))
        return results

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def committed_step(job) -> int:
    try:
        state = backup.read_state(str(job / "backup"))
    except (ValueError, OSError):  # (state.json being replaced)
        return -1
    return -1 if state is None else state.step


def wait_past(job, step: int, run: Run, where: str) -> None:
    deadline = time.monotonic() + 900
    while committed_step(job) < step and run.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    # (a task that ended before the signal: its own error)
    assert run.alive(), "\n".join(err[-2000:] for _, err in run.finish()) + where
    assert committed_step(job) >= step, f"no backup of step {step} after 900 s" + where


def final_weights(job):
    from trainer.evaluation.eval_model import load_job

    model, _, _ = load_job(str(job / "model.keras"))
    return model.get_weights()


def step_ids(job, pipelines: int) -> list[list[str]]:
    """Per step of the run, the ids every input pipeline fed it (lines read ahead of the last step dropped)."""
    logs = [read_ids_log(str(job / "example_ids" / f"pipeline-{i}.csv")) for i in range(pipelines)]
    return [[i for log in logs for i in log[step]] for step in range(EPOCHS * STEPS)]


def stopped_twice_and_resumed_equals_uninterrupted(tmp_path, workers: int) -> None:
    rng = random.Random()
    term_after = rng.randint(1, EPOCHS * STEPS // 2 - 1)
    where = f" (drawn: SIGTERM after step {term_after})"
    whole, job = tmp_path / "whole", tmp_path / "stopped"
    ports = free_ports(2 * workers) if workers > 1 else [0, 0]
    runs = [Run(whole, ports[workers:]), Run(job, ports[:workers])]
    reference, first = runs
    try:
        wait_past(job, term_after, first, where)
        if workers > 1:  # TensorFlow's gRPC server listens on every interface, whatever host TF_CONFIG names
            assert listeners(ports[0]) in (None, ["0.0.0.0"], ["::"])
        first.procs[-1].send_signal(signal.SIGTERM)  # one task only (a preempted replica); the others follow it
        results = first.finish(120)
        outputs = "\n".join(err[-1500:] for _, err in results) + where
        assert [code for code, _ in results] == [143] * workers, outputs
        assert all("Traceback" not in err for _, err in results), outputs
        stopped_at = committed_step(job)
        # every task at the same step, the one of the chief's backup that the same command resumes from
        stops = [STOPPED.fullmatch(err.strip().splitlines()[-1]) for _, err in results]
        assert all(m and m.groups() == (str(stopped_at), str(job / "backup")) for m in stops), outputs
        assert not (job / ".lock").exists()

        # after a step the resumed run trains itself (killed at start-up, the other worker would wait for it)
        assert stopped_at <= EPOCHS * STEPS - 4, f"stopped after step {stopped_at}: no room left" + where
        kill_after = rng.randint(stopped_at + 1, EPOCHS * STEPS - 3)
        where = f" (drawn: SIGTERM after step {term_after}, stopped after step {stopped_at}, SIGKILL after step " \
                f"{kill_after})"
        second = Run(job, ports[:workers])
        runs.append(second)
        wait_past(job, kill_after, second, where)
        second.procs[0].kill()  # the chief
        results = second.finish(180)  # a worker still waiting then is killed, and fails the exit status below
        assert results[0][0] == -signal.SIGKILL, results[0][1][-3000:] + where
        assert f", step {stopped_at})" in results[0][1], where  # "(resuming after epoch E, step S)"
        for code, err in results[1:]:  # the other worker: one line, no traceback
            assert code == 1 and "Traceback" not in err, err[-3000:] + where
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: worker:1 lost contact with the rest of the cluster"), last
            assert "resume from" in last
        killed_at_step = committed_step(job)
        assert stopped_at < killed_at_step < EPOCHS * STEPS, f"killed after step {killed_at_step}" + where

        third = Run(job, ports[:workers])
        runs.append(third)
        results = third.finish()
        for code, err in results:
            assert code == 0, err[-3000:] + where
        chief_err = results[0][1]
        assert "taking over" in chief_err  # the killed chief's lock was stale
        assert f", step {killed_at_step})" in chief_err, where
        for code, err in reference.finish():
            assert code == 0, err[-3000:]
    finally:
        for run in runs:
            run.kill()
    assert step_ids(job, workers) == step_ids(whole, workers), where
    for a, b in zip(final_weights(whole), final_weights(job)):
        np.testing.assert_array_equal(a, b, err_msg=where)
    with open(job / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]  # each epoch once
    assert json.load(open(job / "metrics.json"))["epochs_completed"] == EPOCHS
    assert backup.read_state(str(job / "backup")).finished  # kept: more epochs would continue it
    assert not (job / ".task_scratch").exists() and not (job / ".lock").exists()
    assert (whole / "model.keras").is_file() and not (whole / "model").exists()  # --train.export=false


def test_one_process_stopped_twice_at_random_steps_ends_as_one_never_stopped(tmp_path):
    stopped_twice_and_resumed_equals_uninterrupted(tmp_path, workers=1)


def test_two_workers_stopped_twice_at_random_steps_end_as_two_never_stopped(tmp_path):
    stopped_twice_and_resumed_equals_uninterrupted(tmp_path, workers=2)


def tiny_model(order=("a", "b"), units=3):
    """Two Dense layers of the same shape, created in `order`: a backup must tell them apart by name."""
    import keras

    inputs = keras.Input((units,))
    layers = {name: keras.layers.Dense(units, name=name) for name in order}
    model = keras.Model(inputs, layers[order[1]](layers[order[0]](inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, use_ema=True), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_a_backup_is_restored_by_name_and_a_model_that_does_not_fit_is_refused_naming_it():
    import keras
    import pytest

    saved = tiny_model(("a", "b"))
    saved.fit(np.ones((4, 3)), np.zeros((4, 3)), verbose=0)
    for step in (1, 2, 3, 4, 1):  # the last: a commit at step 1 again (as after a roll-back and a resume)
        committed = backup.save(saved, "ram://resume/backup", backup.RunState(0, step, (), {}, 4, 1))
    import tensorflow as tf

    kept = sorted(n for n in tf.io.gfile.listdir("ram://resume/backup") if n.endswith(".index"))
    assert kept == ["ckpt-3.index", "ckpt-4.index", "ckpt-5.index"]  # the manager keeps three
    assert (committed.checkpoint, committed.previous["checkpoint"]) == ("ckpt-5", "ckpt-4")
    # Variables created in the other order have each other's positions (same shapes): restored by name, each
    # gets its own values back, optimizer slots and the EMA included.
    other_order = tiny_model(("b", "a"))
    backup.restore(other_order, "ram://resume/backup", backup.read_state("ram://resume/backup"))
    for name in ("a", "b"):
        for mine, theirs in zip(saved.get_layer(name).weights, other_order.get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    slots = {v.path.split("/", 1)[1]: v.numpy() for v in saved.optimizer.variables}
    for v in other_order.optimizer.variables:
        np.testing.assert_array_equal(v.numpy(), slots[v.path.split("/", 1)[1]])

    keras.backend.clear_session()
    wider = tiny_model(("a", "c"), units=4)
    with pytest.raises(backup.BackupMismatchError) as refused:
        backup.restore(wider, "ram://resume/backup", backup.read_state("ram://resume/backup"))
    message = str(refused.value)
    assert "\n" not in message
    missing, unexpected, reshaped = (message.index(label) for label in (
        "not in the backup: ", "not in this model: ", "another shape: "))
    assert missing < message.index("model c/bias") < unexpected < message.index("model b/bias") < reshaped
    assert "model a/bias (3,) -> (4,)" in message[reshaped:]


def test_the_train_stream_started_at_an_example_continues_the_uninterrupted_stream(tmp_path):
    """What a resume rests on, in one process: make_train_dataset(start_example=k x batch) gives batch k, k+1, ...
    of the stream that started at 0, over several passes of the split (69 examples), cached or not, per shard."""
    from trainer.input.data import make_train_dataset

    cfg = fx.smoke_config(fx.fixture_data_dir(), **{"data.shuffle_buffer": 16})
    for cache, shards, index in ((False, 1, 0), (True, 1, 0), (False, 2, 1)):
        c = cfg.replace(**{"data.cache": cache})
        logs = [str(tmp_path / f"{cache}{shards}-{start}.csv") for start in (0, 11)]
        whole = list(make_train_dataset(c, 8, None, shards, index, 0, logs[0]).take(14).as_numpy_iterator())
        resumed = list(make_train_dataset(c, 8, None, shards, index, 11 * 8, logs[1]).take(3).as_numpy_iterator())
        for (image_a, _), (image_b, _) in zip(whole[11:], resumed):
            np.testing.assert_array_equal(image_a, image_b)
        ids_whole, ids_resumed = read_ids_log(logs[0]), read_ids_log(logs[1])
        assert [ids_whole[s] for s in (11, 12, 13)] == [ids_resumed[s] for s in (11, 12, 13)]
        assert ids_whole[0] != ids_whole[11]  # (a later pass, in another order)
