"""Per-head training metrics that a constant predictor cannot flatter, and their mean over heads.

    python -c "from tfds_person_attrs.schema import HVC; from trainer.objective.metrics import head_metrics; \
print(head_metrics(HVC))"

Each head gets its own metric objects in a dict keyed by the head's name, so Keras pairs them with that head's
labels and logs them as `<head>_<metric>` / `val_<head>_<metric>`:
- single-label (softmax) heads: `accuracy` (sparse categorical) and `balanced_accuracy` (mean recall over the
  classes present in the labels; a constant answer scores 1/C whatever the class frequencies);
- multi-label (sigmoid) heads: `mA` (mean over labels of (TPR + TNR) / 2 at the decision threshold
  trainer.objective.thresholds.DEFAULT_THRESHOLD, the pedestrian-attribute standard; a constant answer scores 0.5) and
  `mAP` (Keras' AUC of the precision-recall curve per label on 200 thresholds, averaged over labels: an
  interpolated approximation of trainer.evaluation.eval_metrics' exact AP). Binary accuracy is not tracked: with rare
  labels it rewards answering "absent" everywhere.
The metrics accumulate counts in variables that Keras creates with aggregation "sum", so under a distribution
strategy (trainer.training.loop reads them outside the step) every replica's counts are added before the ratio is
taken: the epoch value is exact over the whole split, not a mean of per-replica or per-batch ratios.

`MeanBalancedAccuracy` adds to each epoch's logs `mean_balanced_accuracy` (the mean over heads of balanced
accuracy / mA: the checkpoint monitor, trainer.training.callbacks.MONITOR) and, when the schema has single-label heads,
`mean_accuracy` (their mean accuracy), both also with the `val_` prefix. It must come before any callback that
reads them (checkpointing, CSV, TensorBoard). Keras 3 only (keras.ops), so these run under any backend.

On training batches mixed by MixUp/CutMix (trainer.model.augment.LabelMixing) the labels are soft; every metric here
then scores against each example's dominant label (the class with the larger share; a multi-label label counts
as present above 0.5), so training curves of a mixing run measure agreement with the dominant image of each
mix, not accuracy on clean images. Validation batches are never mixed.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from trainer.objective.log_keys import ACCURACY, MEAN_ACCURACY, MEAN_BALANCED_ACCURACY, VAL
from trainer.objective.thresholds import DEFAULT_THRESHOLD


def _sum_variable(metric, name: str, size: int):
    return metric.add_variable(shape=(size,), initializer="zeros", dtype="float32", aggregation="sum", name=name)


def class_labels(y_true, num_classes: int):
    """A softmax head's labels as int32 [B]: integer labels as they are, soft [B, C] targets by their argmax."""
    if len(y_true.shape) == 2 and y_true.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def _present(y_true):
    return ops.cast(ops.greater(ops.cast(y_true, "float32"), 0.5), "float32")  # multi-hot (or mixed) labels as 0/1


@keras.saving.register_keras_serializable(package="person_attrs")
class HeadAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Keras' sparse categorical accuracy that also takes soft targets (scored on their dominant class)."""

    def __init__(self, num_classes: int, name: str = ACCURACY, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(class_labels(y_true, self.num_classes), y_pred, sample_weight)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="person_attrs")
class LabelAP(keras.metrics.AUC):
    """Keras' multi-label PR AUC (mAP) with labels counted as present above 0.5 (Keras' AUC counts any non-zero
    label as present, which a mixed label always is)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(_present(y_true), y_pred, sample_weight)


def _mean_of_defined(ratios, defined):
    """Mean of `ratios` over the entries where `defined`; 0 when none is (an empty epoch)."""
    defined = ops.cast(defined, "float32")
    return ops.sum(ratios * defined) / ops.maximum(ops.sum(defined), 1.0)


@keras.saving.register_keras_serializable(package="person_attrs")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean per-class recall of a softmax head over the classes present in the labels (sklearn's
    balanced_accuracy_score); y_true: int class indices, y_pred: probabilities [N, C]."""

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.correct = _sum_variable(self, "correct", self.num_classes)
        self.support = _sum_variable(self, "support", self.num_classes)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = class_labels(y_true, self.num_classes)
        true = ops.one_hot(labels, self.num_classes)
        hit = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), labels), "float32")
        self.support.assign_add(ops.sum(true, axis=0))
        self.correct.assign_add(ops.sum(true * hit[:, None], axis=0))

    def result(self):
        recall = self.correct / ops.maximum(self.support, 1.0)
        return _mean_of_defined(recall, ops.greater(self.support, 0.0))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="person_attrs")
