"""One HTML page per run or evaluation that a person opens in a browser, with its PNGs beside it.

The page holds: the metrics table with each head's majority-class baseline and balanced accuracy (multi-label
heads: mA beside its chance level 0.5, and a per-label table of positives, mA, AP, F1 and threshold), the
training curves (accuracy, and balanced accuracy / mA against chance) and the LR/momentum schedule read from
JOB_DIR/history.csv, one confusion matrix per single-label head, the per-label mA/AP chart of each multi-label
head under its own heading, and a grid of test images with predicted and true labels, worst mistakes first.
Images are PNG files in the report folder referenced by relative paths (copy the folder, not just the .html);
`embed=True` inlines them as base64 too, for a page that travels as one file.

This module gathers what the page shows; trainer/evaluation/report_figures.py draws the figures and the markup is the
jinja2 template trainer/evaluation/templates/report.html, rendered with autoescaping on (head, class and file names are
user data). evaluate.py calls write_report with predictions and sample images; on its own it re-renders a job's
page from metrics.json and history.csv:

    python -m trainer.report --job_dir JOB [--out JOB/report]
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import datetime
import io
import json
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tfds_person_attrs.schema import schema_from_dict
from trainer.evaluation import pages
from trainer.evaluation import report_figures as figures
from trainer.evaluation.eval_metrics import MA_CHANCE
from trainer.objective.thresholds import DEFAULT_THRESHOLD

SINGLE_COLUMNS = ("accuracy", "majority_baseline", "majority_class", "balanced_accuracy", "macro_f1", "log_loss",
                  "prior_log_loss", "n")
MULTI_COLUMNS = ("mA", "mA_chance", "mAP", "instance_accuracy", "instance_precision", "instance_recall",
                 "instance_f1", "n")
PER_LABEL_COLUMNS = ("train_positive_counts", "per_label_positives", "per_label_mA", "per_label_ap", "per_label_f1",
                     "threshold")


@dataclasses.dataclass
class Samples:
    """Test examples for the image grid: images uint8 [N,H,W,3]; labels/probs {attribute: array}; losses [N], each
    example's loss as evaluation scored it (trainer.evaluation.eval_metrics.sample_losses, which
    trainer.evaluate.predict_split also ranks the examples it keeps by); ids [N]."""

    images: np.ndarray
    labels: Mapping[str, np.ndarray]
    probs: Mapping[str, np.ndarray]
    losses: np.ndarray
    ids: Sequence[str] = ()


class _Images:
    """Writes the page's PNGs into the report folder; the one place that inlines them (embed)."""

    def __init__(self, out_dir: str, embed: bool):
        self.out_dir, self.embed = out_dir, embed

    def save(self, name: str, data: bytes) -> str:
        """Writes `name` under the report folder and returns the <img src> for it."""
        path = os.path.join(self.out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return "data:image/png;base64," + base64.b64encode(data).decode() if self.embed else name

    def figure(self, name: str, fig, alt: str) -> dict[str, str]:
        return {"src": self.save(name, figures.fig_to_png(fig)), "alt": alt}


# ----------------------------------------------------------------- what the page shows

def read_history(path: str) -> dict[str, np.ndarray]:
    """history.csv (Keras CSVLogger layout: one row per epoch) as {column: float array}."""
    with tf.io.gfile.GFile(path) as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list] = {k: [] for k in (rows[0].keys() if rows else ())}
    for r in rows:
        for k in cols:
            try:
                cols[k].append(float(r[k]))
            except (TypeError, ValueError):
                cols[k].append(np.nan)
    return {k: np.asarray(v) for k, v in cols.items()}


