"""The multi-label decision threshold: its one default, per-label thresholds chosen on validation, their file.

A multi-label head outputs one sigmoid probability per label; a label is predicted present when its probability
is >= its threshold. Until thresholds are chosen every label uses DEFAULT_THRESHOLD; the training metrics (mA)
always do. `python -m trainer.evaluate --model JOB --split validation --choose_thresholds` picks, per label, the
threshold that maximises that label's balanced accuracy ((TPR + TNR) / 2, the quantity mA averages) on the
validation split and writes JOB_DIR/thresholds.json; evaluation of that job, `trainer.export` (the signature's
`<attr>_label` / `<attr>_active` and labels.json) and so `trainer.predict` use them from then on.

    python -c "import numpy as np; from trainer.objective.thresholds import best_threshold; \
print(best_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.35, 0.8])))"

`read` checks the file against the dataset's schema before anything uses it (valid JSON, this schema's name, a
list of finite numbers in [0, 1] for every multi-label head and no other key): a broken or foreign file stops
evaluate and export with one line naming the file and the problem, instead of being served.

numpy and json only (the file is read through tf.io.gfile when TensorFlow is loaded, for gs:// job dirs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from trainer.config import ConfigError

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


@dataclasses.dataclass(frozen=True)
class Chosen:
    """JOB_DIR/thresholds.json as read and checked: the thresholds, the file, and the split they were chosen on."""

    thresholds: dict[str, list[float]]
    path: str
    split: str

    def describe(self) -> str:
        return f"{self.path}, chosen on the {self.split} split"


class ThresholdsError(ConfigError):
    """A thresholds file that cannot be used (a user error: one line, exit 2); the message names the file and the
    problem."""


def read(job_dir: str | None, schema) -> Chosen | None:
    """JOB_DIR/thresholds.json checked against `schema`, or None when there is no such file (or no job dir)."""
    if not job_dir:
        return None
    # optional here: the objective is backend-agnostic (no TensorFlow at import); gfile reads gs:// job dirs
    import tensorflow as tf

    path = os.path.join(job_dir, FILE_NAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError as e:
        raise _bad(path, f"not JSON ({e})") from None
    return Chosen(check(data, schema, path), path, str(data.get("split", "?")))


def check(data: Any, schema, path: str) -> dict[str, list[float]]:
    """The thresholds of a parsed thresholds file (see `to_json`), or ThresholdsError naming what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("thresholds"), dict):
        found = f"keys {sorted(data)}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise _bad(path, f'expected an object with a "thresholds" object, found {found}')
    if data.get("schema", schema.name) != schema.name:
        raise _bad(path, f"chosen for schema {data['schema']!r}, this model's dataset is {schema.name!r}")
    given = data["thresholds"]
    multi = {a.name: a for a in schema.attributes if a.is_multi_label}
    unknown, missing = sorted(set(given) - set(multi)), sorted(set(multi) - set(given))
    if unknown or missing:
        raise _bad(path, (f"no multi-label head {unknown}" if unknown else "")
                   + ("; " if unknown and missing else "") + (f"no thresholds for {missing}" if missing else "")
                   + f" (the multi-label heads are {sorted(multi)})")
    out = {}
    for name, values in given.items():
        n = multi[name].num_classes
        if not isinstance(values, list) or len(values) != n:
            count = f"{len(values)} values" if isinstance(values, list) else f"a JSON {type(values).__name__}"
            raise _bad(path, f"{name}: {count} for its {n} labels")
        for j, t in enumerate(values):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= 1:
                raise _bad(path, f"{name}[{j}] ({multi[name].classes[j]}) is {json.dumps(t)}; a threshold is a "
                                 "number from 0 to 1")
        out[name] = [float(t) for t in values]
    return out


def _bad(path: str, problem: str) -> ThresholdsError:
    return ThresholdsError(f"{path}: {problem}; choose them again with `python -m trainer.evaluate --model JOB_DIR "
                           "--split validation --choose_thresholds`, or delete the file to use "
                           f"{DEFAULT_THRESHOLD} for every label")
