"""Writes the TFDS builder test's fixture, `dummy_data/`, from the synthetic demo generator.

The fixture has the real data's layout (hvc_annotations.csv + resized/N.jpg, unzipped) with 24 small
synthetic images and 3 CSV rows whose image is missing, so the builder test covers skipped rows too.
It is checked in; rerun this after changing tfds_person_attrs/demo/ or the schema, then commit the result:

    python -m tfds_person_attrs.person_attrs.make_dummy_data
    python -m tfds_person_attrs.person_attrs.make_dummy_data --out /tmp/dummy_data   # somewhere else
"""

from __future__ import annotations

import argparse
import os
import shutil

from tfds_person_attrs.demo.generate import write_demo_data

DUMMY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dummy_data")
NUM_IMAGES = 24
NUM_MISSING = 3
# Low JPEG quality keeps the checked-in folder small (~100 KB); the fixture tests plumbing, not learning.
MAX_JPEG_QUALITY = 40
SEED = 0


def make_dummy_data(out_dir: str = DUMMY_DIR) -> str:
    """Replaces out_dir's CSV and resized/ with a fresh fixture; returns out_dir."""
    # Remove old images first so a smaller NUM_IMAGES does not leave stale files behind.
    shutil.rmtree(os.path.join(out_dir, "resized"), ignore_errors=True)
    return write_demo_data(out_dir, num_images=NUM_IMAGES, seed=SEED, num_missing=NUM_MISSING,
                           max_jpeg_quality=MAX_JPEG_QUALITY)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DUMMY_DIR, help="output folder (default: the checked-in dummy_data/)")
    out = make_dummy_data(p.parse_args().out)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {NUM_IMAGES} images + {NUM_MISSING} missing-image rows to {out} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
