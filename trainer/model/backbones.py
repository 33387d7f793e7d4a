"""The backbone registry: `--model.backbone` names -> trunk builders, their input normalisation and weights.

    python -c "from trainer.config_loader import load_config; from trainer.model.backbones import build_backbone; \
build_backbone(load_config(['--model.backbone=mobilenetv3small']).model, (96, 48, 3)).summary()"

Keras only (no TensorFlow import), so every backbone also builds under KERAS_BACKEND=jax. A backbone is a
functional keras.Model named "backbone" from a normalised image to its last feature map; trainer.model.network puts
augmentation and `InputNormalization` in front and the pooled heads behind, so heads, losses, metrics, export
and the serving signature are the same for all of them.

Normalisation is each family's own: the mode of its `keras.applications.<family>.preprocess_input` ("tf":
[-1, 1]; "torch": ImageNet mean/std; "caffe": BGR minus the ImageNet mean), or "none" where the application
normalises inside (EfficientNetV2, MobileNetV3 with include_preprocessing=True). The from-scratch nets use [-1, 1].

Weights (`--model.weights`): "none"; "imagenet" (keras.applications downloads them into KERAS_HOME/models, by
default ~/.keras/models, once); or a weights file: a Keras `.weights.h5` of the backbone (local or gs://,
read by Keras' own loader), e.g. `model.get_layer("backbone").save_weights(...)` of an earlier run, or a legacy
`.h5` such as the `*_notop.h5` files keras.applications downloads (local). A file that does not fit the
backbone is a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
from keras import ops

from trainer.config import ConfigError
from trainer.model import scratch_nets

_MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB mean and std (torch mode), as keras.applications uses them
_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("tf", "torch", "caffe", "none")
_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclasses.dataclass(frozen=True)
class Backbone:
    build: Callable  # (ModelConfig, input_shape, "imagenet" | None) -> keras.Model named "backbone"
    normalization: str  # one of MODES
    imagenet: bool = False  # keras.applications has ImageNet weights for it
    min_size: int = 16  # smallest input height/width it accepts


def _application(constructor, **kwargs) -> Callable:
    def build(mcfg, input_shape, weights):
        net = constructor(include_top=False, weights=weights, input_shape=input_shape, **kwargs)
        # The same layers under the name trainer.model.network looks for (EfficientNetV2 reads its `name` argument as
        # the variant, so it cannot be passed in).
        return keras.Model(net.input, net.output, name="backbone")
    return build


def _scratch(builder) -> Callable:
    def build(mcfg, input_shape, weights):
        return builder(mcfg, input_shape)
    return build


_APPS = keras.applications
REGISTRY: dict[str, Backbone] = {  # by trainer.config.BackboneName
    "wrn": Backbone(_scratch(scratch_nets.wrn), "tf"),
    "resnet20v1": Backbone(_scratch(scratch_nets.resnet20v1), "tf"),
    "sepconv": Backbone(_scratch(scratch_nets.sepconv), "tf"),
    "densenet121": Backbone(_application(_APPS.DenseNet121), "torch", True, 32),
    "resnet50v2": Backbone(_application(_APPS.ResNet50V2), "tf", True, 32),
    "efficientnetv2b0": Backbone(_application(_APPS.EfficientNetV2B0), "none", True, 32),
    "mobilenetv3small": Backbone(_application(_APPS.MobileNetV3Small), "none", True, 32),
    "mobilenetv3large": Backbone(_application(_APPS.MobileNetV3Large), "none", True, 32),
    "vgg16": Backbone(_application(_APPS.VGG16), "caffe", True, 32),
    "inceptionv3": Backbone(_application(_APPS.InceptionV3), "tf", True, 75),
}


@keras.saving.register_keras_serializable(package="person_attrs")
class InputNormalization(keras.layers.Layer):
    """Float images 0..255 -> what a backbone expects, as keras.applications' preprocess_input `mode` does."""

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown normalisation {mode!r}; one of {MODES}")
        self.mode = mode

    def call(self, images):
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "torch":
            return (images / 255.0 - ops.convert_to_tensor(_MEAN, images.dtype)) / ops.convert_to_tensor(
                _STD, images.dtype)
        if self.mode == "caffe":
            return ops.flip(images, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, images.dtype)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def keras_cache_dir() -> str:
    """Where keras.utils.get_file (and so keras.applications) keeps downloaded weights."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"), "models")


def build_backbone(mcfg, input_shape) -> keras.Model:
    """The configured backbone with its weights loaded, weight decay on its kernels and its BN policy applied."""
    spec = REGISTRY[mcfg.backbone]
    name = mcfg.backbone
    if min(input_shape[:2]) < spec.min_size:
        raise ConfigError(f"model.backbone={name} needs data.height and data.width >= {spec.min_size}, got "
                          f"{input_shape[0]}x{input_shape[1]}")
    if mcfg.weights == "imagenet" and not spec.imagenet:
        raise ConfigError(f"model.weights=imagenet: there are no ImageNet weights for {name}; use "
                          f"--model.weights=none or a weights file, or one of {imagenet_backbones()}")
    if mcfg.weights == "imagenet":
        try:
            net = spec.build(mcfg, input_shape, "imagenet")
        except Exception as e:  # keras.utils.get_file raises a bare Exception when the download fails
            raise ConfigError(f"model.weights=imagenet: could not get the ImageNet weights of {name} into "
                              f"{keras_cache_dir()} ({_first_line(e)}); without internet, copy them there or pass "
                              "--model.weights=PATH to a weights file") from None
    else:
        net = spec.build(mcfg, input_shape, None)
        if mcfg.weights != "none":
            load_weights_file(net, mcfg.weights, name)
    _apply_layer_settings(net, mcfg)
    if frozen_batchnorm(mcfg):
        set_trainable(net, True, freeze_batchnorm=True)
    return net


def load_weights_file(net: keras.Model, path: str, name: str) -> None:
    """Keras' own loader (it reads gs:// for .weights.h5); any failure becomes one line naming the file."""
    if "://" not in path and not os.path.exists(path):
        raise ConfigError(f"model.weights={path}: no such file")
    try:
        net.load_weights(path)
    except Exception as e:  # h5py, Keras shape/variable-count checks, remote storage: all mean "cannot use it"
        raise ConfigError(f"model.weights={path}: does not fit backbone {name} ({_first_line(e)}); pass weights "
                          f"saved from a --model.backbone={name} backbone (any input size)") from None


