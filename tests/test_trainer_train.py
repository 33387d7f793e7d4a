"""run(config) end to end on the fixture dataset: outputs, resume after a crash, loud failure on NaN.

    python -m pytest -q -x tests/test_trainer_train.py
"""

import csv
import json
import os

import keras
import numpy as np
import pytest

from tests import trainer_fixtures as fx
from tfds_person_attrs.schema import HVC
from trainer.callbacks import NonFiniteLossError
from trainer.train import run


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
            self.lr = float(keras.ops.convert_to_numpy(opt._learning_rate(opt.iterations)))
            self.weights = [w.copy() for w in self.model.get_weights()]


def test_crash_resume_continues_and_writes_every_output(tmp_path):
    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 2, "train.steps_per_epoch": 3})
    crash = CrashAfterFirstEpoch()
    with pytest.raises(Crash):
        run(cfg, extra_callbacks=[crash])
    assert crash.step == 3 and os.path.exists(f"{job}/backup/latest.weights.h5")

    probe = FirstBatchProbe()
    result = run(cfg, extra_callbacks=[probe])  # the same command again
    assert probe.step == 3  # continues at the step where the backup was taken ...
    sched = result["model"].optimizer._learning_rate
    assert probe.lr == pytest.approx(float(keras.ops.convert_to_numpy(sched(3))))  # ... on the same LR curve
    for a, b in zip(probe.weights, crash.weights):  # ... from the same weights (BN statistics included)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert result["steps"] == 6 and len(result["history"]["loss"]) == 1

    for name in ("config.yaml", "history.csv", "metrics.json", "model.keras", "checkpoints/best.keras"):
        assert os.path.exists(f"{job}/{name}"), name
    assert not os.path.exists(f"{job}/backup")  # removed once the run completed
    with open(f"{job}/history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # the resumed run appended its epoch
    assert {"lr", "momentum", "val_mean_accuracy", "val_gender_accuracy"} <= set(rows[0])
    metrics = json.load(open(f"{job}/metrics.json"))
    assert set(metrics["val_accuracy"]) == set(HVC.names)
    assert metrics["val_mean_accuracy"] == pytest.approx(np.mean(list(metrics["val_accuracy"].values())))


def test_nan_loss_fails_loudly(tmp_path):
    cfg = fx.smoke_config(fx.fixture_data_dir(), str(tmp_path / "job"),
                          **{"optim.schedule": "constant", "optim.max_lr": 1e30, "model.weight_decay": 0.0,
                             "train.epochs": 1, "train.steps_per_epoch": 4})
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        run(cfg)


def test_vertex_tuning_trial_gets_its_own_dir_and_reports_its_metric(tmp_path, monkeypatch):
    metric_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "3")
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    job = tmp_path / "tune"
    result = run(fx.smoke_config(fx.fixture_data_dir(), str(job), **{"train.epochs": 1}))
    assert (job / "trial_3" / "metrics.json").is_file() and not (job / "metrics.json").exists()
    reported = json.loads(metric_file.read_text().splitlines()[-1])
    assert reported["trial"] == "3" and reported["global_step"] == str(result["steps"])
    assert float(reported["val_mean_accuracy"]) == pytest.approx(result["metrics"]["best_val_mean_accuracy"], abs=1e-6)
