"""Backbones trained from scratch: Wide ResNet, ResNet-20 v1 and a separable-convolution net (Keras only).

    python -c "from trainer.config_loader import load_config; from trainer.model.scratch_nets import resnet20v1; \
resnet20v1(load_config('smoke').model, (64, 32, 3)).summary()"

Each builder returns a functional keras.Model named "backbone": float input [H, W, 3] already normalised to
[-1, 1] (trainer.model.backbones puts the normalisation in front) -> the last feature map [H', W', C]. Pooling and
heads are trainer.model.network's. The stem follows the input height (`stem_stride`), so the same nets fit the 32 px
test inputs, the 96x48 hvc preset and full 224 px images.
"""

from __future__ import annotations

import keras

# BatchNorm's moving-average momentum: the statistics follow the weights within a few tens of steps, so that evaluation
# after a run of a few thousand steps uses statistics of the trained weights.
BN_MOMENTUM = 0.9


def stem_stride(height: int, configured: int = 0) -> int:
    """0 = auto: keep the first group's feature maps at 32-127 px tall (1 below 128 px, 2 below 256, else 4)."""
    if configured:
        return configured
    return 1 if height < 128 else 2 if height < 256 else 4


class _Layers:
    """The layer settings shared by every conv/BN, so that blocks read as their papers draw them."""

    def __init__(self, mcfg):
        self.reg = keras.regularizers.L2(mcfg.weight_decay) if mcfg.weight_decay > 0 else None
        self.dropout = mcfg.dropout
        # Synchronised BN: per-replica batches are small on many GPUs, and it makes N replicas compute what one
        # device computes on the same global batch. Only the TensorFlow backend implements it.
        self.sync = mcfg.sync_batchnorm and keras.backend.backend() == "tensorflow"

    def conv(self, x, filters, kernel, stride, name):
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                                   kernel_initializer="he_normal", kernel_regularizer=self.reg, name=name)(x)

    def sep_conv(self, x, filters, name):
        return keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                            depthwise_regularizer=self.reg, pointwise_regularizer=self.reg,
                                            name=name)(x)

    def bn(self, x, name):
        return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, synchronized=self.sync,
                                               name=f"{name}_bn")(x)

    def bn_relu(self, x, name):
        return keras.layers.ReLU(name=f"{name}_relu")(self.bn(x, name))

    def stem(self, x, filters, stride):
        """conv3x3 at stride min(stride, 2), then a 3x3/2 max-pool for stride 4."""
        x = self.conv(x, filters, 3, min(stride, 2), "stem_conv")
        if stride == 4:
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        return x


def wrn(mcfg, input_shape) -> keras.Model:
    """WRN-d-k (Zagoruyko & Komodakis 2016): pre-activation basic blocks in three groups of 16k/32k/64k."""
    b = _Layers(mcfg)
    inputs = keras.Input(input_shape)
    x = b.stem(inputs, 16, stem_stride(input_shape[0], mcfg.stem_stride))
    for g, filters in enumerate((16 * mcfg.width, 32 * mcfg.width, 64 * mcfg.width)):
        for i in range((mcfg.depth - 4) // 6):
            x = _preact_block(b, x, filters, 2 if (g > 0 and i == 0) else 1, f"g{g + 1}b{i + 1}")
    return keras.Model(inputs, b.bn_relu(x, "final"), name="backbone")


def _preact_block(b: _Layers, x, filters, stride, name):
    """BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3 + (projected) shortcut."""
    pre = b.bn_relu(x, f"{name}_pre")
    shortcut = b.conv(pre, filters, 1, stride, f"{name}_proj") if stride != 1 or x.shape[-1] != filters else x
    y = b.conv(pre, filters, 3, stride, f"{name}_conv1")
    y = b.bn_relu(y, f"{name}_mid")
    if b.dropout > 0:
        y = keras.layers.Dropout(b.dropout, name=f"{name}_dropout")(y)
    y = b.conv(y, filters, 3, 1, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def resnet20v1(mcfg, input_shape) -> keras.Model:
    """ResNet-20 v1 (He et al. 2016, CIFAR): post-activation basic blocks, 3 stages x 3 of 16/32/64 filters."""
    b = _Layers(mcfg)
    inputs = keras.Input(input_shape)
    x = b.bn_relu(b.stem(inputs, 16, stem_stride(input_shape[0], mcfg.stem_stride)), "stem")
    for s, filters in enumerate((16, 32, 64)):
        for i in range(3):
            name, stride = f"s{s + 1}b{i + 1}", 2 if (s > 0 and i == 0) else 1
            y = b.bn_relu(b.conv(x, filters, 3, stride, f"{name}_conv1"), f"{name}_conv1")
            y = b.bn(b.conv(y, filters, 3, 1, f"{name}_conv2"), f"{name}_conv2")
            if stride != 1:  # option B: a 1x1 projection where the shape changes
                x = b.bn(b.conv(x, filters, 1, stride, f"{name}_proj"), f"{name}_proj")
            x = keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, y]))
    return keras.Model(inputs, x, name="backbone")


def sepconv(mcfg, input_shape) -> keras.Model:
    """A small Xception-style net: a conv stem, then three stages (64/128/256) of two depthwise-separable
    conv-BN blocks with a 3x3/2 max-pool and a projected residual."""
    b = _Layers(mcfg)
    inputs = keras.Input(input_shape)
    x = b.bn_relu(b.stem(inputs, 32, stem_stride(input_shape[0], mcfg.stem_stride)), "stem")
    for s, filters in enumerate((64, 128, 256)):
        name = f"s{s + 1}"
        y = b.bn_relu(b.sep_conv(x, filters, f"{name}_sep1"), f"{name}_sep1")
        y = b.bn(b.sep_conv(y, filters, f"{name}_sep2"), f"{name}_sep2")
        y = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(y)
        shortcut = b.bn(b.conv(x, filters, 1, 2, f"{name}_proj"), f"{name}_proj")
        x = keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([shortcut, y]))
    return keras.Model(inputs, x, name="backbone")
