"""Validating an image's bytes and fingerprinting it for near-duplicate detection, in one cheap decode.

Every image goes through `inspect_image` once in the Beam job. A JPEG is decoded with libjpeg's DCT
scaling (PIL's `draft`), which still reads the whole entropy-coded stream, so truncated or corrupt
files fail here, but costs a fraction of a full decode. The same small grayscale picture gives the
perceptual hash. Images that are not RGB JPEG (PNG, grayscale, CMYK, ...) are converted to RGB JPEG and
the conversion is reported; the bytes of RGB JPEGs are kept exactly as they came.

    python -m tfds_person_attrs.images path/to/a.jpg   # prints the verdict and the hash
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# A column of the thumbnail darker than this (0..255 mean) is letterbox padding, not picture.
_BAR_LEVEL = 12
# Decode at 1/4 scale (224 -> 56): enough detail for a 64-bit DCT hash, 10x cheaper than a full decode.
_THUMB_SIDE = 56
_CONVERTED_QUALITY = 95
# PIL's own decompression-bomb limit (~89 megapixels): a full decode of such an image takes ~270 MB. Above it
# an image is skipped before any pixel is decoded, so a worker's memory stays bounded whatever the input.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# The pHash recipe of imagehash.phash (32x32 grayscale, 2-D DCT-II, top-left 8x8 against its median) with the
# DCT as one precomputed matrix: the same bits, 10x cheaper than going through scipy per image.
_HASH_SIDE, _HASH_BITS_SIDE = 32, 8
_n = np.arange(_HASH_SIDE)
_DCT = 2.0 * np.cos(np.pi * np.arange(_HASH_BITS_SIDE)[:, None] * (2 * _n[None, :] + 1) / (2 * _HASH_SIDE))


class BadImageError(ValueError):
    """An image that cannot be used; `reason` is a short machine-readable key for the summary."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class InspectedImage:
    jpeg: bytes  # RGB JPEG bytes to store: the original bytes unless `converted_from` is set
    phash: int  # 64-bit perceptual hash of the letterbox-trimmed picture
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
            return InspectedImage(jpeg=data, phash=perceptual_hash(im), width=size[0], height=size[1])
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
        jpeg=out.getvalue(), phash=perceptual_hash(rgb), width=size[0], height=size[1], converted_from=converted_from
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
    """Drops the dark bars at the left and right (and top and bottom) of a grayscale picture."""
    cols = np.flatnonzero(gray.mean(axis=0) > _BAR_LEVEL)
    rows = np.flatnonzero(gray.mean(axis=1) > _BAR_LEVEL)
    if cols.size < 2 or rows.size < 2:
        return gray  # an all-dark picture: nothing to trim against
    return gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def perceptual_hash(im: Image.Image) -> int:
    """64-bit DCT hash (pHash, as imagehash.phash computes it) of the letterbox-trimmed grayscale picture."""
    gray = np.asarray(im.convert("L"))
    small = Image.fromarray(trim_letterbox(gray)).resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.LANCZOS)
    low = _DCT @ np.asarray(small, dtype=np.float64) @ _DCT.T
    bits = (low > np.median(low)).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def main(argv: list[str]) -> int:
    status = 0
    for path in argv:
        with open(path, "rb") as f:
            try:
                r = inspect_image(f.read())
                print(f"{path}: ok {r.width}x{r.height} phash={r.phash:016x} converted_from={r.converted_from}")
            except BadImageError as e:
                print(f"{path}: {e.reason}: {e}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
