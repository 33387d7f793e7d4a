"""run(config) end to end on the fixture dataset: outputs, resume after a crash, non-finite losses, atomic saves.

    python -m pytest -q -x tests/test_trainer_train.py
"""

import csv
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import trainer_fixtures as fx
from tfds_person_attrs.schema import HVC
from trainer.config import ConfigError
from trainer.jobdir import backup, joblock
from trainer.training.callbacks import NonFiniteLossError
from trainer.training.train import run


class Crash(Exception):
    pass


class CrashAfterFirstEpoch(keras.callbacks.Callback):
    """Records the state the backup holds after epoch 1, then 'kills' the run."""

    def on_epoch_end(self, epoch, logs=None):
        self.weights = [w.copy() for w in self.model.get_weights()]
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise Crash()


class FirstBatchProbe(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if not hasattr(self, "step"):
            opt = self.model.optimizer
            self.step = int(keras.ops.convert_to_numpy(opt.iterations))
            self.lr = float(keras.ops.convert_to_numpy(opt.learning_rate))
            self.weights = [w.copy() for w in self.model.get_weights()]


class BreakBatchNormBeforeValidation(keras.callbacks.Callback):
    """In epoch `epoch`, after training and before validation: a negative moving variance makes inference NaN."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_test_begin(self, logs=None):
        if self.current == self.epoch:
            bn = next(layer for layer in self.model.get_layer("backbone").layers
                      if isinstance(layer, keras.layers.BatchNormalization))
            bn.moving_variance.assign(-np.ones(bn.moving_variance.shape, "float32"))


def read_rows(job):
    with open(f"{job}/history.csv") as f:
        return list(csv.DictReader(f))


def test_crash_resume_continues_and_writes_every_output(tmp_path):
    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 2, "train.steps_per_epoch": 3,
                                                          "train.export": True})
    crash = CrashAfterFirstEpoch()
    with pytest.raises(Crash):
        run(cfg, extra_callbacks=[crash])
    assert crash.step == 3 and backup.read_state(f"{job}/backup").step == 3
    assert not os.path.exists(f"{job}/.lock")  # released when the run ended, even by an exception

    changed = cfg.replace(**{"loss.label_smoothing": 0.1, "model.weight_decay": 1e-4})
    with pytest.raises(ConfigError) as refused:  # another config does not silently continue this run
        run(changed)
    for text in ("loss.label_smoothing: 0.0 -> 0.1", "model.weight_decay: 0.0005 -> 0.0001",
                 "--train.allow_config_change=true"):
        assert text in str(refused.value)
    assert backup.read_state(f"{job}/backup").epoch == 1  # refusing touched nothing

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(f"{job}/.lock", "w") as f:  # what a kill -9 leaves: the lock of a process that no longer runs
        json.dump({"host": socket.gethostname(), "pid": int(gone.stdout), "boot_id": joblock._boot_id()}, f)
    probe = FirstBatchProbe()
    # Resumed with the change allowed (neither field moves the LR curve); data moving elsewhere is no change.
    allowed = changed.replace(**{"train.allow_config_change": True, "data.data_dir": cfg.data.data_dir + "/"})
    result = run(allowed, extra_callbacks=[probe])
    assert probe.step == 3  # continues at the step where the backup was taken ...
    sched = result["model"].optimizer.schedule
    assert probe.lr == pytest.approx(float(keras.ops.convert_to_numpy(sched(3))))  # ... on the same LR curve
    for a, b in zip(probe.weights, crash.weights):  # ... from the same weights (BN statistics included)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert result["steps"] == 6 and len(result["history"]["loss"]) == 2  # every epoch of the run, not the last

    for name in ("config.yaml", "history.csv", "metrics.json", "model.keras", "checkpoints/best.keras",
                 "model/saved_model.pb", "model/labels.json"):
        assert os.path.exists(f"{job}/{name}"), name
    assert backup.read_state(f"{job}/backup").finished  # kept, marked finished: more epochs continue it
    rows = read_rows(job)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"lr", "momentum", "val_mean_accuracy", "val_mean_balanced_accuracy", "val_gender_accuracy",
            "val_gender_balanced_accuracy"} <= set(rows[0])
    metrics = json.load(open(f"{job}/metrics.json"))
    assert metrics["epochs_completed"] == 2
    assert set(metrics["val_accuracy"]) == set(metrics["val_balanced_accuracy"]) == set(HVC.names)
    assert metrics["val_mean_accuracy"] == pytest.approx(np.mean(list(metrics["val_accuracy"].values())))
    assert metrics["val_mean_balanced_accuracy"] == pytest.approx(
        np.mean(list(metrics["val_balanced_accuracy"].values())))
    assert metrics["best_val_mean_balanced_accuracy"] == pytest.approx(
        max(float(r["val_mean_balanced_accuracy"]) for r in rows))
    assert not [n for n in os.listdir(job) + os.listdir(f"{job}/checkpoints") if n.startswith(".tmp-")]


def test_multi_label_run_takes_the_only_dataset_and_tracks_mA(tmp_path):
    """No --data.dataset: the data dir's one dataset is used and recorded; multi-label heads get mA and mAP in
    history.csv, the weighted BCE trains, and the monitor is the mean of balanced accuracy and mA."""
    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(fx.MULTI_SCHEMA.name), job, dataset="",
                          **{"loss.multi_label_loss": "weighted_bce", "train.epochs": 1})
    result = run(cfg)
    with open(f"{job}/config.yaml") as f:
        assert "dataset: multi_demo" in f.read()
    row = read_rows(job)[-1]
    assert {"val_clothes_mA", "val_clothes_mAP", "val_gender_balanced_accuracy"} <= set(row)
    assert "val_clothes_accuracy" not in row
    assert float(row["val_mean_balanced_accuracy"]) == pytest.approx(
        (float(row["val_clothes_mA"]) + float(row["val_gender_balanced_accuracy"])) / 2)
    assert result["model"].loss["clothes"].positive_weights is not None


def test_nan_loss_fails_loudly(tmp_path):
    cfg = fx.smoke_config(fx.fixture_data_dir(), str(tmp_path / "job"),
                          **{"optim.schedule": "constant", "optim.max_lr": 1e30, "model.weight_decay": 0.0,
                             "train.epochs": 1, "train.steps_per_epoch": 4})
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        run(cfg)


def test_a_non_finite_stop_leaves_only_finite_state_and_says_what_is_there(tmp_path):
    """With a backup every step, the step that makes the weights non-finite is refused, not committed, and the
    last commit, whose weights had already diverged when the loss turned non-finite, is rolled back: the backup
    holds weights whose loss was seen finite, and the message names that step (or says that there is none)."""
    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(), job, **{
        "optim.schedule": "constant", "optim.max_lr": 1e30, "model.weight_decay": 0.0, "train.epochs": 1,
        "train.steps_per_epoch": 4, "train.backup_every_steps": 1})
    with pytest.raises((NonFiniteLossError, backup.NonFiniteWeightsError)) as stopped:
        run(cfg)
    state = backup.read_state(f"{job}/backup")
    if state is None:
        assert "No backup holds a state whose loss was finite" in str(stopped.value)
        return
    assert f"holds step {state.step} " in str(stopped.value)
    reader = tf.train.load_checkpoint(f"{job}/backup/{state.checkpoint}")
    values = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith("model/")]
    assert all(np.isfinite(x).all() and np.abs(x).max() < 1e6 for x in values if x.dtype.kind == "f")


def test_nan_validation_loss_keeps_the_last_finite_state(tmp_path):
    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 2, "train.steps_per_epoch": 2})
    with pytest.raises(NonFiniteLossError, match="non-finite validation loss .* epoch 1"):
        run(cfg, extra_callbacks=[BreakBatchNormBeforeValidation(epoch=1)])
    state = backup.read_state(f"{job}/backup")
    assert (state.epoch, state.step, len(state.history)) == (1, 2, 1)  # epoch 0's state, not the broken epoch's
    assert [r["epoch"] for r in read_rows(job)] == ["0"]
    best_before = os.path.getmtime(f"{job}/checkpoints/best.keras")

    result = run(cfg)  # the same command resumes from the finite state and finishes
    assert result["metrics"]["epochs_completed"] == 2 and [r["epoch"] for r in read_rows(job)] == ["0", "1"]
    assert all(np.isfinite(w).all() for w in result["model"].get_weights())
    assert all(np.isfinite(float(r["val_loss"])) for r in read_rows(job))
    assert os.path.getmtime(f"{job}/checkpoints/best.keras") >= best_before


def test_a_save_interrupted_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    """What a kill during a save leaves: before, a truncated best.keras/model.keras; now, nothing partial."""
    job = str(tmp_path / "job")

    def save_half_then_fail(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(keras.Model, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        run(fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 1}))
    assert not os.path.exists(f"{job}/checkpoints/best.keras") and not os.path.exists(f"{job}/model.keras")
    assert not [n for n in os.listdir(f"{job}/checkpoints") if n.startswith(".tmp-")]


def test_vertex_tuning_trial_gets_its_own_dir_and_reports_its_metric(tmp_path, monkeypatch):
    metric_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "3")
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    job = tmp_path / "tune"
    result = run(fx.smoke_config(fx.fixture_data_dir(), str(job), **{"train.epochs": 1}))
    assert (job / "3" / "metrics.json").is_file() and not (job / "metrics.json").exists()
    reported = json.loads(metric_file.read_text().splitlines()[-1])
    assert reported["trial"] == "3" and reported["global_step"] == str(result["steps"])
    assert float(reported["val_mean_balanced_accuracy"]) == pytest.approx(
        result["metrics"]["best_val_mean_balanced_accuracy"], abs=1e-6)


def test_a_finished_job_says_so_refuses_another_config_and_continues_with_more_epochs(tmp_path, caplog):
    """Run again, a finished job trains nothing and says where its model is; another config is refused; more
    epochs continue it from its last step, the evaluations of the model it replaces are removed, and the epoch
    line marks '(best)' only on an epoch that beats the epochs done before the resume too."""
    import logging

    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 1, "train.verbose": "auto"})
    run(cfg)
    os.makedirs(f"{job}/eval_validation")
    open(f"{job}/thresholds.json", "w").write("{}")

    caplog.set_level(logging.INFO)
    again = run(cfg)
    assert again["steps"] == 2 and again["model"] is None
    assert f"{job} is finished: 1 epochs done (train.epochs=1), best val_mean_balanced_accuracy" in caplog.text
    assert f"the model is in {job}/model.keras" in caplog.text

    with pytest.raises(ConfigError, match="made by a finished run with another config: loss.label_smoothing"):
        run(cfg.replace(**{"loss.label_smoothing": 0.1}))

    caplog.clear()
    more = run(cfg.replace(**{"train.epochs": 2}))
    assert more["steps"] == 4 and [r["epoch"] for r in read_rows(job)] == ["0", "1"]
    assert not os.path.exists(f"{job}/thresholds.json") and not os.path.exists(f"{job}/eval_validation")
    first, second = (float(r["val_mean_balanced_accuracy"]) for r in read_rows(job))
    line = next(m for m in caplog.messages if m.startswith("epoch 2/2"))
    assert ("(best)" in line) == (second > first), (first, second, line)
