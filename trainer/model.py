"""The multi-head Wide ResNet (Keras 3 only: no TensorFlow import, so it also builds under KERAS_BACKEND=jax).

    python -c "from tfds_person_attrs.schema import HVC; from trainer.config import load_config; \
from trainer.model import build_model; build_model(HVC, load_config('hvc')).summary()"

image float32 [H, W, 3] in 0..255 -> augmentation (training only) -> scale to [-1, 1] -> WRN-d-k trunk
(pre-activation basic blocks, Zagoruyko & Komodakis 2016) -> global average pool -> one head per schema
attribute, named after it: softmax for single-label, sigmoid for multi-label. Outputs are a dict keyed by
attribute name and always float32, also under a mixed-precision policy.
"""

from __future__ import annotations

import keras

from trainer.augment import build_augmentation


def stem_stride(height: int, configured: int = 0) -> int:
    """0 = auto: keep the first group's feature maps at 32-127 px tall (1 below 128 px, 2 below 256, else 4)."""
    if configured:
        return configured
    return 1 if height < 128 else 2 if height < 256 else 4


class _Builder:
    """Holds the layer settings shared by every conv/BN so that blocks read as the paper draws them."""

    def __init__(self, mcfg):
        self.reg = keras.regularizers.L2(mcfg.weight_decay) if mcfg.weight_decay > 0 else None
        self.dropout = mcfg.dropout
        # Synchronised BN: per-replica batches are small on many GPUs, and it makes N replicas compute what one
        # device computes on the same global batch. Only the TensorFlow backend implements it.
        self.sync = mcfg.sync_batchnorm and keras.backend.backend() == "tensorflow"

    def conv(self, x, filters, kernel, stride, name):
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                                   kernel_initializer="he_normal", kernel_regularizer=self.reg, name=name)(x)

    def bn_relu(self, x, name):
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=self.sync, name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    def block(self, x, filters, stride, name):
        """Pre-activation basic block: BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3 + (projected) shortcut."""
        pre = self.bn_relu(x, f"{name}_pre")
        if stride != 1 or x.shape[-1] != filters:
            shortcut = self.conv(pre, filters, 1, stride, f"{name}_proj")
        else:
            shortcut = x
        y = self.conv(pre, filters, 3, stride, f"{name}_conv1")
        y = self.bn_relu(y, f"{name}_mid")
        if self.dropout > 0:
            y = keras.layers.Dropout(self.dropout, name=f"{name}_dropout")(y)
        y = self.conv(y, filters, 3, 1, f"{name}_conv2")
        return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def build_model(schema, config) -> keras.Model:
    """keras.Model: {'image': [B, H, W, 3] float 0..255} -> {attribute name: [B, num_classes] float32}."""
    d, m = config.data, config.model
    b = _Builder(m)
    blocks_per_group = (m.depth - 4) // 6
    inputs = keras.Input((d.height, d.width, 3), name="image")
    x = inputs
    augment = build_augmentation(config.augment)
    if augment is not None:
        x = augment(x)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(x)

    stride = stem_stride(d.height, m.stem_stride)
    x = b.conv(x, 16, 3, min(stride, 2), "stem_conv")
    if stride == 4:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for g, filters in enumerate((16 * m.width, 32 * m.width, 64 * m.width)):
        for i in range(blocks_per_group):
            x = b.block(x, filters, 2 if (g > 0 and i == 0) else 1, f"g{g + 1}b{i + 1}")
    x = b.bn_relu(x, "final")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)

    outputs = {}
    for a in schema.attributes:
        logits = keras.layers.Dense(a.num_classes, kernel_regularizer=b.reg, name=f"{a.name}_logits")(x)
        # float32 activation: softmax/sigmoid and the loss stay stable under mixed_float16/bfloat16.
        outputs[a.name] = keras.layers.Activation("sigmoid" if a.is_multi_label else "softmax", dtype="float32",
                                                  name=a.name)(logits)
    return keras.Model(inputs, outputs, name=f"wrn_{m.depth}_{m.width}_{schema.name}")