def imagenet_backbones() -> list[str]:
    return [n for n, spec in REGISTRY.items() if spec.imagenet]


def frozen_batchnorm(mcfg) -> bool:
    """model.freeze_batchnorm: auto = frozen for pretrained weights (their statistics are worth keeping)."""
    return mcfg.weights != "none" if mcfg.freeze_batchnorm == "auto" else mcfg.freeze_batchnorm == "true"


def set_trainable(backbone: keras.Model, trainable: bool, freeze_batchnorm: bool) -> None:
    """Freezes or unfreezes the backbone. A non-trainable Keras BatchNormalization runs in inference mode (its
    moving statistics, not the batch's), so a frozen backbone computes exactly what it computes at serving;
    `freeze_batchnorm` keeps the BN layers that way after unfreezing too."""
    backbone.trainable = trainable
    if trainable and freeze_batchnorm:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def _apply_layer_settings(net: keras.Model, mcfg) -> None:
    """model.weight_decay, model.sync_batchnorm and the scratch nets' BatchNorm momentum for keras.applications
    layers, which take none of them as an argument (the scratch nets set them when they create their layers).

    Most applications ship BN momentum 0.99 (MobileNetV3 0.999), meant for ImageNet's hundreds of thousands of
    steps: after the few hundred to few thousand steps of a run here their moving statistics are still largely
    their initial values, and inference with them fails (docs/results.md measures it). Frozen BN layers do not
    update them.
    """
    reg = keras.regularizers.L2(mcfg.weight_decay) if mcfg.weight_decay > 0 else None
    sync = mcfg.sync_batchnorm and keras.backend.backend() == "tensorflow"
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = layer.synchronized or sync
            layer.momentum = scratch_nets.BN_MOMENTUM
        for attr in _KERNELS:
            variable = getattr(layer, attr, None)
            if reg is not None and isinstance(variable, keras.Variable) and variable.regularizer is None:
                variable.regularizer = reg  # Keras adds the L2 of every trainable variable with a regularizer


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
