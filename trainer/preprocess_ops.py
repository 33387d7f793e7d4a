"""Image decoding shared by training, evaluation and serving (TensorFlow ops, graph-safe, deterministic).

    python -c "import tensorflow as tf; from trainer.preprocess_ops import decode_image; \
print(decode_image(tf.io.read_file('x.jpg'), 128, 64, True).shape)"

The HVC images are 224x224 with the person in a vertical band between black side bars, and the band width
varies per image (about 70 to 160 px). `person_band` finds it on a 1/4-scale decode (libjpeg's DCT scaling: a
56x56 decode costs a fraction of a full one), then `tf.io.decode_and_crop_jpeg` decodes only the band at full
resolution. The crop is a pure function of the bytes, so train, eval and the exported model agree exactly.
"""

from __future__ import annotations

import tensorflow as tf

_PROBE_RATIO = 4  # libjpeg scales by 1/1, 1/2, 1/4 or 1/8 during decode; 1/4 finds edges to 4 px
_MIN_BAND_PX = 8  # a narrower "band" is noise: use the whole image


def person_band(jpeg_bytes: tf.Tensor, threshold: float = 16.0) -> tuple[tf.Tensor, tf.Tensor]:
    """(x offset, width) in full-resolution pixels of the non-black column band; the whole width if none."""
    shape = tf.io.extract_jpeg_shape(jpeg_bytes)
    width = shape[1]
    # INTEGER_ACCURATE keeps the probe identical on every platform (the default method may differ).
    small = tf.io.decode_jpeg(jpeg_bytes, channels=1, ratio=_PROBE_RATIO, dct_method="INTEGER_ACCURATE")
    # Mean over rows, not max: JPEG ringing lights up single pixels of the bars next to the band's edge.
    column_mean = tf.reduce_mean(tf.cast(small[:, :, 0], tf.float32), axis=0)
    lit = tf.where(column_mean > threshold)[:, 0]
    small_w = tf.cast(tf.shape(column_mean)[0], tf.float32)
    scale = tf.cast(width, tf.float32) / small_w

    def band():
        left = tf.cast(tf.math.floor(tf.cast(tf.reduce_min(lit), tf.float32) * scale), tf.int32)
        right = tf.cast(tf.math.ceil(tf.cast(tf.reduce_max(lit) + 1, tf.float32) * scale), tf.int32)
        left = tf.clip_by_value(left, 0, width - 1)
        return left, tf.clip_by_value(right, left + 1, width) - left

    x, w = tf.cond(tf.size(lit) > 0, band, lambda: (tf.constant(0, tf.int32), width))
    too_narrow = w < tf.minimum(_MIN_BAND_PX, width)
    return tf.where(too_narrow, 0, x), tf.where(too_narrow, width, w)


def decode_image(jpeg_bytes: tf.Tensor, height: int, width: int, letterbox_crop: bool,
                 threshold: float = 16.0) -> tf.Tensor:
    """JPEG bytes -> float32 [height, width, 3] in 0..255 (the model normalises internally)."""
    if letterbox_crop:
        x, w = person_band(jpeg_bytes, threshold)
        h = tf.io.extract_jpeg_shape(jpeg_bytes)[0]
        image = tf.io.decode_and_crop_jpeg(jpeg_bytes, tf.stack([0, x, h, w]), channels=3,
                                           dct_method="INTEGER_ACCURATE")
    else:
        image = tf.io.decode_jpeg(jpeg_bytes, channels=3, dct_method="INTEGER_ACCURATE")
    # Antialiasing matters when shrinking 224 px to 64-128 px; the triangle filter does not overshoot.
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 255.0)
    return tf.ensure_shape(image, (height, width, 3))
