"""GPU-side augmentation: Keras 3 preprocessing layers that live inside the model (Keras only, any backend).

    python -c "from trainer.config import load_config; from trainer.augment import build_augmentation; \
print([l.name for l in build_augmentation(load_config('hvc').augment).layers])"

Inside the model they run on the accelerator as part of the compiled step (the input pipeline only decodes),
and Keras calls them with training=False at evaluation and serving, where every one of them is the identity.
Images are float 0..255 here (normalisation comes after), hence value_range=(0, 255).
"""

from __future__ import annotations

import keras

_RANGE = (0, 255)


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
        # Constant (black) fill, like the letterbox bars the real images already have.
        layers.append(keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode="constant",
                                                     seed=s(2), name="translate"))
    if cfg.zoom > 0:
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