def metrics_tables(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The rows of the metrics tables for evaluate_arrays() output; a row is `below` when its head does not beat
    its baseline (single-label) or chance (multi-label). Any other metrics.json (the trainer's validation summary)
    is shown `flat` as key/value rows."""
    if "heads" not in metrics:
        return {"flat": list(_flatten(metrics).items())}
    single, multi = [], []
    for name, h in metrics["heads"].items():
        if h.get("kind") == "multi":
            multi.append({"name": name, "below": h["mA"] <= h.get("mA_chance", MA_CHANCE),
                          "cells": [h.get(k, MA_CHANCE if k == "mA_chance" else None) for k in MULTI_COLUMNS],
                          "at_chance": len(h.get("labels_at_chance") or []),
                          "labels": len(h.get("per_label_mA") or [])})
        else:
            base = h.get("majority_baseline")
            single.append({"name": name, "below": base is not None and h["accuracy"] <= base,
                           "cells": [h.get(k) for k in SINGLE_COLUMNS]})
    return {"flat": None, "single": single, "multi": multi, "multi_columns": MULTI_COLUMNS,
            "summary": list(metrics.get("summary", {}).items())}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def per_label_rows(h: Mapping[str, Any], classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per label of a multi-label head: training and evaluated positives, mA (`below` at chance), AP, F1
    and the decision threshold it was scored at."""
    def col(key):
        v = h.get(key)
        return list(v) if isinstance(v, (list, tuple)) else [v] * len(classes)

    cols = [col(k) for k in PER_LABEL_COLUMNS]
    ma = col("per_label_mA")
    return [{"name": c, "below": ma[j] is not None and ma[j] <= MA_CHANCE, "cells": [v[j] for v in cols]}
            for j, c in enumerate(classes)]


def _thresholds_of(metrics: Mapping[str, Any] | None, attribute) -> list[float]:
    """The thresholds the evaluation scored a multi-label head at (metrics.json), else the default 0.5."""
    t = ((metrics or {}).get("heads", {}).get(attribute.name) or {}).get("threshold", DEFAULT_THRESHOLD)
    return list(t) if isinstance(t, (list, tuple)) else [t] * attribute.num_classes


def sample_cards(images: _Images, schema, samples: Samples, max_images: int, metrics=None) -> list[dict[str, Any]]:
    """Worst mistakes first: examples sorted by their loss (summed cross-entropy over heads), highest first; each
    card its image, id, loss and one line per head (prediction, and the truth where it is wrong)."""
    losses = np.asarray(samples.losses, dtype=np.float64)
    cards = []
    for rank, i in enumerate(np.argsort(-losses, kind="stable")[:max_images]):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(samples.images[i]).astype(np.uint8)).save(buf, format="PNG")
        lines = []
        for a in schema.attributes:
            p, y = np.asarray(samples.probs[a.name][i]), np.asarray(samples.labels[a.name][i])
            if a.is_multi_label:
                pred = {c for c, v, t in zip(a.classes, p, _thresholds_of(metrics, a)) if v >= t}
                true = {c for c, v in zip(a.classes, y) if v}
                ok, text = pred == true, f"{'|'.join(sorted(pred)) or '-'} (true {'|'.join(sorted(true)) or '-'})"
            else:
                k = int(p.argmax())
                ok = k == int(y)
                text = f"{a.classes[k]} {p[k]:.2f}" + ("" if ok else f" (true {a.classes[int(y)]})")
            lines.append({"head": a.name, "ok": ok, "text": text})
        cards.append({"src": images.save(f"samples/{rank:03d}.png", buf.getvalue()), "loss": float(losses[i]),
                      "ident": str(samples.ids[i]) if len(samples.ids) else str(i), "lines": lines})
    return cards


# ----------------------------------------------------------------- the page

def write_report(out_dir: str, schema=None, metrics: Mapping[str, Any] | None = None, history_csv: str | None = None,
                 samples: Samples | None = None, title: str = "Evaluation report", embed: bool = False,
                 max_images: int = 48, notes: Sequence[str] = ()) -> str:
    """Writes out_dir/index.html and its PNGs; returns the page's path. Every argument but out_dir is optional.

    A gs:// out_dir is rendered in a local temporary folder and copied up (matplotlib and PIL write local files).
    """
    if "://" in out_dir:

        with tempfile.TemporaryDirectory() as tmp:
            write_report(tmp, schema, metrics, history_csv, samples, title, embed, max_images, notes)
            _copy_tree(tmp, out_dir)
        return os.path.join(out_dir, "index.html")
    os.makedirs(out_dir, exist_ok=True)
    images = _Images(out_dir, embed)
    page = {"title": title, "written": datetime.datetime.now().isoformat(timespec="seconds"), "notes": notes,
            "metrics": metrics_tables(metrics) if metrics else None, "training": None, "history_missing": None,
            "confusions": None, "per_label": None, "cards": None, "ma_chance": MA_CHANCE,
            "default_threshold": DEFAULT_THRESHOLD}
    if history_csv and _exists(history_csv):
        figs, history_notes = figures.training_figures(read_history(history_csv), schema)
        page["training"] = {"figures": [images.figure(*f) for f in figs], "notes": history_notes}
    elif history_csv:
        page["history_missing"] = history_csv
    if metrics and schema and "heads" in metrics:
        if any(not a.is_multi_label for a in schema.attributes):
            page["confusions"] = [images.figure(f"confusion_{name}.png", fig, f"confusion matrix {name}")
                                  for name, fig in figures.confusion_figures(schema, metrics)]
        multi = [a for a in schema.attributes if a.is_multi_label and a.name in metrics["heads"]]
        if multi:
            page["per_label"] = {
                "tables": [{"name": a.name, "rows": per_label_rows(metrics["heads"][a.name], a.classes)}
                           for a in multi],
                "figures": [images.figure(f"labels_{name}.png", fig, f"per-label mA and AP of {name}")
                            for name, fig in figures.multi_label_figures(schema, metrics)]}
    if samples is not None and schema is not None:
        page["cards"] = sample_cards(images, schema, samples, max_images, metrics)
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(pages.render("report.html", **page))
    return path


def _copy_tree(src: str, dst: str) -> None:
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)


def _exists(path: str) -> bool:
    return tf.io.gfile.exists(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Render a job's report from metrics.json and history.csv.")
    p.add_argument("--job_dir", required=True)
    p.add_argument("--out", help="report folder (default JOB_DIR/report)")
    p.add_argument("--embed", action="store_true", help="also inline the images, for a one-file page")
    args = p.parse_args(argv)

    metrics, schema = None, None
    mpath = os.path.join(args.job_dir, "metrics.json")
    if tf.io.gfile.exists(mpath):
        with tf.io.gfile.GFile(mpath) as f:
            metrics = json.load(f)
        if "schema" in metrics:

            schema = schema_from_dict(metrics["schema"])
    out = args.out or os.path.join(args.job_dir, "report")
    path = write_report(out, schema, metrics, os.path.join(args.job_dir, "history.csv"),
                        title=f"Run {args.job_dir}", embed=args.embed)
    print(path)


if __name__ == "__main__":
    main()
