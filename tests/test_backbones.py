"""Backbones and fine-tuning: every backbone under the heads, input normalisation, weights files, the frozen
warm-up, the backbone learning-rate multiplier.

    python -m pytest -q -x tests/test_backbones.py
"""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import trainer_fixtures as fx
from tfds_person_attrs.schema import HVC
from trainer.config import BackboneName, ConfigError
from trainer.config_loader import load_config
from trainer.model.backbones import REGISTRY, InputNormalization, build_backbone, frozen_batchnorm, keras_cache_dir
from trainer.model.network import build_model
from trainer.training.callbacks import BackboneWarmup
from trainer.training.train import compiled_model, run

# keras.applications module whose preprocess_input each application backbone's normalisation must equal
PREPROCESS = {"densenet121": "densenet", "resnet50v2": "resnet_v2", "efficientnetv2b0": "efficientnet_v2",
              "mobilenetv3small": "mobilenet_v3", "mobilenetv3large": "mobilenet_v3", "vgg16": "vgg16",
              "inceptionv3": "inception_v3"}


def config_for(name: str, *args: str):
    """The smoke preset at the smallest input the backbone takes (32 px square, or its own minimum)."""
    size = max(32, -(-REGISTRY[name].min_size // 4) * 4)
    return load_config(["--config", "smoke", f"--model.backbone={name}", f"--data.height={size}",
                        f"--data.width={size}", *args])


def batch(config, n=2, seed=0):
    d = config.data
    x = np.random.default_rng(seed).uniform(0, 255, (n, d.height, d.width, 3)).astype("float32")
    return x, {a.name: np.arange(n) % a.num_classes for a in HVC.attributes}


def backbone_values(model):
    return [keras.ops.convert_to_numpy(v) for v in model.get_layer("backbone").weights]


def head_values(model):
    return [keras.ops.convert_to_numpy(model.get_layer(f"{name}_logits").kernel) for name in HVC.names]


def test_registry_is_the_config_choice():
    assert tuple(REGISTRY) == BackboneName.names()  # every choice is built, and nothing else
    with pytest.raises(ConfigError, match="model.backbone: must be one of"):
        load_config(["--model.backbone=alexnet"])
    with pytest.raises(ConfigError, match="model.weights: must be none, imagenet or a weights file"):
        load_config(["--model.weights=weights.pt"])
    assert not frozen_batchnorm(load_config([]).model)  # from scratch, BN trains
    assert frozen_batchnorm(load_config(["--model.weights=w.weights.h5"]).model)  # pretrained: BN kept
    assert not frozen_batchnorm(load_config(["--model.weights=w.h5", "--model.freeze_batchnorm=false"]).model)


@pytest.mark.parametrize("name", sorted(PREPROCESS))
def test_normalisation_is_the_applications_preprocess_input(name):
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, PREPROCESS[name]).preprocess_input(x.copy())
    mode = REGISTRY[name].normalization
    got = np.asarray(InputNormalization(mode)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    if mode == "none":  # keras' preprocess_input is the identity: the application rescales inside
        backbone = build_backbone(config_for(name).model, (32, 32, 3))
        assert any(isinstance(layer, keras.layers.Rescaling) for layer in backbone.layers)


@pytest.mark.parametrize("name", BackboneName.names())
def test_every_backbone_trains_one_step_under_the_heads(name):
    config = config_for(name)
    model = compiled_model(config, HVC, tf.distribute.get_strategy(), steps_per_epoch=2)
    model.run_eagerly = True  # op by op: tracing the big nets' graphs costs more than their step on 2 images
    x, y = batch(config)
    before_backbone, before_heads = backbone_values(model), head_values(model)
    loss = float(np.asarray(model.train_on_batch(x, y)).ravel()[0])
    assert np.isfinite(loss)
    out = model(x, training=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == {a.name: (2, a.num_classes) for a in HVC.attributes}
    assert any(not np.array_equal(a, b) for a, b in zip(before_backbone, backbone_values(model)))
    assert all(not np.array_equal(a, b) for a, b in zip(before_heads, head_values(model)))
    # model.weight_decay and model.sync_batchnorm reach the backbone's layers too (the applications take neither)
    assert len(model.losses) > len(HVC.names)
    bn = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.synchronized and layer.momentum == 0.9 for layer in bn)


def test_weights_file_round_trip_then_a_training_step(tmp_path):
    """A .weights.h5 of a keras.applications net, written here, is what `--model.weights=PATH` loads; the model
    then trains from it."""
    config = config_for("mobilenetv3small")
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None)  # as the README writes one
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    model = compiled_model(config.replace(**{"model.weights": path}), HVC, tf.distribute.get_strategy(), 2)
    loaded = backbone_values(model)
    assert len(loaded) == len(source.weights)
    for a, b in zip(loaded, source.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    model.run_eagerly = True
    assert np.isfinite(np.asarray(model.train_on_batch(*batch(config))).ravel()[0])
    assert any(not np.array_equal(a, b) for a, b in zip(loaded, backbone_values(model)))


def test_legacy_h5_and_an_earlier_backbone_load(tmp_path):
    """The layout of the *_notop.h5 files keras.applications downloads (Keras 2 HDF5, by layer order), and the
    `.weights.h5` of a backbone this project built."""
    from keras.src.legacy.saving import legacy_h5_format

    source = build_backbone(config_for("vgg16").model, (32, 32, 3))
    legacy, current = str(tmp_path / "vgg16_notop.h5"), str(tmp_path / "vgg16.weights.h5")
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    source.save_weights(current)
    for path in (legacy, current):
        loaded = build_backbone(config_for("vgg16", f"--model.weights={path}").model, (32, 32, 3))
        for a, b in zip(loaded.weights, source.weights, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_wrong_weights_are_one_line_errors(tmp_path, monkeypatch):
    path = str(tmp_path / "resnet20.weights.h5")
    build_backbone(config_for("resnet20v1").model, (32, 32, 3)).save_weights(path)
    with pytest.raises(ConfigError) as e:
        build_backbone(config_for("sepconv", f"--model.weights={path}").model, (32, 32, 3))
    assert "\n" not in str(e.value) and path in str(e.value) and "backbone sepconv" in str(e.value)
    with pytest.raises(ConfigError, match="no such file"):
        build_backbone(config_for("wrn", f"--model.weights={tmp_path}/missing.weights.h5").model, (32, 32, 3))
    with pytest.raises(ConfigError, match="no ImageNet weights for wrn"):
        build_backbone(config_for("wrn", "--model.weights=imagenet").model, (32, 32, 3))
    with pytest.raises(ConfigError, match=r"inceptionv3 needs data.height and data.width >= 75"):
        build_backbone(config_for("inceptionv3").model, (64, 64, 3))

    def offline(url, *args, **kwargs):
        raise OSError(101, "Network is unreachable")

    # The real download path, made to fail as it does without internet (and never downloading in CI).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    with pytest.raises(ConfigError) as e:
        build_backbone(config_for("mobilenetv3small", "--model.weights=imagenet").model, (32, 32, 3))
    message = str(e.value)
    assert "\n" not in message and "mobilenetv3small" in message and keras_cache_dir() in message
    assert keras_cache_dir() == str(tmp_path / "keras_home" / "models")


class WeightsPerEpoch(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.backbone, self.heads = [backbone_values(self.model)], [head_values(self.model)]

    def on_epoch_end(self, epoch, logs=None):
        self.backbone.append(backbone_values(self.model))
        self.heads.append(head_values(self.model))


def test_warm_up_phase_follows_the_epoch_as_a_resumed_run_needs():
    model = build_model(HVC, config_for("resnet20v1"))
    backbone, warm_up = model.get_layer("backbone"), BackboneWarmup(epochs=2, freeze_batchnorm=True)
    warm_up.set_model(model)
    everything = {v.path for v in backbone.trainable_variables}
    warm_up.on_epoch_begin(1)  # e.g. a run resumed in the second of two warm-up epochs
    assert not backbone.trainable_variables
    warm_up.on_epoch_begin(2)
    trainable = {v.path for v in backbone.trainable_variables}
    assert trainable == {p for p in everything if "_bn/" not in p} != everything  # BatchNorm kept frozen


def test_frozen_warm_up_trains_heads_only_then_unfreezes(hvc_data_dir, tmp_path):
    probe = WeightsPerEpoch()
    config = fx.smoke_config(hvc_data_dir, str(tmp_path / "job"), **{
        "model.backbone": "wrn", "train.epochs": 2, "train.freeze_backbone_epochs": 1,
        "model.freeze_batchnorm": "true"})
    run(config, extra_callbacks=[probe])
    names = [v.path for v in probe.model.get_layer("backbone").weights]
    bn = [i for i, n in enumerate(names) if "_bn/" in n]
    conv = [i for i, n in enumerate(names) if n.endswith("kernel")]
    assert bn and conv
    start, after_warm_up, after_unfreezing = probe.backbone
    # Epoch 1: every backbone variable, BatchNorm's moving statistics included, is untouched; the heads learn.
    assert all(np.array_equal(a, b) for a, b in zip(start, after_warm_up))
    assert all(not np.array_equal(a, b) for a, b in zip(probe.heads[0], probe.heads[1]))
    # Epoch 2: the convolutions learn; BatchNorm stays in inference mode (model.freeze_batchnorm=true).
    assert all(not np.array_equal(after_warm_up[i], after_unfreezing[i]) for i in conv)
    assert all(np.array_equal(after_warm_up[i], after_unfreezing[i]) for i in bn)


@pytest.mark.parametrize("mirrored", [False, True], ids=["default", "mirrored"])
def test_backbone_lr_multiplier_scales_the_backbone_updates_only(mirrored):
    # MirroredStrategy: the optimizer updates per-device components of mirrored variables, found by their key
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if mirrored else tf.distribute.get_strategy()

    def one_step(multiplier, weights=None):
        config = config_for("sepconv", "--optim.schedule=constant", "--augment.enabled=false",
                            f"--train.backbone_lr_multiplier={multiplier}")
        model = compiled_model(config, HVC, strategy, steps_per_epoch=2)
        model.run_eagerly = True
        if weights is not None:
            model.set_weights(weights)
        start = model.get_weights()
        variables = [*model.get_layer("backbone").trainable_variables]
        before = [keras.ops.convert_to_numpy(v) for v in variables] + head_values(model)
        model.train_on_batch(*batch(config))
        after = [keras.ops.convert_to_numpy(v) for v in variables] + head_values(model)
        return start, [b - a for a, b in zip(before, after)], len(variables)

    start, full, n = one_step(1.0)
    _, quarter, _ = one_step(0.25, start)
    for d1, d4 in zip(full[:n], quarter[:n]):  # backbone: a quarter of the update (first SGD step: -lr * grad)
        np.testing.assert_allclose(d4, 0.25 * d1, rtol=1e-3, atol=1e-7)
    assert sum(np.abs(d).sum() for d in full[:n]) > 0
    for d1, d4 in zip(full[n:], quarter[n:]):  # heads: the same update
        np.testing.assert_allclose(d4, d1, rtol=1e-3, atol=1e-7)
