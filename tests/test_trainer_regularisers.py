"""Weight EMA (--optim.ema) and multi-head MixUp/CutMix (--augment.mixup / --augment.cutmix).

    python -m pytest -q -x tests/test_trainer_regularisers.py
"""

import math

import keras
import numpy as np
import pytest

from tests import trainer_fixtures as fx
from tests.test_trainer_train import Crash, CrashAfterFirstEpoch, FirstBatchProbe
from tests.trainer_fixtures import MULTI_SCHEMA
from tfds_person_attrs.schema import HVC
from trainer.config import ConfigError
from trainer.config_loader import load_config
from trainer.input.data import make_eval_dataset
from trainer.jobdir import backup
from trainer.model.augment import LabelMixing, build_label_mixing
from trainer.objective.losses import HeadLoss
from trainer.objective.metrics import BalancedAccuracy, HeadAccuracy, LabelAP
from trainer.optim.ema import ema_weights
from trainer.optim.schedules import make_optimizer, make_schedule
from trainer.training.train import run


class EmaProbe(keras.callbacks.Callback):
    """Each epoch's raw weights and averaged weights, as the model holds them after every callback before it."""

    def __init__(self):
        super().__init__()
        self.raw, self.ema = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.raw.append([w.copy() for w in self.model.get_weights()])
        with ema_weights(self.model):
            self.ema.append([w.copy() for w in self.model.get_weights()])


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_ema_is_what_validation_best_and_saved_models_use(tmp_path):
    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 2, "train.steps_per_epoch": 3,
                                                          "optim.ema": 0.9})
    probe = EmaProbe()
    result = run(cfg, extra_callbacks=[probe])
    assert _max_diff(probe.raw[-1], probe.ema[-1]) > 1e-4  # the average is not the last weights
    # The returned, saved and exported model holds the last epoch's average.
    np.testing.assert_allclose(_max_diff(result["model"].get_weights(), probe.ema[-1]), 0, atol=1e-6)
    saved = keras.saving.load_model(f"{job}/model.keras")
    assert _max_diff(saved.get_weights(), probe.ema[-1]) < 1e-6
    vals = result["history"]["val_mean_balanced_accuracy"]
    best_epoch = int(np.argmax(vals))  # the first of equals: a later tie is not saved
    best = keras.saving.load_model(f"{job}/checkpoints/best.keras")
    assert _max_diff(best.get_weights(), probe.ema[best_epoch]) < 1e-6
    assert _max_diff(best.get_weights(), probe.raw[best_epoch]) > 1e-4
    # Validation ran on the averaged weights: the saved average reproduces the last logged validation loss
    # (validation_steps=1: the split's first batch), which the raw weights do not.
    x, y = next(iter(make_eval_dataset(cfg, batch=cfg.train.batch_size, schema=HVC)))
    assert saved.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(
        result["history"]["val_loss"][-1], rel=1e-4)
    saved.set_weights(probe.raw[-1])
    assert saved.evaluate(x, y, verbose=0, return_dict=True)["loss"] != pytest.approx(
        result["history"]["val_loss"][-1], rel=1e-4)


def test_resume_restores_the_average(tmp_path):
    job = str(tmp_path / "job")
    cfg = fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 2, "train.steps_per_epoch": 3,
                                                          "optim.ema": 0.9})
    crash, crash_ema = CrashAfterFirstEpoch(), EmaProbe()
    with pytest.raises(Crash):
        run(cfg, extra_callbacks=[crash, crash_ema])
    assert backup.read_state(f"{job}/backup").step == 3

    class FirstBatchAverage(FirstBatchProbe):
        def on_train_batch_begin(self, batch, logs=None):
            if not hasattr(self, "step"):
                with ema_weights(self.model):
                    self.ema = [w.copy() for w in self.model.get_weights()]
            super().on_train_batch_begin(batch, logs)

    probe = FirstBatchAverage()
    run(cfg, extra_callbacks=[probe])
    assert probe.step == 3
    assert _max_diff(probe.weights, crash.weights) < 1e-5  # raw weights continue ...
    assert _max_diff(probe.ema, crash_ema.ema[0]) < 1e-5  # ... and so does their average
    assert _max_diff(probe.ema, probe.weights) > 1e-4


