"""Model, augmentation and losses: dict outputs per schema head, float32 under mixed precision, Keras-only.

    python -m pytest -q -x tests/test_trainer_model.py
"""

import math
import pathlib
import re

import keras
import numpy as np
import pytest

from tests.trainer_fixtures import MULTI_SCHEMA
from tfds_person_attrs.schema import HVC
from trainer.config_loader import load_config
from trainer.model.network import build_model
from trainer.model.scratch_nets import stem_stride
from trainer.objective.losses import HeadLoss, class_weights, make_losses, positive_negative_weights

KERAS_ONLY = ["model/network.py", "model/backbones.py", "model/scratch_nets.py", "model/augment.py",
              "optim/schedules.py", "optim/ema.py", "objective/losses.py", "objective/metrics.py"]


@pytest.mark.parametrize("schema", [HVC, MULTI_SCHEMA], ids=lambda s: s.name)
def test_dict_outputs_per_head(schema):
    cfg = load_config("smoke").replace(**{"data.height": 32, "data.width": 16})
    model = build_model(schema, cfg)
    out = model(np.random.uniform(0, 255, (2, 32, 16, 3)).astype("float32"), training=False)
    assert list(out) == list(schema.names)
    for a in schema.attributes:
        p = keras.ops.convert_to_numpy(out[a.name])
        assert p.shape == (2, a.num_classes)
        if a.is_multi_label:
            assert ((p > 0) & (p < 1)).all()
        else:
            np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def test_mixed_precision_outputs_stay_float32_and_augmentation_is_training_only():
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        cfg = load_config("smoke").replace(**{"data.height": 32, "data.width": 16, "augment.color_jitter": 0.2,
                                              "augment.rand_augment": True})
        model = build_model(HVC, cfg)
    finally:
        keras.config.set_dtype_policy(previous)
    assert {layer.name for layer in model.get_layer("augment").layers} >= {"flip", "erasing", "rand_augment"}
    x = np.random.uniform(0, 255, (2, 32, 16, 3)).astype("float32")
    a, b = model(x, training=False), model(x, training=False)
    for name in HVC.names:
        assert keras.backend.standardize_dtype(a[name].dtype) == "float32"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a[name]), keras.ops.convert_to_numpy(b[name]))


def test_hvc_preset_shape_and_stem():
    assert [stem_stride(h) for h in (64, 128, 160, 224, 256)] == [1, 2, 2, 2, 4]
    cfg = load_config("hvc")
    model = build_model(HVC, cfg)
    # 96x48 / stem 1 / 2 / 2, 64 * k=2
    assert model.get_layer("backbone").get_layer("g3b2_conv2").output.shape[1:] == (24, 12, 128)


def test_model_modules_use_keras_only():
    root = pathlib.Path(__file__).parents[1] / "trainer"
    for name in KERAS_ONLY:
        text = (root / name).read_text()
        assert not re.search(r"^\s*(import tensorflow|from tensorflow)|\btf\.", text, re.M), name


def test_class_weights_and_head_loss_values():
    # inverse: w ~ [1/90, 1/10], normalised so that 0.9 w0 + 0.1 w1 = 1 -> [0.5556, 5.0]
    assert class_weights([90, 10], "inverse") == pytest.approx([5 / 9, 5.0])
    eff = class_weights([90, 10], "effective", beta=0.9)
    assert 0.9 * eff[0] + 0.1 * eff[1] == pytest.approx(1.0) and eff[1] > eff[0]
    assert class_weights([3, 0], "none") == [1.0, 1.0]
    # p = [0.9, 0.1], label 0, smoothing 0.2 -> target [0.9, 0.1]: -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.325083
    loss = HeadLoss(False, 2, label_smoothing=0.2)
    assert float(loss(np.array([0]), np.array([[0.9, 0.1]]))) == pytest.approx(0.325083, rel=1e-4)
    weighted = HeadLoss(False, 2, class_weights=[1.0, 3.0])
    assert float(weighted(np.array([1]), np.array([[0.5, 0.5]]))) == pytest.approx(3 * math.log(2), rel=1e-4)
    multi = HeadLoss(True, 2)
    assert float(multi(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))) == pytest.approx(math.log(2), rel=1e-4)
    losses, weights = make_losses(HVC, load_config("hvc").loss)
    # hvc's weights (gender 2, ..., age 4, ..., emotion 4) sum to 23 over 8 heads: normalised to mean 1.
    assert weights["age"] == pytest.approx(4 * 8 / 23) and weights["gender"] == pytest.approx(2 * 8 / 23)
    assert sum(weights.values()) == pytest.approx(8) and set(losses) == set(HVC.names)
    raw = make_losses(HVC, load_config(["--config", "hvc", "--loss.normalize_weights=false"]).loss)[1]
    assert raw["age"] == 4.0 and sum(raw.values()) == 23
    assert make_losses(MULTI_SCHEMA, load_config("smoke").loss)[1] == {"gender": 1.0, "clothes": 1.0}


def test_weighted_bce_weighs_positives_by_exp_1_minus_r_and_negatives_by_exp_r():
    # label 0 present in 25 of 100 training images (r = 0.25), label 1 in 90 (r = 0.9)
    pos, neg = positive_negative_weights([25, 90], 100)
    assert pos == pytest.approx([math.exp(0.75), math.exp(0.1)])
    assert neg == pytest.approx([math.exp(0.25), math.exp(0.9)])
    # y = [1, 0], p = [0.8, 0.3]: -(e^0.75 ln 0.8 + e^0.9 ln 0.7) / 2, by hand (2.1170 * 0.22314 + 2.4596 * 0.35667) / 2
    loss = HeadLoss(True, 2, positive_weights=pos, negative_weights=neg)
    assert float(loss(np.array([[1.0, 0.0]]), np.array([[0.8, 0.3]]))) == pytest.approx(0.674837, rel=1e-4)
    # through make_losses, from the dataset's training counts (positives per label) and size
    cfg = load_config(["--config", "smoke", "--loss.multi_label_loss=weighted_bce"]).loss
    losses, _ = make_losses(MULTI_SCHEMA, cfg, {"gender": [5, 5], "clothes": [25, 90, 50]}, num_train=100)
    assert losses["clothes"].positive_weights == pytest.approx(np.exp(1 - np.array([0.25, 0.9, 0.5])).tolist())
    assert losses["gender"].class_weights is None and losses["gender"].positive_weights is None
    with pytest.raises(ValueError, match="clothes.*training class counts"):
        make_losses(MULTI_SCHEMA, cfg)


def test_random_shift_moves_whole_pixels_with_black_fill_and_is_identity_at_inference():
    from trainer.model.augment import RandomShift

    x = np.arange(1, 1 + 4 * 10 * 8 * 3, dtype="float32").reshape(4, 10, 8, 3)
    layer = RandomShift(0.3, 0.3, seed=7)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    for img, out in zip(x, y):
        nz = np.argwhere(out[..., 0] > 0)  # the kept block: a shifted copy of the original
        (r0, c0), (r1, c1) = nz.min(0), nz.max(0)
        block = out[r0 : r1 + 1, c0 : c1 + 1]
        src = np.argwhere(img[..., 0] == block[0, 0, 0])[0]
        assert np.array_equal(block, img[src[0] : src[0] + block.shape[0], src[1] : src[1] + block.shape[1]])
        assert (out == 0).sum() == out.size - block.size  # everything else is black fill
        assert abs(int(r0) - int(src[0])) <= 3 and abs(int(c0) - int(src[1])) <= 2
