"""GPU-side augmentation: Keras 3 preprocessing layers that live inside the model (Keras only, any backend).

    python -c "from trainer.config_loader import load_config; from trainer.model.augment import build_augmentation; \
print([l.name for l in build_augmentation(load_config('hvc').augment).layers])"

Inside the model they run on the accelerator as part of the compiled step (the input pipeline only decodes),
and Keras calls them with training=False at evaluation and serving, where every one of them is the identity.
Images are float 0..255 here (normalisation comes after), hence value_range=(0, 255).

MixUp and CutMix change the labels too, which layers inside the model never see: `LabelMixing` applies them to
whole training batches (trainer.training.loop calls it on each replica's batch before the step), one mixing coefficient
per example for the image and every head's labels.
"""

from __future__ import annotations

import keras
from keras import ops

_RANGE = (0, 255)


@keras.saving.register_keras_serializable(package="person_attrs")
class RandomShift(keras.layers.Layer):
    """Shifts each image by its own random whole number of pixels (up to a fraction of its size), black fill.

    Why not keras.layers.RandomTranslation: it warps with an affine transform that declares
    `supports_jit=False`, and one such layer switches XLA off for the *whole* model (measured 15-27x slower
    training steps under JAX, docs/performance.md). Whole-pixel shifts are two gathers, which XLA compiles.
    """

    def __init__(self, height_factor: float, width_factor: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.height_factor, self.width_factor, self.seed = height_factor, width_factor, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        b, h, w, c = ops.shape(images)
        max_dy, max_dx = round(self.height_factor * images.shape[1]), round(self.width_factor * images.shape[2])
        dy = keras.random.randint((b, 1), -max_dy, max_dy + 1, seed=self.seed_generator)
        dx = keras.random.randint((b, 1), -max_dx, max_dx + 1, seed=self.seed_generator)
        rows = ops.arange(h)[None, :] - dy  # [B, H]: the source row of each output row
        cols = ops.arange(w)[None, :] - dx  # [B, W]
        out = ops.take_along_axis(images, ops.broadcast_to(ops.clip(rows, 0, h - 1)[:, :, None, None], (b, h, w, c)), 1)
        out = ops.take_along_axis(out, ops.broadcast_to(ops.clip(cols, 0, w - 1)[:, None, :, None], (b, h, w, c)), 2)
        inside = ((rows >= 0) & (rows < h))[:, :, None, None] & ((cols >= 0) & (cols < w))[:, None, :, None]
        return ops.where(inside, out, ops.zeros_like(out))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "height_factor": self.height_factor, "width_factor": self.width_factor,
                "seed": self.seed}


def augmentation_layers(cfg) -> list[keras.layers.Layer]:
    """The layers an AugmentConfig asks for, in application order (geometry, then colour, then cutout)."""
    if not cfg.enabled:
        return []
    seed = cfg.seed or None

    def s(i):  # distinct seeds per layer, or None = unseeded
        return None if seed is None else seed + i

    layers = []
    if cfg.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=s(1), name="flip"))
    if cfg.translate > 0:
        # Black fill, like the letterbox bars the real images already have.
        layers.append(RandomShift(cfg.translate, cfg.translate, seed=s(2), name="translate"))
    if cfg.zoom > 0:  # RandomZoom and RandAugment (off by default) disable XLA for the whole model

        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=s(3), name="zoom"))
    if cfg.rand_augment:
        layers.append(keras.layers.RandAugment(value_range=_RANGE, num_ops=cfg.rand_augment_ops,
                                               factor=cfg.rand_augment_factor, seed=s(4), name="rand_augment"))
    if cfg.color_jitter > 0:
        f = cfg.color_jitter
        layers.append(keras.layers.RandomColorJitter(value_range=_RANGE, brightness_factor=f,
                                                     contrast_factor=f, saturation_factor=(0.5 - f / 2, 0.5 + f / 2),
                                                     seed=s(5), name="color_jitter"))
    if cfg.erasing > 0:
        layers.append(keras.layers.RandomErasing(factor=cfg.erasing, scale=tuple(cfg.erasing_scale),
                                                 value_range=_RANGE, seed=s(6), name="erasing"))
    return layers


