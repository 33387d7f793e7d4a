"""Does the label audit find wrong labels? Flips a share of one head's labels in a generated demo set and scores
the audit's flags against them.

    python benchmarks/label_audit.py --out /tmp/label_audit --images 1200 --flip 0.1 --head footwear --folds 3 \\
        -- --config demo --train.epochs=6

Generates the demo set (tfds_person_attrs.demo_data), gives --flip of its rows another class of --head at random
(seeded), builds it with the project's pipeline, then runs `python -m trainer.label_audit` (the arguments after
`--`) as a user does. The flipped rows that landed in the train split are the truth: precision and recall of
that head's flagged examples, precision among the top-ranked as many as were flipped, and wall seconds of the
audit. Prints JSON (docs/results.md has the figures).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flip_labels(csv_path: str, head_column: str, classes, share: float, seed: int) -> set[str]:
    """Gives `share` of the rows another class of `head_column` in place; returns their image paths."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rows), size=round(share * len(rows)), replace=False)
    for i in chosen:
        rows[i][head_column] = rng.choice([c for c in classes if c != rows[i][head_column]])
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return {rows[i]["image_path"] for i in chosen}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, audit_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--flip", type=float, default=0.1, help="share of the rows whose --head label is changed")
    p.add_argument("--head", default="footwear")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(own)
    from pipeline import preprocess
    from tfds_person_attrs.demo_data import write_demo_data
    from tfds_person_attrs.schema import HVC
    from trainer.config import load_config
    from trainer.data import split_ids

    attribute = next(x for x in HVC.attributes if x.name == a.head)
    manual = write_demo_data(os.path.join(a.out, "manual"), num_images=a.images, seed=a.seed, num_missing=0)
    flipped = flip_labels(os.path.join(manual, "hvc_annotations.csv"), attribute.column, attribute.classes, a.flip,
                          a.seed)
    data_dir, job_dir = os.path.join(a.out, "data"), os.path.join(a.out, "audit")
    preprocess.run(["--manual_dir", manual, "--data_dir", data_dir])
    train_ids = {i for i, _ in split_ids(load_config(["--data_dir", data_dir]).data, "train")}
    flipped_train = flipped & train_ids
    start = time.time()
    subprocess.run([sys.executable, "-m", "trainer.label_audit", "--data_dir", data_dir, "--job_dir", job_dir,
                    "--folds", str(a.folds), *audit_args], cwd=REPO, check=True)
    wall = time.time() - start
    with open(os.path.join(job_dir, "label_issues.csv"), newline="") as f:
        ranked = [r["id"] for r in csv.DictReader(f) if r["head"] == a.head]
    hits = len(set(ranked) & flipped_train)
    top = ranked[:len(flipped_train)]
    with open(os.path.join(job_dir, "label_issues.json")) as f:
        summary = json.load(f)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "images": a.images, "head": a.head,
              "flip_share": a.flip, "folds": a.folds, "audit_args": audit_args, "train_examples": len(train_ids),
              "flipped_in_train": len(flipped_train), "flagged": len(ranked),
              "precision": round(hits / max(1, len(ranked)), 3), "recall": round(hits / max(1, len(flipped_train)), 3),
              "precision_at_flipped_count": round(len(set(top) & flipped_train) / max(1, len(flipped_train)), 3),
              "flagged_per_head": {k: h["issues_found"] for k, h in summary["heads"].items()},
              "audit_wall_s": round(wall, 1)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
