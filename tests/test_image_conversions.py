"""Images as a viewer shows them: every conversion the build makes is checked against the source picture, and a
JPEG's EXIF orientation is applied alike by the build (PIL) and by the serving signature's decode (TensorFlow).

    python -m pytest -q tests/test_image_conversions.py

Generated pictures only (smooth gradients with an off-centre block, so that a turn or a mirror shows); each
check is a mean absolute error on the 0..255 scale, the bound leaving room for one JPEG re-encode at quality 95.
"""

from __future__ import annotations

import io
import struct
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from tfds_person_attrs.images import inspect_image
from trainer.config import DataConfig
from trainer.input.exif_orientation import jpeg_orientation
from trainer.serving.saved_model import decode_batch

# One or two JPEG encodes at quality 95 of these pictures cost 0.2-2.0 (the sharp-edged block, chroma subsampled);
# a clipped 16-bit picture is off by ~70, a wrong turn or mirror by ~40.
MAX_MEAN_ERROR = 3.0


def _picture(height: int = 96, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([40 + 150 * x / width, 40 + 150 * y / height, 120 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0)], -1)
    rgb[4 : height // 3, 4 : width // 3] = (230, 220, 40)  # top-left: a turn or mirror moves it
    return rgb.astype(np.uint8)


def _gray_ramp(height: int = 96, width: int = 64) -> np.ndarray:
    """0..1 floats, a smooth ramp over the whole range (a clip to 255 would turn most of it white)."""
    y, x = np.mgrid[0:height, 0:width]
    return (x / (width - 1) * 0.6 + y / (height - 1) * 0.4)


def _encoded(im: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def _mean_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


def _gray3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, np.float64)[..., None], 3, axis=-1)


def _case(name: str):
    """(file bytes, reason the build reports, the picture it must store as RGB 0..255)."""
    pic, ramp = _picture(), _gray_ramp()
    if name == "png":
        return _encoded(Image.fromarray(pic), "PNG"), "png", pic
    if name == "png_palette":
        smooth = Image.fromarray(np.rint(ramp * 255).astype(np.uint8)).convert("RGB")
        quantized = smooth.quantize(256, dither=Image.Dither.NONE)
        return _encoded(quantized, "PNG"), "png", np.asarray(quantized.convert("RGB"))
    if name == "png_alpha":
        rgba = np.concatenate([pic, np.full(pic.shape[:2] + (1,), 200, np.uint8)], -1)
        return _encoded(Image.fromarray(rgba), "PNG"), "png", pic
    if name == "jpeg_grayscale":
        gray = np.rint(ramp * 255).astype(np.uint8)
        return _encoded(Image.fromarray(gray), "JPEG", quality=95), "grayscale", _gray3(gray)
    if name == "jpeg_cmyk":
        return _encoded(Image.fromarray(pic).convert("CMYK"), "JPEG", quality=95), "cmyk", pic
    if name == "png_16bit":
        values = np.rint(ramp * 65535).astype(np.uint16)
        return _encoded(Image.fromarray(values), "PNG"), "png_16bit", _gray3(values / 257.0)
    if name == "tiff_16bit_big_endian":
        values = np.rint(ramp * 65535).astype(">u2")
        return _encoded(Image.fromarray(values), "TIFF"), "tiff_16bit", _gray3(values.astype(np.float64) / 257.0)
    if name == "tiff_32bit":
        values = np.rint(ramp * 65535).astype(np.int32)
        return _encoded(Image.fromarray(values, "I"), "TIFF"), "tiff_32bit", _gray3(values / 257.0)
    if name == "tiff_float":
        return _encoded(Image.fromarray(ramp.astype(np.float32)), "TIFF"), "tiff_float", _gray3(ramp * 255.0)
    raise ValueError(name)


@pytest.mark.parametrize("name", ["png", "png_palette", "png_alpha", "jpeg_grayscale", "jpeg_cmyk", "png_16bit",
                                  "tiff_16bit_big_endian", "tiff_32bit", "tiff_float"])
def test_every_conversion_keeps_the_picture(name):
    data, reason, expected = _case(name)
    stored = inspect_image(data)
    assert stored.converted_from == reason
    assert stored.jpeg[:2] == b"\xff\xd8"
    assert _mean_error(_rgb(stored.jpeg), expected) < MAX_MEAN_ERROR, name


# The transpose that stores an upright picture under each EXIF orientation (the inverse of what a viewer does).
_STORED_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def _jpeg_with_orientation(upright: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(upright)
    if _STORED_AS[orientation] is not None:
        im = im.transpose(_STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encoded(im, "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture(scope="module")
def serving_decode():
    """The serving signature's decode (trainer.serving.saved_model.decode_batch), traced into a graph as the export
    traces it, with the default data config (128x64, letterbox crop)."""
    config = types.SimpleNamespace(data=DataConfig())
    return tf.function(lambda images: decode_batch(images, config),
                       input_signature=[tf.TensorSpec([None], tf.string)])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_build_and_the_serving_signature_show_the_same_upright_picture(orientation, serving_decode):
    upright = _picture()
    original = _jpeg_with_orientation(upright, orientation)
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(original))).size == (64, 96)  # PIL agrees it is upright

    built = inspect_image(original)
    assert built.converted_from == (None if orientation == 1 else "rotated")
    assert (built.width, built.height) == (64, 96)
    assert _mean_error(_rgb(built.jpeg), upright) < MAX_MEAN_ERROR

    assert int(jpeg_orientation(tf.constant(original))) == orientation
    served_original, served_built = serving_decode(tf.constant([original, built.jpeg])).numpy()
    assert _mean_error(served_original, served_built) < MAX_MEAN_ERROR


def _app1(tiff: bytes) -> bytes:
    body = b"Exif\0\0" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def _big_endian_exif(orientation: int, entries_before: int = 3) -> bytes:
    """A big-endian ("MM") TIFF block whose IFD0 holds other tags before the orientation."""
    entries = [struct.pack(">HHIHH", 0x010F + i, 3, 1, 7, 0) for i in range(entries_before)]
    entries.append(struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0))
    return b"MM\0\x2a" + struct.pack(">I", 8) + struct.pack(">H", len(entries)) + b"".join(entries) + b"\0\0\0\0"


@pytest.mark.parametrize("orientation", [6, 9])
def test_a_big_endian_exif_block_after_jfif_reads_as_pil_reads_it(orientation, serving_decode):
    """Orientation 6 after a JFIF segment, in big-endian order; 9 is out of range: upright, in PIL and here."""
    plain = _encoded(Image.fromarray(_picture()), "JPEG", quality=95)
    assert plain[2:4] == b"\xff\xe0"  # PIL writes a JFIF APP0 first
    app0_end = 4 + struct.unpack(">H", plain[4:6])[0]
    data = plain[:app0_end] + _app1(_big_endian_exif(orientation)) + plain[app0_end:]
    expected = orientation if orientation <= 8 else 1
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == orientation
    assert int(jpeg_orientation(tf.constant(data))) == expected
    built = inspect_image(data)
    assert built.converted_from == ("rotated" if expected != 1 else None)
    served_original, served_built = serving_decode(tf.constant([data, built.jpeg])).numpy()
    assert _mean_error(served_original, served_built) < MAX_MEAN_ERROR


@pytest.mark.parametrize("data", [b"", b"not a jpeg", b"\xff\xd8\xff\xe1\x00\x08Exif", b"\xff\xd8\xff\xdb\x00\x43"])
def test_bytes_without_a_readable_orientation_are_upright(data):
    assert int(jpeg_orientation(tf.constant(data))) == 1