class LabelMeanAccuracy(keras.metrics.Metric):
    """mA of a sigmoid head: mean over labels of (TPR + TNR) / 2 at `threshold`; a label with no positives (or
    no negatives) in the data seen scores on the rate that exists (as
    trainer.evaluation.eval_metrics.label_based_mA)."""

    def __init__(self, num_labels: int, threshold: float = DEFAULT_THRESHOLD, name: str = "mA", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_labels, self.threshold = int(num_labels), float(threshold)
        self.true_pos = _sum_variable(self, "true_pos", self.num_labels)
        self.true_neg = _sum_variable(self, "true_neg", self.num_labels)
        self.pos = _sum_variable(self, "pos", self.num_labels)
        self.neg = _sum_variable(self, "neg", self.num_labels)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = _present(y_true)
        p = ops.cast(ops.greater_equal(ops.cast(y_pred, "float32"), self.threshold), "float32")
        self.pos.assign_add(ops.sum(y, axis=0))
        self.neg.assign_add(ops.sum(1.0 - y, axis=0))
        self.true_pos.assign_add(ops.sum(y * p, axis=0))
        self.true_neg.assign_add(ops.sum((1.0 - y) * (1.0 - p), axis=0))

    def result(self):
        has_pos = ops.cast(ops.greater(self.pos, 0.0), "float32")
        has_neg = ops.cast(ops.greater(self.neg, 0.0), "float32")
        tpr = self.true_pos / ops.maximum(self.pos, 1.0)
        tnr = self.true_neg / ops.maximum(self.neg, 1.0)
        per_label = (tpr * has_pos + tnr * has_neg) / ops.maximum(has_pos + has_neg, 1.0)
        return _mean_of_defined(per_label, ops.greater(has_pos + has_neg, 0.0))

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels, "threshold": self.threshold}


def head_metrics(schema) -> dict[str, list[keras.metrics.Metric]]:
    out = {}
    for a in schema.attributes:
        if a.is_multi_label:
            out[a.name] = [LabelMeanAccuracy(a.num_classes),
                           LabelAP(curve="PR", multi_label=True, num_labels=a.num_classes, name="mAP")]
        else:
            out[a.name] = [HeadAccuracy(a.num_classes), BalancedAccuracy(a.num_classes)]
    return out


def accuracy_key(head: str, prefix: str = "") -> str:
    """The log key of a head's accuracy, e.g. 'val_gender_accuracy' for prefix 'val_'."""
    return f"{prefix}{head}_{ACCURACY}"


def accuracy_keys(schema, prefix: str = "") -> dict[str, str]:
    """{single-label head: its accuracy log key}, e.g. {'gender': 'val_gender_accuracy'} for prefix 'val_'."""
    return {a.name: accuracy_key(a.name, prefix) for a in schema.attributes if not a.is_multi_label}


def balanced_keys(schema, prefix: str = "") -> dict[str, str]:
    """{head: the log key of its chance-corrected metric}: balanced accuracy, or mA for a multi-label head."""
    return {a.name: f"{prefix}{a.name}_{'mA' if a.is_multi_label else 'balanced_accuracy'}"
            for a in schema.attributes}


def _mean(logs: dict, keys) -> float | None:
    keys = list(keys)
    if not keys or not all(k in logs for k in keys):
        return None
    return float(np.mean([float(logs[k]) for k in keys]))


def mean_balanced_accuracy(logs: dict, schema, prefix: str = "") -> float | None:
    return _mean(logs, balanced_keys(schema, prefix).values())


def mean_accuracy(logs: dict, schema, prefix: str = "") -> float | None:
    return _mean(logs, accuracy_keys(schema, prefix).values())


class MeanBalancedAccuracy(keras.callbacks.Callback):
    """Writes [val_]mean_balanced_accuracy and, for single-label heads, [val_]mean_accuracy into the epoch logs."""

    def __init__(self, schema):
        super().__init__()
        self.schema = schema

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", VAL):
            for key, fn in ((MEAN_BALANCED_ACCURACY, mean_balanced_accuracy), (MEAN_ACCURACY, mean_accuracy)):
                value = fn(logs, self.schema, prefix)
                if value is not None:
                    logs[f"{prefix}{key}"] = value
