"""A run killed with SIGKILL at a random step and started again ends as a run never killed: the same weights and
the same examples at every step, in one process and with two workers (real processes, deterministic ops).

    python -m pytest -q tests/test_trainer_resume.py

Each test starts the uninterrupted run and the run to be killed side by side, kills the second (the whole
process group of a launcher: every task at once, as a lost machine) once its backup (one per step) has passed a
step drawn at random, starts the same command again, and compares the final model.keras and the ids each step
trained on (`--train.log_example_ids`). Float tolerance: none; with deterministic ops the weights are equal bit
for bit (assert_array_equal). The random step is printed on failure. Tiny model, 3 epochs of 4 steps, MixUp and
the default augmentation on (their random states are part of what must resume).
"""

import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from tests import trainer_fixtures as fx
from trainer.input.data import read_ids_log
from trainer.jobdir import backup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS = 3, 4
# TF_DETERMINISTIC_OPS is TensorFlow's switch for tf.config.experimental.enable_op_determinism(): without it,
# two runs may differ in the last bits however they were stopped.
ENV = {**{k: v for k, v in os.environ.items() if k != "TF_CONFIG"}, "TF_DETERMINISTIC_OPS": "1"}


def command(job, workers: int) -> list[str]:
    args = ["--config", "smoke", "--data_dir", fx.fixture_data_dir(), "--job_dir", str(job), "--data.height=32",
            "--data.width=16", "--train.verbose=2", "--distribute.jit_compile=false", f"--train.epochs={EPOCHS}",
            f"--train.steps_per_epoch={STEPS}", "--train.validation_steps=1", "--train.backup_every_steps=1",
            "--train.log_example_ids=true", "--augment.mixup=0.2", "--data.shuffle_buffer=16"]
    launcher = ["-m", "trainer.launch", "--workers", str(workers), "--"] if workers > 1 else ["-m", "trainer.task"]
    return [sys.executable, *launcher, *args]


def start(job, workers: int) -> subprocess.Popen:
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(command(job, workers), cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.log = log
    return proc


def output(proc, timeout=900) -> str:
    """What the process printed once it ended (killed, with what it printed, after `timeout` seconds)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc.log.seek(0)
    return proc.log.read()


def committed_step(job) -> int:
    try:
        state = backup.read_state(str(job / "backup"))
    except (ValueError, OSError):  # (state.json being replaced)
        return -1
    return -1 if state is None else state.step


def final_weights(job):
    from trainer.evaluation.eval_model import load_job

    model, _, _ = load_job(str(job / "model.keras"))
    return model.get_weights()


def step_ids(job, pipelines: int) -> list[list[str]]:
    """Per step of the run, the ids every input pipeline fed it (lines read ahead of the last step dropped)."""
    logs = [read_ids_log(str(job / "example_ids" / f"pipeline-{i}.csv")) for i in range(pipelines)]
    return [[i for log in logs for i in log[step]] for step in range(EPOCHS * STEPS)]


def killed_and_resumed_equals_uninterrupted(tmp_path, workers: int) -> None:
    kill_after = random.Random().randint(1, EPOCHS * STEPS - 4)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference, victim = start(whole, workers), start(killed, workers)
    try:
        deadline = time.monotonic() + 900
        while committed_step(killed) < kill_after and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert victim.poll() is None, output(victim)[-3000:]  # (it ended before the kill: its own error)
        os.killpg(victim.pid, signal.SIGKILL)  # the process and, with a launcher, every task it started
        victim.wait()
        first = output(victim)
        assert victim.returncode == -signal.SIGKILL, first[-3000:]
        resumed_at = committed_step(killed)
        assert 0 < resumed_at < EPOCHS * STEPS, f"killed after step {resumed_at}\n{first[-3000:]}"
        again = start(killed, workers)
        second = output(again)
        assert again.returncode == 0, second[-3000:]
        assert f"step {resumed_at})" in second, second[-3000:]  # it resumed there, it did not start over
        whole_out = output(reference)
        assert reference.returncode == 0, whole_out[-3000:]
    finally:
        for p in (reference, victim):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    where = f"(drawn: kill after step {kill_after}; killed after step {resumed_at})"
    assert step_ids(killed, workers) == step_ids(whole, workers), where
    for a, b in zip(final_weights(whole), final_weights(killed)):
        np.testing.assert_array_equal(a, b, err_msg=where)


def test_one_process_killed_at_a_random_step_ends_as_one_never_killed(tmp_path):
    killed_and_resumed_equals_uninterrupted(tmp_path, workers=1)


def test_two_workers_killed_at_a_random_step_end_as_two_never_killed(tmp_path):
    killed_and_resumed_equals_uninterrupted(tmp_path, workers=2)


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
