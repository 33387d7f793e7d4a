"""Does the label audit find wrong labels, and does training without them help? Flips a share of one head's train
labels in a generated demo set, scores the audit's flags against them, and trains with and without the flags.

    python benchmarks/label_audit.py --out /tmp/label_audit --images 1200 --flip 0.1 --head footwear --folds 3 \
        --compare_seeds 1,2,3 -- --config demo --train.epochs=12

Generates the demo set (tfds_person_attrs.demo.generate) and builds it once as drawn, which fixes the split (a
function of the images' groups, not of their labels). It then gives --flip of the train rows another class of
--head at random (seeded) and builds again: validation and test keep their true labels. `python -m
trainer.label_audit` runs on that build with the arguments after `--`, as a user runs it. The flipped rows are
the truth: precision and recall of that head's flagged examples, precision among the top-ranked as many as
were flipped, wall seconds of the audit. With --compare_seeds, for each seed the `--train_config` preset trains
on the noisy train split with and without the flagged examples (data.exclude_ids), one after the other, and
both are scored on the test split. Prints JSON (docs/results.md has the figures).
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


def flip_labels(csv_path: str, head_column: str, classes, share: float, among: set[str], seed: int) -> set[str]:
    """Gives `share` of the rows whose image is in `among` another class of `head_column`, in place; returns
    their image paths."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    rng = np.random.default_rng(seed)
    candidates = [i for i, r in enumerate(rows) if r["image_path"] in among]
    chosen = rng.choice(candidates, size=round(share * len(candidates)), replace=False)
    for i in chosen:
        rows[i][head_column] = rng.choice([c for c in classes if c != rows[i][head_column]])
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return {rows[i]["image_path"] for i in chosen}


def train_and_test(data_dir: str, job_dir: str, head: str, train_args: list[str]) -> dict:
    """Trains with `python -m trainer.task`, scores the test split; its mean and `head` accuracy, wall seconds."""
    start = time.time()
    subprocess.run([sys.executable, "-m", "trainer.task", "--data_dir", data_dir, "--job_dir", job_dir,
                    "--train.verbose=0", *train_args], cwd=REPO, check=True)
    subprocess.run([sys.executable, "-m", "trainer.evaluate", "--model", job_dir, "--data_dir", data_dir, "--split",
                    "test", "--no-tensorboard"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(job_dir, "eval_test", "metrics.json")) as f:
        m = json.load(f)
    return {"test_mean_accuracy": round(m["summary"]["mean_accuracy"], 3),
            "test_mean_balanced_accuracy": round(m["summary"]["mean_balanced_accuracy"], 3),
            f"test_{head}_accuracy": round(m["heads"][head]["accuracy"], 3), "wall_s": round(time.time() - start)}


def ids_of(job_dir: str, head: str | None = None) -> list[str]:
    """The flagged ids of label_issues.csv (of one head, or of all), most suspicious first within a head."""
    with open(os.path.join(job_dir, "label_issues.csv"), newline="") as f:
        return [r["id"] for r in csv.DictReader(f) if head is None or r["head"] == head]


def compare(a, data_dir: str, job_dir: str) -> dict:
    """Per seed, one after the other: the preset on every train example, without every flagged example, and
    without those flagged on --head alone; test metrics per run, then mean and sd per arm."""
    head_only = os.path.join(a.out, f"flagged_{a.head}.csv")
    with open(head_only, "w") as f:
        f.write("id\n" + "".join(f"{i}\n" for i in ids_of(job_dir, a.head)))
    arms = {"all": [], "without_flagged": [f"--data.exclude_ids={os.path.join(job_dir, 'label_issues.csv')}"],
            f"without_flagged_on_{a.head}": [f"--data.exclude_ids={head_only}"]}
    runs = []
    for seed in (int(x) for x in a.compare_seeds.split(",")):
        for arm, extra in arms.items():
            r = train_and_test(data_dir, os.path.join(a.out, "runs", f"{arm}_{seed}"), a.head,
                               ["--config", a.train_config, f"--train.seed={seed}", *extra])
            runs.append({"seed": seed, "arm": arm, **r})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    keys = [k for k in runs[0] if k.startswith("test_")]
    summary = {arm: {k: f"{np.mean(v):.3f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"
                     for k in keys for v in [[r[k] for r in runs if r["arm"] == arm]]} for arm in arms}
    return {"runs": runs, "mean_sd": summary}


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
    p.add_argument("--compare_seeds", default="", help="comma-separated training seeds of the with/without runs")
    p.add_argument("--train_config", default="demo", help="preset of the with/without runs")
    a = p.parse_args(own)
    from pipeline import preprocess
    from tfds_person_attrs.demo.generate import write_demo_data
    from tfds_person_attrs.schema import HVC
    from trainer.config_loader import load_config
    from trainer.input.data import split_ids

    attribute = next(x for x in HVC.attributes if x.name == a.head)
    manual = write_demo_data(os.path.join(a.out, "manual"), num_images=a.images, seed=a.seed, num_missing=0)
    clean_dir, data_dir, job_dir = (os.path.join(a.out, n) for n in ("data_as_drawn", "data", "audit"))
    preprocess.run(["--manual_dir", manual, "--data_dir", clean_dir])
    train_ids = {i for i, _ in split_ids(load_config(["--data_dir", clean_dir]).data, "train")}
    flipped_train = flip_labels(os.path.join(manual, "hvc_annotations.csv"), attribute.column, attribute.classes,
                                a.flip, train_ids, a.seed)
    preprocess.run(["--manual_dir", manual, "--data_dir", data_dir])
    if {i for i, _ in split_ids(load_config(["--data_dir", data_dir]).data, "train")} != train_ids:
        raise SystemExit("the rebuild with flipped labels split the images differently")
    start = time.time()
    subprocess.run([sys.executable, "-m", "trainer.label_audit", "--data_dir", data_dir, "--job_dir", job_dir,
                    "--folds", str(a.folds), *audit_args], cwd=REPO, check=True)
    wall = time.time() - start
    ranked = ids_of(job_dir, a.head)
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
    if a.compare_seeds:
        result["examples_flagged_on_any_head"] = len(set(ids_of(job_dir)))
        result["with_and_without_flagged"] = compare(a, data_dir, job_dir)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