def test_keras_ema_runs_in_the_projects_optimizer():
    """ScheduledSGD (backbone LR multiplier) with use_ema: the average follows Keras' update rule."""
    cfg = load_config(["--config", "smoke", "--optim.ema=0.5"])
    v = keras.Variable(np.zeros(2, "float32"))
    opt = make_optimizer(cfg.optim, make_schedule(cfg.optim, 10, 5), [v], lr_multiplier=2.0)
    opt.build([v])
    grads = [np.ones(2, "float32")]
    opt.apply(grads, [v])
    first = v.numpy().copy()  # the first step copies the weights into the average
    opt.apply(grads, [v])
    average = keras.ops.convert_to_numpy(opt._model_variables_moving_average[0])
    np.testing.assert_allclose(average, 0.5 * first + 0.5 * v.numpy(), rtol=1e-6)
    assert not make_optimizer(load_config("smoke").optim, make_schedule(cfg.optim, 10, 5)).use_ema
    with pytest.raises(ConfigError, match="optim.ema"):
        load_config(["--config", "smoke", "--optim.ema=1.0"])


def _labels():
    return {"gender": np.array([0, 1, 1]), "clothes": np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]], "float32")}


def test_mixup_with_a_fixed_draw_mixes_every_head_with_one_coefficient():
    mixing = LabelMixing(MULTI_SCHEMA, mixup=0.2, seed=3)
    images = np.stack([np.full((4, 2, 3), 10.0 * i, "float32") for i in range(3)])
    lam, perm = np.array([0.7, 0.4, 1.0], "float32"), np.array([2, 0, 1])
    x, y = mixing.apply(mixing.mixers[0], images, _labels(), {"mix_weight": lam, "permutation_order": perm})
    x, y = keras.ops.convert_to_numpy(x), {k: keras.ops.convert_to_numpy(v) for k, v in y.items()}
    np.testing.assert_allclose(x[:, 0, 0, 0], [0.7 * 0 + 0.3 * 20, 0.4 * 10 + 0.6 * 0, 20], rtol=1e-6)
    np.testing.assert_allclose(y["gender"], [[0.7, 0.3], [0.6, 0.4], [0, 1]], rtol=1e-6)
    np.testing.assert_allclose(y["clothes"], [[1, 0.3, 0], [0.6, 0.4, 0.4], [1, 1, 0]], rtol=1e-6)

    # The losses of the mixed targets are the mixes of the losses: lam L(y_i) + (1 - lam) L(y_perm[i]).
    probs = {"gender": np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]], "float32"),
             "clothes": np.array([[0.9, 0.2, 0.6], [0.3, 0.7, 0.1], [0.5, 0.5, 0.5]], "float32")}
    losses = {"gender": HeadLoss(False, 2, label_smoothing=0.1, class_weights=[0.6, 2.5]),
              "clothes": HeadLoss(True, 3, label_smoothing=0.1, positive_weights=[2.0, 1.5, 1.2],
                                  negative_weights=[1.1, 1.3, 1.6])}
    for head, loss in losses.items():
        mixed = float(loss(y[head], probs[head]))
        y_a, y_b = _labels()[head], _labels()[head][perm]
        per_a = [float(loss(y_a[i:i + 1], probs[head][i:i + 1])) for i in range(3)]
        per_b = [float(loss(y_b[i:i + 1], probs[head][i:i + 1])) for i in range(3)]
        assert mixed == pytest.approx(np.mean(lam * per_a + (1 - lam) * np.array(per_b)), rel=1e-5), head


