"""The multi-label decision threshold: its one default, per-label thresholds chosen on validation, their file.

A multi-label head outputs one sigmoid probability per label; a label is predicted present when its probability
is >= its threshold. Until thresholds are chosen every label uses DEFAULT_THRESHOLD; the training metrics (mA)
always do. `python -m trainer.evaluate --model JOB --split validation --choose_thresholds` picks, per label, the
threshold that maximises that label's balanced accuracy ((TPR + TNR) / 2, the quantity mA averages) on the
validation split and writes JOB_DIR/thresholds.json; evaluation of that job, `trainer.export` (the signature's
`<attr>_label` / `<attr>_active` and labels.json) and so `trainer.predict` use them from then on.

    python -c "import numpy as np; from trainer.objective.thresholds import best_threshold; \
print(best_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.35, 0.8])))"

numpy and json only (the file is read through tf.io.gfile when TensorFlow is loaded, for gs:// job dirs).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5
FILE_NAME = "thresholds.json"
CHOSEN_BY = "max per-label balanced accuracy (TPR + TNR) / 2"


def best_threshold(y_true, scores) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximising (TPR + TNR) / 2 for one label; ties go to the value nearest
    DEFAULT_THRESHOLD. A label without positives or without negatives keeps DEFAULT_THRESHOLD."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return DEFAULT_THRESHOLD, float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(y_sorted)[last_of_tie]  # predicted positive: every score >= this distinct value
    fp = np.cumsum(~y_sorted)[last_of_tie]
    cut = s_sorted[last_of_tie]
    # candidates: each distinct score as the threshold, plus one above the maximum (nothing predicted positive)
    tpr = np.r_[0.0, tp / pos]
    tnr = np.r_[1.0, 1.0 - fp / neg]
    candidates = np.r_[np.nextafter(cut[0], np.inf), cut]
    bal = (tpr + tnr) / 2
    best = np.flatnonzero(np.isclose(bal, bal.max(), rtol=0, atol=1e-12))
    pick = best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]
    return float(candidates[pick]), float(bal[pick])


def choose(schema, labels: Mapping[str, Any], probs: Mapping[str, Any]) -> dict[str, list[float]]:
    """{multi-label attribute: [threshold per label]} chosen on these labels and probabilities."""
    return {a.name: [best_threshold(np.asarray(labels[a.name])[:, j], np.asarray(probs[a.name])[:, j])[0]
                     for j in range(a.num_classes)]
            for a in schema.attributes if a.is_multi_label}


def for_attribute(thresholds: Mapping[str, Sequence[float]] | None, attribute) -> np.ndarray:
    """The per-label thresholds of one multi-label attribute (DEFAULT_THRESHOLD where none were chosen)."""
    chosen = (thresholds or {}).get(attribute.name)
    if chosen is None:
        return np.full(attribute.num_classes, DEFAULT_THRESHOLD)
    if len(chosen) != attribute.num_classes:
        raise ValueError(f"thresholds for {attribute.name!r}: {len(chosen)} values for {attribute.num_classes} "
                         "labels; choose them again with trainer.evaluate --choose_thresholds")
    return np.asarray(chosen, dtype=np.float64)


def to_json(thresholds: Mapping[str, Sequence[float]], schema, split: str) -> str:
    return json.dumps({"chosen_by": CHOSEN_BY, "split": split, "schema": schema.name,
                       "thresholds": {name: [float(t) for t in ts] for name, ts in thresholds.items()}}, indent=2)


def read(job_dir: str | None) -> dict[str, list[float]] | None:
    """JOB_DIR/thresholds.json's thresholds, or None when there is no such file (or no job dir)."""
    if not job_dir:
        return None
    import tensorflow as tf  # gfile reads gs:// job dirs

    path = os.path.join(job_dir, FILE_NAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return {k: [float(t) for t in v] for k, v in json.load(f)["thresholds"].items()}
