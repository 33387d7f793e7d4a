"""Validating an image's bytes and taking its near-duplicate signature, in one cheap decode.

Every image goes through `inspect_image` once in the Beam job. A JPEG is decoded with libjpeg's DCT
scaling (PIL's `draft`), which still reads the whole entropy-coded stream, so truncated or corrupt
files fail here, but costs a fraction of a full decode. The same small grayscale picture gives the
signature (see `signature`). Images that are not RGB JPEG (PNG, grayscale, CMYK, ...) are converted to
RGB JPEG and the conversion is reported; so are images whose EXIF orientation says they are stored sideways or
mirrored (turned upright first, "rotated"), and high-bit-depth images are scaled to 8 bits, not clipped. The
bytes of upright RGB JPEGs are kept exactly as they came.

    python -m tfds_person_attrs.images path/to/a.jpg   # prints the verdict and the signature's first values
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A row or column of the thumbnail is letterbox padding when it is both dark and flat: a dark but textured
# row is picture (a rule on darkness alone cut dark photos differently after a 10% brightness change).
_BAR_LEVEL, _BAR_FLATNESS = 12, 6
# Decode at 1/4 scale (224 -> 56): enough detail for an 8x8 DCT, several times cheaper than a full decode.
_THUMB_SIDE = 56
_CONVERTED_QUALITY = 95
# PIL's own decompression-bomb limit (~89 megapixels): a full decode of such an image takes ~270 MB. Above it
# an image is skipped before any pixel is decoded, so a worker's memory stays bounded whatever the input.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# The signature: the 63 AC coefficients of the 8x8 lowest frequencies of the trimmed picture's DCT, weighted
# and scaled to unit length. Measured on the 7,000 real images and their 5% crops and resizes
# (benchmarks/grouping_recall.py): the top row (vertical frequency 0) and left column (horizontal frequency 0)
# carry 2-6x the noise of the others under those edits, because they follow where the letterbox band's edges
# and the frame's top and bottom fall; weighting them 1/4 and 1/2 is what lets a 5% crop stay above the
# grouping threshold while distinct images stay below it.
SIGNATURE_SIDE = 8
SIGNATURE_SIZE = SIGNATURE_SIDE * SIGNATURE_SIDE - 1
_WEIGHTS = np.ones((SIGNATURE_SIDE, SIGNATURE_SIDE))
_WEIGHTS[0, :], _WEIGHTS[:, 0] = 0.25, 0.5
_WEIGHTS = _WEIGHTS.reshape(-1)[1:]
_DCT_CACHE: dict[int, np.ndarray] = {}
_ORIENTATION_TAG = 0x0112  # EXIF: 1 upright, 2-8 mirrored and/or rotated (see trainer/input/exif_orientation.py)
_PIL_LIMIT_LOCK = threading.Lock()


class BadImageError(ValueError):
    """An image that cannot be used; `reason` is a short machine-readable key for the summary."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class InspectedImage:
    jpeg: bytes  # RGB JPEG bytes to store: the original bytes unless `converted_from` is set
    signature: np.ndarray  # float16 [SIGNATURE_SIZE], unit length: see `signature`
    width: int
    height: int
    # "png", "grayscale", "cmyk", "png_16bit", "rotated", ... when the bytes were re-encoded; several joined by "+"
    converted_from: str | None = None


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> InspectedImage:
    """Checks `data` decodes completely and returns what the dataset stores; raises BadImageError.

    An image of more than `max_pixels` is refused from its header, before decoding.
    """
    if not data:
        raise BadImageError("unreadable_image", "the file is empty (0 bytes)")
    try:
        im = _open_within(data, max_pixels)
        fmt, mode, size = im.format, im.mode, im.size
        if size[0] * size[1] > max_pixels:
            raise _too_large(size, max_pixels)
        upright = _orientation(im) not in range(2, 9)
        if fmt == "JPEG" and mode == "RGB" and upright:
            im.draft("L", (max(1, size[0] * _THUMB_SIDE // max(size)), max(1, size[1] * _THUMB_SIDE // max(size))))
            im.load()
            return InspectedImage(jpeg=data, signature=signature(im), width=size[0], height=size[1])
        im.load()
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        # Over twice the limit _open_within set (or a later frame over PIL's own, in a GIF): the sizes PIL gives.
        pixels = [int(n) for n in re.findall(r"(\d+) pixels", str(e))]  # [the image's, the limit]
        size = pixels[0] if pixels else None
        over_ours = size is None or size > max_pixels or len(pixels) < 2
        raise _too_large(size, max_pixels if over_ours else pixels[1]) from None
    except UnidentifiedImageError:
        raise BadImageError("unreadable_image", "not an image file PIL can identify (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL raises OSError("image file is truncated ...") for cut-off files and SyntaxError for bad headers.
        raise BadImageError("unreadable_image", f"the image does not decode: {e}") from None
    reasons = [] if fmt == "JPEG" and mode == "RGB" else [_conversion_reason(fmt, mode)]
    if not upright:
        im = ImageOps.exif_transpose(im)
        reasons.append("rotated")
    rgb = to_rgb(im)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=_CONVERTED_QUALITY)
    return InspectedImage(jpeg=out.getvalue(), signature=signature(rgb), width=rgb.size[0], height=rgb.size[1],
                          converted_from="+".join(reasons))


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag, 1 when absent or unreadable: a broken EXIF block does not make a bad image
    (TensorFlow's reader, trainer/input/exif_orientation.py, also takes it as upright)."""
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - PIL's EXIF parser raises many types on malformed blocks
        return 1


def _open_within(data: bytes, max_pixels: int) -> Image.Image:
    """Image.open with PIL's own decompression-bomb limit raised to `max_pixels` where that is higher (PIL refuses
    twice its limit inside open, before the caller can read the size), so that the caller's limit is the one that
    holds and its message gives the real size."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller's check says it per image
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(before or 0, max_pixels) or None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = before


_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB picture of any PIL image: palettes through RGBA, high-bit-depth grey (I;16*, I, F) scaled
    to 0..255 rather than clipped by PIL's convert (a 16-bit PNG would become a white block)."""
    if im.mode in _EIGHT_BIT_MODES:
        return im.convert("RGB") if im.mode != "P" else im.convert("RGBA").convert("RGB")
    values = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        scaled = values / 257.0  # 65535 -> 255
    elif im.mode == "F" and values.size and 0.0 <= values.min() and values.max() <= 1.0:
        scaled = values * 255.0  # floats in 0..1
    elif values.size and 0 <= values.min() and values.max() <= 255:
        scaled = values  # 8-bit values stored wide
    elif values.size and 0 <= values.min() and values.max() <= 65535 and im.mode == "I":
        scaled = values / 257.0  # 16-bit values stored as 32-bit integers (how PIL gives some 16-bit PNGs)
    else:
        low, high = (values.min(), values.max()) if values.size else (0.0, 1.0)
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))  # any other range: stretched to 0..255
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return gray.convert("RGB")


def _too_large(size: tuple[int, int] | int | None, max_pixels: int) -> BadImageError:
    if isinstance(size, tuple):
        what = f"{size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} megapixels"
    else:
        what = f"{size / 1e6:.0f} megapixels" if size else "over PIL's own limit"
    return BadImageError("image_too_large", f"the image is {what}, more than the {max_pixels / 1e6:.0f} megapixels "
                                            "allowed; shrink it, or raise --max_image_pixels")


_DEPTHS = {"I": "32bit", "F": "float", "I;16": "16bit", "I;16B": "16bit", "I;16L": "16bit", "I;16N": "16bit"}


def _conversion_reason(fmt: str | None, mode: str) -> str:
    if fmt != "JPEG":
        depth = _DEPTHS.get(mode)
        return (fmt or "unknown").lower() + (f"_{depth}" if depth else "")
    return {"L": "grayscale", "LA": "grayscale", "1": "grayscale", "CMYK": "cmyk", "YCbCr": "ycbcr"}.get(mode, mode.lower())


def trim_letterbox(gray: np.ndarray) -> np.ndarray:
    """Drops the dark, flat bars at the left and right (and top and bottom) of a grayscale picture."""
    # mean > level and std > flatness per column and row, in exact integer sums: n*sum(x^2) - sum(x)^2 is n^2 times
    # the variance (0.016 ms a picture against 0.037 with np.mean and np.std; the same trims on the 28,000 images
    # of benchmarks/build_speed.py).
    g = gray.astype(np.int64)
    sq = g * g
    h, w = g.shape
    col_sum, col_sq, row_sum, row_sq = g.sum(axis=0), sq.sum(axis=0), g.sum(axis=1), sq.sum(axis=1)
    flat = _BAR_FLATNESS**2
    cols = np.flatnonzero((col_sum > _BAR_LEVEL * h) | (h * col_sq - col_sum * col_sum > flat * h * h))
    rows = np.flatnonzero((row_sum > _BAR_LEVEL * w) | (w * row_sq - row_sum * row_sum > flat * w * w))
    if cols.size < 2 or rows.size < 2:
        return gray  # an all-dark picture: nothing to trim against
    return gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def signature(im: Image.Image) -> np.ndarray:
    """The picture's near-duplicate signature: float16 [63], unit length (see SIGNATURE_SIZE above).

    float16 halves what the grouping's shuffle carries (126 bytes an image per blocking key); the exact and the
    Beam grouping both compare these same rounded values, so they agree to the last bit.

    A mirror image's signature is this one with the odd horizontal frequencies negated (`mirrored`), exactly,
    since the trim is symmetric; brightness scales every coefficient alike and leaves the unit vector as is.
    """
    trimmed = trim_letterbox(np.asarray(im if im.mode == "L" else im.convert("L"))).astype(np.float64)
    low = _dct_rows(trimmed.shape[0]) @ trimmed @ _dct_rows(trimmed.shape[1]).T
    vec = low.reshape(-1)[1:] * _WEIGHTS
    norm = np.linalg.norm(vec)
    return (vec / norm if norm > 0 else vec).astype(np.float16)


_MIRROR_SIGNS = np.tile(np.where(np.arange(SIGNATURE_SIDE) % 2, -1.0, 1.0), SIGNATURE_SIDE)[1:].astype(np.float16)


def mirrored(signatures: np.ndarray) -> np.ndarray:
    """The signatures of the mirror images (works on one [63] vector or a [n, 63] batch)."""
    return signatures * _MIRROR_SIGNS


def _dct_rows(n: int) -> np.ndarray:
    """The first SIGNATURE_SIDE DCT-II basis rows for length n, each scaled by sqrt(2/n) (cached per length)."""
    if n not in _DCT_CACHE:
        x = np.arange(n)
        freqs = np.arange(SIGNATURE_SIDE)[:, None]
        _DCT_CACHE[n] = np.cos(np.pi * freqs * (2 * x[None, :] + 1) / (2 * n)) * np.sqrt(2.0 / n)
    return _DCT_CACHE[n]


def main(argv: list[str]) -> int:
    status = 0
    for path in argv:
        with open(path, "rb") as f:
            try:
                r = inspect_image(f.read())
                print(f"{path}: ok {r.width}x{r.height} signature={np.round(r.signature[:4], 3)}... "
                      f"converted_from={r.converted_from}")
            except BadImageError as e:
                print(f"{path}: {e.reason}: {e}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
