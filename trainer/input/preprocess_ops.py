"""Image decoding shared by training, evaluation and serving (TensorFlow ops, graph-safe, deterministic).

    python -c "import tensorflow as tf; from trainer.config import DataConfig; \
from trainer.input.preprocess_ops import image_decoder; \
print(image_decoder(DataConfig())(tf.io.read_file('x.jpg')).shape)"

The HVC images are 224x224 with the person in a vertical band between black side bars, and the band width
varies per image (about 70 to 160 px). `image_decoder` decodes the JPEG once, finds the band from the column
means of the decoded pixels and slices it out, then shrinks it with an area (box) filter. Measured in
benchmarks/input_pipeline.py: a separate 1/4-scale probe decode cost ~60% of a full decode (Huffman decoding
dominates at this size, and decode_and_crop_jpeg still entropy-decodes the whole image), and an antialiased
bilinear resize cost more than the decode itself. The crop is a pure function of the bytes, so train, eval
and the exported model agree exactly. The serving signature also applies a JPEG's EXIF orientation right after
the decode (`exif_orientation=True`, trainer/input/exif_orientation.py), so a phone photo stored sideways is
served upright, as the dataset build stores it; the images the build stores are upright with no turn left in
their EXIF, so training and evaluation skip that read (about a hundred small ops an image where the tag is
read, a cost of the order of the decode itself in a tf.data map).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from trainer.input.exif_orientation import apply_orientation, jpeg_orientation

_MIN_BAND_PX = 8  # a narrower "band" is noise: use the whole image
_DCT_RATIOS = (1, 2, 4, 8)  # the scales libjpeg decodes to directly


def person_band(image: tf.Tensor, threshold: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(x offset, width) of the column band of a decoded [H, W, C] image whose mean luma is above `threshold`
    (DataConfig.letterbox_threshold); the whole width if none."""
    width = tf.shape(image)[1]
    # Mean over rows, not max: JPEG ringing lights up single pixels of the bars next to the band. Every 8th row
    # of the green channel estimates it as well as all pixels do, for 1/24 of the work.
    column_mean = tf.reduce_mean(tf.cast(image[::8, :, 1], tf.float32), axis=0)
    lit = tf.cast(tf.where(column_mean > threshold)[:, 0], tf.int32)
    x, w = tf.cond(tf.size(lit) > 0, lambda: (tf.reduce_min(lit), tf.reduce_max(lit) + 1 - tf.reduce_min(lit)),
                   lambda: (tf.constant(0, tf.int32), width))
    too_narrow = w < tf.minimum(_MIN_BAND_PX, width)
    return tf.where(too_narrow, 0, x), tf.where(too_narrow, width, w)


def decode_jpeg_scaled(jpeg_bytes: tf.Tensor, height: int, width: int, transposed=False) -> tf.Tensor:
    """Decodes at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT) when that still leaves >= height x width
    (width x height when `transposed`: the picture is stored turned by 90 degrees).

    The scaled IDCT is itself a box-like downsample and the crop and resize after it see 4x fewer pixels; the
    Huffman decoding remains. Measured for the hvc preset (docs/performance.md): the training pipeline 1.43x
    faster (3,057 vs 2,138 images per core-second).
    """
    shape = tf.io.extract_jpeg_shape(jpeg_bytes)
    shape = tf.where(transposed, tf.reverse(shape[:2], [0]), shape[:2])
    index = tf.constant(0)
    for i, ratio in enumerate(_DCT_RATIOS[1:], start=1):
        index = tf.where((shape[0] >= ratio * height) & (shape[1] >= ratio * width), i, index)
    return tf.switch_case(index, [
        lambda r=r: tf.io.decode_jpeg(jpeg_bytes, channels=3, ratio=r, dct_method="INTEGER_ACCURATE")
        for r in _DCT_RATIOS])


def image_decoder(data_cfg, exif_orientation: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """The decode a DataConfig describes: JPEG bytes -> float32 [height, width, 3] in 0..255.

    Training, evaluation and the exported model all decode through this, so they agree exactly. The model
    normalises internally. exif_orientation: turn the picture as its EXIF orientation says (the serving
    signature, which is sent camera files; a no-op on the images the build stores).
    """
    height, width, crop = data_cfg.height, data_cfg.width, data_cfg.letterbox_crop
    threshold, dct_scaling = data_cfg.letterbox_threshold, data_cfg.dct_scaling

    def decode(jpeg_bytes: tf.Tensor) -> tf.Tensor:
        orientation = jpeg_orientation(jpeg_bytes) if exif_orientation else tf.constant(1)
        if dct_scaling:
            image = decode_jpeg_scaled(jpeg_bytes, height, width, transposed=orientation >= 5)
        else:
            image = tf.io.decode_jpeg(jpeg_bytes, channels=3, dct_method="INTEGER_ACCURATE")
        if exif_orientation:
            image = apply_orientation(image, orientation)
        if crop:
            x, w = person_band(image, threshold)
            image = image[:, x : x + w]
        # Area (box) filter: antialiased for these 1.5-3.5x shrinks, no overshoot, ~3x cheaper than antialias=True.
        image = tf.image.resize(image, (height, width), method="area")
        image = tf.clip_by_value(image, 0.0, 255.0)
        return tf.ensure_shape(image, (height, width, 3))

    return decode
