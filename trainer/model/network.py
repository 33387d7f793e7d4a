"""The multi-head model around a chosen backbone (Keras 3 only: no TensorFlow import, so it also builds under
KERAS_BACKEND=jax).

    python -c "from tfds_person_attrs.schema import HVC; from trainer.config_loader import load_config; \
from trainer.model.network import build_model; build_model(HVC, load_config('hvc')).summary()"

image float32 [H, W, 3] in 0..255 -> augmentation (training only) -> the backbone's own input normalisation
("normalize") -> the backbone ("backbone": a nested model from trainer.model.backbones, by default the Wide ResNet)
-> global average pool -> one head per schema attribute, named after it: softmax for single-label, sigmoid for
multi-label. Outputs are a dict keyed by attribute name and always float32, also under a mixed-precision policy.
"""

from __future__ import annotations

import keras

from trainer.model.augment import build_augmentation
from trainer.model.backbones import REGISTRY, InputNormalization, build_backbone


def build_model(schema, config) -> keras.Model:
    """keras.Model: {'image': [B, H, W, 3] float 0..255} -> {attribute name: [B, num_classes] float32}."""
    d, m = config.data, config.model
    inputs = keras.Input((d.height, d.width, 3), name="image")
    x = inputs
    augment = build_augmentation(config.augment)
    if augment is not None:
        x = augment(x)
    mode = REGISTRY[m.backbone].normalization
    if mode != "none":  # "none": the backbone normalises inside
        x = InputNormalization(mode, name="normalize")(x)
    x = build_backbone(m, (d.height, d.width, 3))(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)

    reg = keras.regularizers.L2(m.weight_decay) if m.weight_decay > 0 else None
    outputs = {}
    for a in schema.attributes:
        logits = keras.layers.Dense(a.num_classes, kernel_regularizer=reg, name=f"{a.name}_logits")(x)
        # float32 activation: softmax/sigmoid and the loss stay stable under mixed_float16/bfloat16.
        outputs[a.name] = keras.layers.Activation("sigmoid" if a.is_multi_label else "softmax", dtype="float32",
                                                  name=a.name)(logits)
    name = f"wrn_{m.depth}_{m.width}" if m.backbone == "wrn" else str(m.backbone)
    return keras.Model(inputs, outputs, name=f"{name}_{schema.name}")
