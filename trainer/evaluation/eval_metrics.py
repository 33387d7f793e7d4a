"""Evaluation metrics on numpy arrays: what evaluate.py prints and report.py shows.

Pure numpy (no TensorFlow, no Keras) so the numbers can be checked by hand and against scikit-learn, and so
they are the same whichever backend produced the predictions.

Single-label heads: accuracy, balanced accuracy (mean per-class recall), macro-F1, confusion matrix and the
majority-class baseline (the training split's most frequent class, scored on the evaluated labels) -- plain
accuracy hides a head that only learned the prior (emotion is 72% "Neutral"). Beside it the log loss and the
prior's log loss (always answering the training class frequencies): a head whose log loss is not below its
prior's tells no more about the image than the class frequencies do, whatever its accuracy says.
Multi-label attributes: mA (the pedestrian-attribute standard), instance-level accuracy/precision/recall/F1
and mAP, and per label its positives, mA, AP and F1 at its decision threshold (trainer.objective.thresholds). Any
constant answer scores mA = 0.5 (MA_CHANCE) on every label, so a label at or below it has learnt nothing.

    python -c "import numpy as np; from trainer import eval_metrics as m; \
print(m.single_label_metrics(np.array([0,1,1,2]), np.eye(3)[[0,1,2,2]], train_counts=[5,1,1]))"
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from trainer.objective import thresholds as threshold_lib
from trainer.objective.thresholds import DEFAULT_THRESHOLD

_EPS = 1e-12
MA_CHANCE = 0.5  # mA of any constant answer: TPR + TNR = 1


# ---------------------------------------------------------------- single-label

def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes]: rows are true classes, columns predicted (sklearn's layout)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall per true class; NaN for a class with no true examples (it has no recall to speak of)."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes that occur in the labels (as sklearn's balanced_accuracy_score)."""
    r = per_class_recall(cm)
    return float(np.nanmean(r)) if np.any(~np.isnan(r)) else float("nan")


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 per class; 0 where a class was neither true nor predicted would be 0/0, reported as NaN instead."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over classes that are true or predicted at least once (sklearn's f1_score(average='macro')).

    A class absent from both labels and predictions is left out rather than counted as 0 or 1, so a small
    evaluation split that happens to miss a rare class is not punished or rewarded for it.
    """
    f = per_class_f1(cm)
    return float(np.nanmean(f)) if np.any(~np.isnan(f)) else float("nan")


def majority_baseline(train_counts: Sequence[int], y_true) -> dict[str, Any]:
    """The accuracy of always answering the training split's most frequent class, on these labels.

    Scored on the evaluated labels (not the training fraction) so it is directly comparable with the
    model's accuracy on the same split.
    """
    counts = np.asarray(train_counts, dtype=np.int64)
    cls = int(np.argmax(counts))
    return {"class_index": cls, "train_fraction": float(counts[cls] / max(counts.sum(), 1)),
            "accuracy": accuracy(y_true, np.full(np.shape(y_true), cls))}


def log_loss(y_true, probs) -> float:
    """Mean negative log-probability of the true class, in nats (sklearn's log_loss, probabilities clipped)."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    return float(-np.mean(np.log(p[np.arange(y.size), y]))) if y.size else float("nan")


def prior_log_loss(train_counts: Sequence[int], y_true) -> float:
    """The log loss of answering every image with the training split's class frequencies, on these labels.

    Add-one smoothed, so a class that never occurs in training costs a finite amount rather than infinity.
    """
    counts = np.asarray(train_counts, dtype=np.float64) + 1.0
    n = np.size(y_true)
    return log_loss(y_true, np.broadcast_to(counts / counts.sum(), (n, counts.size)))


def single_label_metrics(y_true, probs, class_names: Sequence[str] | None = None,
                         train_counts: Sequence[int] | None = None) -> dict[str, Any]:
    """All single-label numbers for one head. y_true: int [N]; probs: float [N, C] (or int predictions [N])."""
    probs = np.asarray(probs)
    y_pred = probs.argmax(axis=-1) if probs.ndim == 2 else probs.astype(np.int64)
    c = probs.shape[-1] if probs.ndim == 2 else len(class_names or ()) or int(max(np.max(y_true), y_pred.max()) + 1)
    cm = confusion_matrix(y_true, y_pred, c)
    out: dict[str, Any] = {
        "kind": "single",
        "n": int(np.size(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "per_class_recall": _nan_to_none(per_class_recall(cm)),
        "per_class_f1": _nan_to_none(per_class_f1(cm)),
        "confusion_matrix": cm.tolist(),
    }
    if class_names is not None:
        out["classes"] = list(class_names)
    if train_counts is not None:
        base = majority_baseline(train_counts, y_true)
        out["majority_baseline"] = base["accuracy"]
        out["majority_class"] = (class_names[base["class_index"]] if class_names is not None
                                 else base["class_index"])
        out["majority_train_fraction"] = base["train_fraction"]
    if probs.ndim == 2:
        out["log_loss"] = log_loss(y_true, probs)
        if train_counts is not None:
            out["prior_log_loss"] = prior_log_loss(train_counts, y_true)
    return out


# ----------------------------------------------------------------- multi-label

def label_based_mA(y_true, y_pred) -> tuple[float, np.ndarray]:
    """mA: mean over labels of (positive recall + negative recall) / 2, and the per-label values.

    A label whose evaluated data has no positives (or no negatives) scores only on the recall that exists,
    instead of the epsilon-smoothed 0 some implementations silently add.
    """
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    pos, neg = y_true.sum(axis=0), (~y_true).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pr = np.where(pos > 0, (y_true & y_pred).sum(axis=0) / np.maximum(pos, 1), np.nan)
        nr = np.where(neg > 0, (~y_true & ~y_pred).sum(axis=0) / np.maximum(neg, 1), np.nan)
    per_label = np.nanmean(np.stack([pr, nr]), axis=0)
    return float(np.nanmean(per_label)), per_label


def instance_metrics(y_true, y_pred) -> dict[str, float]:
    """Example-based accuracy (|Y&P|/|Y|P|), precision, recall, and F1 = 2PR/(P+R) of the mean P and R.

    F1 from the averaged precision and recall is the pedestrian-attribute convention (Li et al., PETA/PA-100K);
    it differs from sklearn's average='samples' F1, which averages per-sample F1. A sample with no true and no
    predicted labels is a perfect answer (1 everywhere); any other 0/0 ratio scores 0.
    """
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    inter, union = (t & p).sum(1), (t | p).sum(1)
    nt, np_ = t.sum(1), p.sum(1)
    empty = union == 0

    def ratio(num, den):
        return np.where(empty, 1.0, np.where(den > 0, num / np.maximum(den, 1), 0.0))

    acc, prec, rec = ratio(inter, union).mean(), ratio(inter, np_).mean(), ratio(inter, nt).mean()
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"instance_accuracy": float(acc), "instance_precision": float(prec),
            "instance_recall": float(rec), "instance_f1": float(f1)}


def average_precision(y_true, scores) -> float:
    """Average precision of one label: sum over distinct thresholds of (R_n - R_{n-1}) * P_n.

    Tied scores form one threshold (as sklearn's average_precision_score), so the order of ties does not
    change the number. NaN when the label has no positives.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.diff(s) != 0, True]  # keep the cumulative counts at the end of each tied block
    tp = np.cumsum(y)[last_of_tie]
    k = np.arange(1, y.size + 1)[last_of_tie]
    precision, recall = tp / k, tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true, scores) -> tuple[float, np.ndarray]:
    """mAP over labels that have at least one positive in the evaluated data, and the per-label APs."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    aps = np.array([average_precision(y_true[:, j], scores[:, j]) for j in range(y_true.shape[1])])
    return (float(np.nanmean(aps)) if np.any(~np.isnan(aps)) else float("nan")), aps


def per_label_f1(y_true, y_pred) -> np.ndarray:
    """F1 of each label's positive class; NaN for a label neither present nor predicted."""
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp, denom = (t & p).sum(axis=0), t.sum(axis=0) + p.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def multi_label_metrics(y_true, probs, class_names: Sequence[str] | None = None,
                        train_counts: Sequence[int] | None = None, threshold=DEFAULT_THRESHOLD) -> dict[str, Any]:
    """All multi-label numbers for one attribute. y_true: 0/1 [N, L]; probs: sigmoid outputs [N, L];
    threshold: one for every label, or one per label (chosen on validation, trainer.objective.thresholds)."""
    y_true = np.asarray(y_true).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (probs.shape[1],))
    y_pred = (probs >= thresholds).astype(np.int64)
    ma, per_label_ma = label_based_mA(y_true, y_pred)
    m_ap, aps = mean_average_precision(y_true, probs)
    out: dict[str, Any] = {"kind": "multi", "n": int(y_true.shape[0]), "threshold": thresholds.tolist(), "mA": ma,
                           "mA_chance": MA_CHANCE, "mAP": m_ap, **instance_metrics(y_true, y_pred),
                           # exact-match ratio: what a single "accuracy" means for a set of labels
                           "accuracy": float(np.mean(np.all(y_true == y_pred, axis=1))),
                           "per_label_positives": y_true.sum(axis=0).astype(int).tolist(),
                           "per_label_mA": _nan_to_none(per_label_ma), "per_label_ap": _nan_to_none(aps),
                           "per_label_f1": _nan_to_none(per_label_f1(y_true, y_pred)),
                           "per_label_accuracy": np.mean(y_true == y_pred, axis=0).tolist(),
                           # labels no better than a constant answer (which scores exactly 0.5)
                           "labels_at_chance": [class_names[j] if class_names is not None else j
                                                for j, v in enumerate(per_label_ma) if v <= MA_CHANCE]}
    if class_names is not None:
        out["classes"] = list(class_names)
    if train_counts is not None:
        # a constant predictor scores mA = 0.5 whatever it answers, so 0.5 is the baseline to beat; the
        # training positives are kept to show how rare each label is
        out["train_positive_counts"] = np.asarray(train_counts).astype(int).tolist()
    return out


# --------------------------------------------------------------- whole schema

def evaluate_arrays(schema, labels: Mapping[str, Any], probs: Mapping[str, Any],
                    train_counts: Mapping[str, Sequence[int]] | None = None,
                    thresholds: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Metrics for every attribute of `schema` plus the summary; the content of metrics.json's "heads".

    labels/probs: {attribute: array} as produced by the eval dataset and the model's dict output; thresholds:
    per-label decision thresholds of multi-label attributes (default trainer.objective.thresholds.DEFAULT_THRESHOLD).
    """
    heads = {}
    for a in schema.attributes:
        counts = (train_counts or {}).get(a.name)
        if a.is_multi_label:
            heads[a.name] = multi_label_metrics(labels[a.name], probs[a.name], a.classes, counts,
                                                threshold=threshold_lib.for_attribute(thresholds, a))
        else:
            heads[a.name] = single_label_metrics(labels[a.name], probs[a.name], a.classes, counts)
    single = [h for h in heads.values() if h["kind"] == "single"]
    summary = {"mean_accuracy": float(np.mean([h["accuracy"] for h in single])) if single else None,
               "mean_balanced_accuracy": float(np.mean([h["balanced_accuracy"] for h in single])) if single else None,
               "mean_macro_f1": float(np.mean([h["macro_f1"] for h in single])) if single else None}
    if single and all("majority_baseline" in h for h in single):
        summary["mean_majority_baseline"] = float(np.mean([h["majority_baseline"] for h in single]))
    multi = [h for h in heads.values() if h["kind"] == "multi"]
    if multi:
        summary["mean_mA"] = float(np.mean([h["mA"] for h in multi]))
        summary["mean_mAP"] = float(np.nanmean([h["mAP"] for h in multi]))
        summary["labels_at_chance"] = sum(len(h["labels_at_chance"]) for h in multi)
    # the checkpoint monitor's quantity, on this split: chance is 1/C per softmax head, 0.5 per multi-label head
    summary["mean_balanced_accuracy_all_heads"] = float(np.mean(
        [h["mA"] if h["kind"] == "multi" else h["balanced_accuracy"] for h in heads.values()]))
    return {"heads": heads, "summary": summary}


def sample_losses(schema, labels: Mapping[str, Any], probs: Mapping[str, Any]) -> np.ndarray:
    """Per-example cross-entropy summed over heads: sorting by it puts the most confident mistakes first."""
    total = None
    for a in schema.attributes:
        p = np.clip(np.asarray(probs[a.name], dtype=np.float64), _EPS, 1 - _EPS)
        y = np.asarray(labels[a.name])
        if a.is_multi_label:
            loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1)
        else:
            loss = -np.log(p[np.arange(len(y)), y.astype(np.int64)])
        total = loss if total is None else total + loss
    return total


def _nan_to_none(x: np.ndarray) -> list:
    """JSON has no NaN: an undefined per-class value is written as null."""
    return [None if np.isnan(v) else float(v) for v in np.asarray(x, dtype=np.float64)]