def test_cutmix_label_share_is_the_share_of_pixels_kept():
    mixing = LabelMixing(MULTI_SCHEMA, cutmix=1.0, seed=5)
    images = np.stack([np.full((32, 16, 3), float(i + 1), "float32") for i in range(3)])  # example i is all i+1
    labels = _labels()
    x, y = mixing(images, labels)
    x = keras.ops.convert_to_numpy(x)[..., 0]
    for i in range(3):
        values = set(np.unique(x[i]).tolist())
        assert values <= {float(i + 1), *(float(j + 1) for j in range(3))} and len(values) <= 2
        partner = int(max(values - {float(i + 1)}, default=i + 1)) - 1  # the pasted box's source
        kept = float((x[i] == i + 1).mean())
        for head, onehot in (("gender", np.eye(2)[labels["gender"]]), ("clothes", labels["clothes"])):
            expected = kept * onehot[i] + (1 - kept) * onehot[partner]
            # Keras takes the share from the box's real-valued area; the mask covers whole pixels
            np.testing.assert_allclose(keras.ops.convert_to_numpy(y[head])[i], expected, atol=0.1, err_msg=head)


def test_mixed_targets_score_on_their_dominant_label():
    soft = np.array([[0.7, 0.3], [0.2, 0.8], [0.45, 0.55]], "float32")
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]], "float32")
    acc, bal = HeadAccuracy(2), BalancedAccuracy(2)
    for m in (acc, bal):
        m.update_state(soft, probs)
    assert float(acc.result()) == pytest.approx(2 / 3) and float(bal.result()) == pytest.approx(0.75)
    ap = LabelAP(curve="PR", multi_label=True, num_labels=1)
    ap.update_state(np.array([[0.3], [0.9]], "float32"), np.array([[0.9], [0.8]], "float32"))
    hard = LabelAP(curve="PR", multi_label=True, num_labels=1)
    hard.update_state(np.array([[0.0], [1.0]], "float32"), np.array([[0.9], [0.8]], "float32"))
    assert float(ap.result()) == pytest.approx(float(hard.result()))


def test_off_by_default_and_integer_labels_keep_the_usual_losses():
    cfg = load_config("hvc")
    assert cfg.optim.ema == 0 and cfg.augment.mixup == 0 and cfg.augment.cutmix == 0
    assert build_label_mixing(cfg.augment, HVC) is None
    assert build_label_mixing(load_config(["--config", "hvc", "--augment.mixup=0.2",
                                           "--augment.enabled=false"]).augment, HVC) is None
    # integer labels: Keras' own smoothed categorical cross-entropy, times the label's class weight
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    ref = keras.losses.CategoricalCrossentropy(label_smoothing=0.1, reduction=None)(np.eye(3)[[0, 2]], p)
    ours = HeadLoss(False, 3, label_smoothing=0.1, class_weights=[1.0, 1.0, 2.0])
    assert float(ours(np.array([0, 2]), p)) == pytest.approx(float(np.mean(np.array(ref) * [1.0, 2.0])), rel=1e-5)
    bce = keras.losses.BinaryCrossentropy(label_smoothing=0.2)(np.array([[1.0, 0.0]]), np.array([[0.8, 0.3]]))
    assert float(HeadLoss(True, 2, label_smoothing=0.2)(np.array([[1.0, 0.0]]), np.array([[0.8, 0.3]]))) == \
        pytest.approx(float(bce), rel=1e-4)
    with pytest.raises(ConfigError, match="augment.mixup/cutmix"):
        load_config(["--config", "smoke", "--augment.cutmix=2"])
    assert math.isfinite(float(ours(np.eye(3)[[0, 2]], p)))


def test_a_mixing_run_trains_every_head(tmp_path):
    cfg = fx.smoke_config(fx.fixture_data_dir("multi_demo"), str(tmp_path / "job"), dataset="multi_demo",
                          **{"train.epochs": 1, "train.steps_per_epoch": 2, "augment.mixup": 0.4,
                             "augment.cutmix": 1.0, "augment.seed": 3})
    history = run(cfg)["history"]
    assert all(math.isfinite(v[-1]) for k, v in history.items() if k.endswith("loss"))
    assert {"clothes_mA", "clothes_mAP", "gender_accuracy", "val_clothes_mA"} <= set(history)
