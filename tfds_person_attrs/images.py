"""Validating an image's bytes and taking its near-duplicate signature, in one cheap decode.

Every image goes through `inspect_image` once in the Beam job. A JPEG is decoded with libjpeg's DCT
scaling (PIL's `draft`), which still reads the whole entropy-coded stream, so truncated or corrupt
files fail here, but costs a fraction of a full decode. The same small grayscale picture gives the
signature (see `signature`). Images that are not RGB JPEG (PNG, grayscale, CMYK, ...) are converted to
RGB JPEG and the conversion is reported; the bytes of RGB JPEGs are kept exactly as they came.

    python -m tfds_person_attrs.images path/to/a.jpg   # prints the verdict and the signature's first values
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

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
    converted_from: str | None = None  # "png", "grayscale", "cmyk", ... when the bytes were re-encoded


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> InspectedImage:
    """Checks `data` decodes completely and returns what the dataset stores; raises BadImageError.

    An image of more than `max_pixels` is refused from its header, before decoding.
    """
    if not data:
        raise BadImageError("unreadable_image", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it per image
            im = Image.open(io.BytesIO(data))
        fmt, mode, size = im.format, im.mode, im.size
        if size[0] * size[1] > max_pixels:
            raise _too_large(size, max_pixels)
        if fmt == "JPEG" and mode == "RGB":
            im.draft("L", (max(1, size[0] * _THUMB_SIDE // max(size)), max(1, size[1] * _THUMB_SIDE // max(size))))
            im.load()
            return InspectedImage(jpeg=data, signature=signature(im), width=size[0], height=size[1])
        im.load()
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        # PIL refuses twice its own limit inside Image.open, before the size can be read from the image.
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(int(pixels.group(1)) if pixels else None, max_pixels) from None
    except UnidentifiedImageError:
        raise BadImageError("unreadable_image", "not an image file PIL can identify (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL raises OSError("image file is truncated ...") for cut-off files and SyntaxError for bad headers.
        raise BadImageError("unreadable_image", f"the image does not decode: {e}") from None
    converted_from = _conversion_reason(fmt, mode)
    rgb = im.convert("RGB") if mode != "P" else im.convert("RGBA").convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=_CONVERTED_QUALITY)
    return InspectedImage(
        jpeg=out.getvalue(), signature=signature(rgb), width=size[0], height=size[1], converted_from=converted_from
    )


def _too_large(size: tuple[int, int] | int | None, max_pixels: int) -> BadImageError:
    if isinstance(size, tuple):
        what = f"{size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} megapixels"
    else:
        what = f"{size / 1e6:.0f} megapixels" if size else "over PIL's own limit"
    return BadImageError("image_too_large", f"the image is {what}, more than the {max_pixels / 1e6:.0f} megapixels "
                                            "allowed; shrink it, or raise --max_image_pixels")


def _conversion_reason(fmt: str | None, mode: str) -> str:
    if fmt != "JPEG":
        return (fmt or "unknown").lower()
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
