"""Small inputs for tests: a slice of the real data (../shared, never copied into the repo) and bad files.

    python -c "from tests.data_fixtures import write_real_slice; print(write_real_slice('/tmp/s', 50, 10))"
"""

from __future__ import annotations

import csv
import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_ZIP = REPO.parent / "shared" / "data" / "hvc_data.zip"
CSV_NAME = "hvc_annotations.csv"


def real_rows() -> tuple[list[str], list[dict]]:
    with zipfile.ZipFile(REAL_ZIP) as z:
        reader = csv.DictReader(io.StringIO(z.read(CSV_NAME).decode("utf-8")))
        return list(reader.fieldnames), list(reader)


def write_real_slice(out_dir, num_with_image: int, num_missing: int = 0) -> pathlib.Path:
    """The first `num_with_image` real rows with their images, plus `num_missing` rows whose image is absent."""
    out = pathlib.Path(out_dir)
    (out / "resized").mkdir(parents=True, exist_ok=True)
    header, rows = real_rows()
    chosen = rows[:num_with_image] + rows[7000 : 7000 + num_missing]
    with zipfile.ZipFile(REAL_ZIP) as z:
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
