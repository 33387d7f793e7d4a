"""Small inputs for tests: slices of the hvc data (../shared, never copied into the repo) and bad files.

    python -c "from tests.data_fixtures import write_real_slice; print(write_real_slice('/tmp/s', 50, 10))"

The real data sits in ../shared beside the checkout (as in CI). A clone without it gets a generated stand-in
instead (`tfds_person_attrs.demo.generate`, in a temporary folder): the same zip layout, CSV columns and row
numbering (images for the first rows, rows 7001+ without an image), so that every test written against a slice
of the real data also runs on a bare clone. Tests that need the real data itself use `needs_real_data`, which
skips them naming the missing file.
"""

from __future__ import annotations

import csv
import functools
import io
import pathlib
import tempfile
import zipfile

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_ZIP = REPO.parent / "shared" / "data" / "hvc_data.zip"
CSV_NAME = "hvc_annotations.csv"
FIRST_MISSING_ROW = 7000  # 0-based: in the real CSV, rows 7001+ (resized/7001.jpg on) have no image
STAND_IN_IMAGES = 160  # images of the generated stand-in: enough for the largest slice a test takes

needs_real_data = pytest.mark.skipif(not REAL_ZIP.exists(), reason=f"needs the real data: {REAL_ZIP} not found")


@functools.cache
def hvc_zip() -> pathlib.Path:
    """The real hvc_data.zip, or (once per process) a generated stand-in in the same layout."""
    if REAL_ZIP.exists():
        return REAL_ZIP
    from tfds_person_attrs.demo.generate import write_demo_data

    out = tempfile.mkdtemp(prefix="hvc_stand_in_")
    return pathlib.Path(write_demo_data(out, num_images=STAND_IN_IMAGES, seed=3, zip=True,
                                        num_missing=FIRST_MISSING_ROW - STAND_IN_IMAGES + 40))


def real_rows() -> tuple[list[str], list[dict]]:
    """(header, rows) of the hvc CSV: the real one, or the stand-in's (see the module docstring)."""
    with zipfile.ZipFile(hvc_zip()) as z:
        reader = csv.DictReader(io.StringIO(z.read(CSV_NAME).decode("utf-8")))
        return list(reader.fieldnames), list(reader)


def write_real_slice(out_dir, num_with_image: int, num_missing: int = 0) -> pathlib.Path:
    """The first `num_with_image` hvc rows with their images, plus `num_missing` rows whose image is absent."""
    if hvc_zip() != REAL_ZIP and num_with_image > STAND_IN_IMAGES:
        raise ValueError(f"the generated stand-in has {STAND_IN_IMAGES} images; raise STAND_IN_IMAGES")
    out = pathlib.Path(out_dir)
    (out / "resized").mkdir(parents=True, exist_ok=True)
    header, rows = real_rows()
    chosen = rows[:num_with_image] + rows[FIRST_MISSING_ROW : FIRST_MISSING_ROW + num_missing]
    with zipfile.ZipFile(hvc_zip()) as z:
        for r in rows[:num_with_image]:
            (out / r["image_path"]).write_bytes(z.read(r["image_path"]))
    write_csv(out / CSV_NAME, header, chosen)
    return out


def write_csv(path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def reencoded(jpeg: bytes, quality: int = 60, shift: int = 0) -> bytes:
    """A near-duplicate: the same picture shifted right by `shift` pixels and re-encoded."""
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    if shift:
        im = im.transform(im.size, Image.AFFINE, (1, 0, -shift, 0, 1, 0))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def encoded(mode: str, fmt: str = "JPEG", size=(64, 96), seed: int = 0) -> bytes:
    """A small random picture in the given PIL mode and format (e.g. 'L'/'CMYK' JPEG, 'RGB' PNG)."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    rgb.convert(mode).save(out, fmt)
    return out.getvalue()
