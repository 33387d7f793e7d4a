"""A JPEG's EXIF orientation read and applied with TensorFlow ops (graph-safe), as a photo viewer shows it.

    python -c "import tensorflow as tf; from trainer.input.exif_orientation import jpeg_orientation; \
print(int(jpeg_orientation(tf.io.read_file('phone.jpg'))))"

TensorFlow's JPEG decoder ignores EXIF, so a phone photo stored sideways (orientation 6) would be served
sideways, while the dataset build turns it upright with PIL's `ImageOps.exif_transpose`
(tfds_person_attrs/images.py). This module reads the orientation tag the way PIL does: the first APP1
segment that starts with "Exif\\0\\0" among the APPn segments after the start-of-image marker, its TIFF header
(either byte order), and tag 0x0112 of its first IFD. Anything absent, out of range or malformed reads as 1
(upright), as in PIL. Only a few small slices of the bytes are read, never the whole file, and only when the
bytes hold "Exif\\0\\0" where the segments looked at can reach: a file without it (as every image the build
re-encodes) costs one byte search.
"""

from __future__ import annotations

import tensorflow as tf

_SEGMENTS = 6  # APPn segments looked at before the Exif one (JFIF, ICC profile, XMP, ... may come first)
_MAX_ENTRIES = 64  # IFD0 entries looked at (cameras write ~10-20)
_ORIENTATION_TAG = 0x0112
_REACH = 2 + _SEGMENTS * (2 + 65535) + 10  # the furthest byte the segment walk below can look at


def _bytes_at(data: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """int64 [n]: the bytes of `data` from `pos`, zeros past its end (or for a negative pos)."""
    size = tf.strings.length(data)
    start = tf.clip_by_value(tf.cast(pos, tf.int32), 0, size)
    raw = tf.io.decode_raw(tf.strings.substr(data, start, n), tf.uint8)
    raw = tf.cond(pos < 0, lambda: raw[:0], lambda: raw)
    return tf.reshape(tf.cast(tf.pad(raw, [[0, n - tf.shape(raw)[0]]]), tf.int64), [n])


def _uint(b: tf.Tensor, little: tf.Tensor) -> tf.Tensor:
    """The unsigned integer of the bytes along the last axis, in the given byte order."""
    n = b.shape[-1]
    low_first = tf.constant([256**i for i in range(n)], tf.int64)
    high_first = tf.constant([256 ** (n - 1 - i) for i in range(n)], tf.int64)
    return tf.where(little, tf.reduce_sum(b * low_first, -1), tf.reduce_sum(b * high_first, -1))


def jpeg_orientation(jpeg_bytes: tf.Tensor) -> tf.Tensor:
    """int32 scalar in 1..8: the EXIF orientation of a JPEG's bytes (1 when there is none)."""
    # The walk below is ~100 small ops; a file without "Exif\0\0" within its reach skips it.
    has_exif = tf.size(tf.strings.split(tf.strings.substr(jpeg_bytes, 0, _REACH), sep="Exif\0\0")) > 1
    return tf.cond(has_exif, lambda: _orientation_tag(jpeg_bytes), lambda: tf.constant(1, tf.int32))


def _orientation_tag(jpeg_bytes: tf.Tensor) -> tf.Tensor:
    head = _bytes_at(jpeg_bytes, tf.constant(0, tf.int64), 2)
    looking = tf.reduce_all(tf.equal(head, [0xFF, 0xD8]))
    pos = tf.constant(2, tf.int64)
    tiff = tf.constant(-1, tf.int64)
    exif_magic = tf.constant([ord(c) for c in "Exif"] + [0, 0], tf.int64)
    for _ in range(_SEGMENTS):  # unrolled: a fixed, small number of slices per image
        seg = _bytes_at(jpeg_bytes, pos, 10)
        is_app = tf.equal(seg[0], 0xFF) & (seg[1] >= 0xE0) & (seg[1] <= 0xEF)
        looking = looking & is_app
        is_exif = looking & tf.equal(seg[1], 0xE1) & tf.reduce_all(tf.equal(seg[4:10], exif_magic))
        tiff = tf.where(is_exif, pos + 10, tiff)
        looking = looking & ~is_exif
        pos = pos + 2 + seg[2] * 256 + seg[3]
    header = _bytes_at(jpeg_bytes, tiff, 8)
    little = tf.reduce_all(tf.equal(header[:2], [0x49, 0x49]))  # "II"; "MM" is big-endian
    valid = (tiff >= 0) & (little | tf.reduce_all(tf.equal(header[:2], [0x4D, 0x4D])))
    ifd = tiff + _uint(header[4:8], little)
    count = _uint(_bytes_at(jpeg_bytes, ifd, 2), little)
    entries = tf.reshape(_bytes_at(jpeg_bytes, ifd + 2, 12 * _MAX_ENTRIES), (_MAX_ENTRIES, 12))
    tags = _uint(entries[:, 0:2], little)
    is_orientation = (tags == _ORIENTATION_TAG) & (tf.range(_MAX_ENTRIES, dtype=tf.int64) < count)
    values = _uint(entries[:, 8:10], little)  # a SHORT value sits in the first two bytes of the value field
    found = tf.reduce_any(is_orientation)
    value = tf.gather(values, tf.argmax(tf.cast(is_orientation, tf.int32)))
    ok = valid & found & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(ok, value, 1), tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """An [H, W, C] image as it is shown given its EXIF orientation (PIL's exif_transpose, in TensorFlow)."""
    def transpose():
        return tf.transpose(image, [1, 0, 2])

    return tf.switch_case(orientation - 1, [
        lambda: image,                                    # 1: upright
        lambda: tf.reverse(image, [1]),                   # 2: mirrored left-right
        lambda: tf.reverse(image, [0, 1]),                # 3: upside down
        lambda: tf.reverse(image, [0]),                   # 4: mirrored top-bottom
        transpose,                                        # 5: transposed
        lambda: tf.reverse(transpose(), [1]),             # 6: stored 90 degrees counter-clockwise: turn clockwise
        lambda: tf.reverse(transpose(), [0, 1]),          # 7: transversed
        lambda: tf.reverse(transpose(), [0]),             # 8: stored 90 degrees clockwise: turn counter-clockwise
    ])