def build_augmentation(cfg) -> keras.Sequential | None:
    """A Sequential of the configured layers, or None when augmentation is off."""
    layers = augmentation_layers(cfg)
    return keras.Sequential(layers, name="augment") if layers else None


class LabelMixing:
    """MixUp / CutMix for a batch whose labels are a dict of heads: (images, {head: labels}) -> the same, mixed.

    Each example i is mixed with example perm[i] of the same batch with one coefficient lam_i: the image by the
    layer (MixUp: lam_i * x_i + (1 - lam_i) * x_perm[i]; CutMix: a box of x_perm[i] pasted over x_i, lam_i the
    share of x_i left), and every head's labels by lam_i * y_i + (1 - lam_i) * y_perm[i]: a softmax head's
    integer label becomes a soft [B, C] target, a multi-label head's multi-hot labels become fractions.
    trainer.objective.losses.HeadLoss is linear in those targets (= lam_i * L(y_i) + (1 - lam_i) * L(y_perm[i])).
    The sampling and the image/label transforms are Keras' own keras.layers.MixUp / CutMix (public
    get_random_transformation / transform_images / transform_labels), applied to each head with the same draw;
    with both on, each batch takes one of the two at random. Keras only (keras.ops), so any backend.

        python -c "import numpy as np; from tfds_person_attrs.schema import HVC; from trainer.model.augment import \
LabelMixing; x, y = LabelMixing(HVC, mixup=0.2, seed=1)(np.zeros((4, 8, 4, 3), 'float32'), \
{a.name: np.arange(4) % a.num_classes for a in HVC.attributes}); print(y['age'])"
    """

    def __init__(self, schema, mixup: float = 0.0, cutmix: float = 0.0, seed: int | None = None):
        self.heads = [(a.name, a.num_classes, a.is_multi_label) for a in schema.attributes]
        self.mixers = []
        if mixup > 0:
            self.mixers.append(keras.layers.MixUp(alpha=mixup, seed=seed, dtype="float32", name="mixup"))
        if cutmix > 0:  # Keras draws CutMix's alpha from U(factor); a fixed alpha is the range (a, a)
            self.mixers.append(keras.layers.CutMix(factor=(cutmix, cutmix), seed=None if seed is None else seed + 1,
                                                   dtype="float32", name="cutmix"))
        if not self.mixers:
            raise ValueError("LabelMixing needs mixup > 0 or cutmix > 0")
        self.choice = keras.random.SeedGenerator(None if seed is None else seed + 2)

    def dense_labels(self, labels: dict) -> dict:
        """{head: float targets [B, C]}: one-hot for softmax heads' integer labels, multi-hot as they are."""
        return {name: ops.cast(labels[name], "float32") if multi else
                ops.one_hot(ops.cast(ops.reshape(labels[name], (-1,)), "int32"), n)
                for name, n, multi in self.heads}

    def apply(self, mixer, images, labels: dict, transformation=None):
        """One mixer with one draw (`transformation`, the layer's own dict; drawn when None) for the images and
        every head."""
        if transformation is None:
            transformation = mixer.get_random_transformation(images, training=True)
        images = mixer.transform_images(ops.cast(images, "float32"), transformation, training=True)
        dense = self.dense_labels(labels)
        return images, {k: mixer.transform_labels(v, transformation, training=True) for k, v in dense.items()}

    def __call__(self, images, labels: dict):
        first = self.apply(self.mixers[0], images, labels)
        if len(self.mixers) == 1:
            return first
        second = self.apply(self.mixers[1], images, labels)
        take_first = keras.random.uniform((), seed=self.choice) < 0.5
        return keras.tree.map_structure(lambda a, b: ops.where(take_first, a, b), first, second)


def build_label_mixing(cfg, schema) -> LabelMixing | None:
    """The AugmentConfig's MixUp/CutMix for `schema`'s heads, or None when both are off (or augmentation is)."""
    if not cfg.enabled or (cfg.mixup <= 0 and cfg.cutmix <= 0):
        return None
    return LabelMixing(schema, cfg.mixup, cfg.cutmix, (cfg.seed + 7) if cfg.seed else None)
