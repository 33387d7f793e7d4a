"""A small synthetic person-attribute data set in exactly the layout of the real HVC data.

It lets the whole pipeline (build -> train -> evaluate) run on a fresh machine without downloads.
The layout matches the real data: `hvc_annotations.csv` (columns `filename,<attribute columns>,image_path`)
plus `resized/N.jpg`, 224x224 RGB JPEGs letterboxed into a vertical band with black bars left and
right; `num_missing` extra CSV rows point at images that do not exist, as in the real CSV.

Every attribute is drawn visibly so that a small CNN can learn it (see draw.py's `_draw_person`): gender ->
hair length and clothing colour family, age -> hair grey level, weight -> body width (torso, and less so
arms and legs) and a belly over the belt when overweight, pose -> face / back of head / narrow profile, bag ->
dark hip rectangle or light bag with handles, footwear -> shoe shape and colour (CantSee: feet below the
frame), emotion -> face marks (a red face with angry brows, a white grin, blue tears, or a thin neutral mouth;
on front and profile views, not from the back), image quality -> blur, noise and JPEG quality.

    python -m tfds_person_attrs.demo.generate --out /tmp/hvc_demo --num_images 600
    python -m tfds_person_attrs.demo.generate --out /tmp/hvc_demo --num_images 600 --zip   # /tmp/hvc_demo/hvc_data.zip
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import zipfile

import numpy as np
from PIL import Image

from tfds_person_attrs.demo import draw as demo_draw
from tfds_person_attrs.schema import HVC

SIZE = demo_draw.SIZE
ZIP_NAME = "hvc_data.zip"
IMAGE_DIR = "resized"

# Class frequencies in HVC class order, rounded from the real CSV (13.5k rows), so the demo has the
# same kind of imbalance (e.g. Neutral emotion ~70%, grocery bag ~10%) that the trainer's class
# weighting and metrics must cope with. Keyed by attribute name, not class name: the schema owns those.
CLASS_FREQ = {
    "gender": (0.44, 0.56),
    "image_quality": (0.55, 0.17, 0.28),
    "age": (0.18, 0.40, 0.25, 0.11, 0.06),
    "weight": (0.64, 0.07, 0.23, 0.06),
    "bag": (0.34, 0.10, 0.56),
    "footwear": (0.37, 0.18, 0.45),
    "emotion": (0.11, 0.12, 0.71, 0.06),
    "pose": (0.16, 0.62, 0.22),
}
for _a in HVC.attributes:  # fail at import, not deep in a build, if the schema and this table drift apart
    assert len(CLASS_FREQ[_a.name]) == _a.num_classes, f"CLASS_FREQ[{_a.name!r}] does not match the schema"

# Image quality (HVC order: Average, Bad, Good) -> (JPEG quality, blur radius, noise sigma, downscale).
_QUALITY = ((70, 0.9, 5.0, 1), (28, 1.6, 11.0, 2), (92, 0.0, 1.5, 1))
assert len(_QUALITY) == HVC["image_quality"].num_classes


def sample_labels(rng: np.random.Generator, n: int) -> list[dict[str, int]]:
    """n label dicts {attribute: class index}, drawn with CLASS_FREQ.

    The first rows cycle through every class of every attribute (with shuffled offsets), so even a
    24-image dummy set has each class at least once and per-class counts/metrics are never empty.
    """
    cols = {}
    for a in HVC.attributes:
        p = np.asarray(CLASS_FREQ[a.name], dtype=float)
        draw = rng.choice(a.num_classes, size=n, p=p / p.sum())
        k = min(n, a.num_classes)
        draw[:k] = (np.arange(k) + rng.integers(a.num_classes)) % a.num_classes
        cols[a.name] = draw
    return [{name: int(cols[name][i]) for name in cols} for i in range(n)]


def _source_filename(rng: np.random.Generator) -> str:
    # The real `filename` column looks like `images/Set1/5580_2 (3).jpg`: frame id, person index and
    # sometimes a copy suffix with a space, which CSV readers must keep intact.
    name = f"{int(rng.integers(1000, 60000))}_{int(rng.integers(0, 4))}"
    if rng.random() < 0.15:
        name += f" ({int(rng.integers(1, 6))})"
    return f"images/Set1/{name}.jpg"


def render_image(labels: dict[str, int], seed: int, index: int, max_jpeg_quality: int = 95) -> bytes:
    """The JPEG bytes of one demo image; deterministic in (seed, index, labels)."""
    rng = np.random.default_rng([seed, index, 7])
    # Band edges are multiples of 16 (one 4:2:0 JPEG macroblock) so the bars stay exactly black
    # after compression instead of picking up ringing from the picture.
    x0 = int(rng.choice([48, 64]))
    x1 = int(rng.choice([160, 176]))
    img = demo_draw.draw_scene(rng, labels, x0, x1)
    jpeg_q, blur, noise, down = _QUALITY[labels["image_quality"]]
    img = demo_draw.degrade(img, rng, blur=blur, noise=noise, downscale=down, band=(x0, x1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(min(jpeg_q, max_jpeg_quality)))
    return buf.getvalue()


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # the real CSV uses \n line endings
    w.writerow(["filename"] + [a.column for a in HVC.attributes] + [HVC.image_column])
    w.writerows(rows)
    return buf.getvalue()


def write_demo_data(out_dir: str, num_images: int = 600, seed: int = 0, num_missing: int = 10,
                    zip: bool = False, max_jpeg_quality: int = 95) -> str:
    """Writes the demo data set under out_dir and returns its path.

    zip=False: out_dir/hvc_annotations.csv and out_dir/resized/1.jpg..N.jpg; returns out_dir.
    zip=True: only out_dir/hvc_data.zip, with the CSV and resized/ at its root (stored, not
    deflated, like the real zip); returns the zip's path.
    The CSV has num_images rows with images, then num_missing rows whose resized/N.jpg does not exist.
    max_jpeg_quality caps the per-image JPEG quality (small checked-in fixtures use a low cap).
    """
    if num_images < 1 or num_missing < 0:
        raise ValueError(f"need num_images >= 1 and num_missing >= 0, got {num_images}, {num_missing}")
    rng = np.random.default_rng(seed)
    labels = sample_labels(rng, num_images + num_missing)
    rows, seen = [], set()
    for i, lab in enumerate(labels, start=1):
        name = _source_filename(rng)
        while name in seen:  # unique, so nothing downstream can mistake two demo rows for one source image
            name = _source_filename(rng)
        seen.add(name)
        classes = [a.classes[lab[a.name]] for a in HVC.attributes]
        rows.append([name] + classes + [f"{IMAGE_DIR}/{i}.jpg"])
    csv_text = _csv_text(rows)

    os.makedirs(out_dir, exist_ok=True)
    images = ((f"{IMAGE_DIR}/{i}.jpg", render_image(labels[i - 1], seed, i, max_jpeg_quality))
              for i in range(1, num_images + 1))
    if zip:
        path = os.path.join(out_dir, ZIP_NAME)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(HVC.csv_name, csv_text)
            z.writestr(IMAGE_DIR + "/", b"")
            for name, data in images:
                z.writestr(name, data)
        return path
    os.makedirs(os.path.join(out_dir, IMAGE_DIR), exist_ok=True)
    with open(os.path.join(out_dir, HVC.csv_name), "w", newline="") as f:
        f.write(csv_text)
    for name, data in images:
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    return out_dir


def load_demo_arrays(root: str) -> tuple[list[dict[str, str]], list[np.ndarray]]:
    """(CSV rows that have an image, their decoded images) from an unzipped demo dir; for tests/notebooks."""
    with open(os.path.join(root, HVC.csv_name), newline="") as f:
        rows = [r for r in csv.DictReader(f) if os.path.exists(os.path.join(root, r[HVC.image_column]))]
    imgs = [np.asarray(Image.open(os.path.join(root, r[HVC.image_column])).convert("RGB")) for r in rows]
    return rows, imgs


def preview(path: str, n: int = 16, seed: int = 0) -> None:
    """Writes a grid of n demo images (their labels sampled as in the demo set) for eyeballing."""
    labels = sample_labels(np.random.default_rng(seed), n)
    grid = Image.new("RGB", (SIZE * 8, SIZE * ((n + 7) // 8)))
    for i, lab in enumerate(labels):
        im = Image.open(io.BytesIO(render_image(lab, seed, i + 1)))
        grid.paste(im, (SIZE * (i % 8), SIZE * (i // 8)))
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num_images", type=int, default=600)
    p.add_argument("--num_missing", type=int, default=10, help="extra CSV rows whose image does not exist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zip", action="store_true", help=f"write only {ZIP_NAME} (CSV + resized/ at its root)")
    p.add_argument("--max_jpeg_quality", type=int, default=95)
    a = p.parse_args(argv)
    path = write_demo_data(a.out, a.num_images, a.seed, a.num_missing, a.zip, a.max_jpeg_quality)
    print(f"wrote {a.num_images} images + {a.num_missing} missing-image rows to {path}")


if __name__ == "__main__":
    main()
