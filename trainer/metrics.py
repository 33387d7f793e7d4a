"""Per-head accuracy metrics and the mean accuracy over heads (Keras metric objects and a callback only).

    python -c "from tfds_person_attrs.schema import HVC; from trainer.metrics import head_metrics; \
print(head_metrics(HVC))"

Each head gets its own metric object in a dict keyed by the head's name, so Keras pairs it with that head's
labels and logs it as `<head>_accuracy` / `val_<head>_accuracy`. Single-label heads use sparse categorical
accuracy (never binary accuracy on a softmax: that overstates it); multi-label heads use per-class binary
accuracy at 0.5. `MeanAccuracy` adds `mean_accuracy` and `val_mean_accuracy` to each epoch's logs; it must
come before any callback that reads them (checkpointing, CSV, TensorBoard).
"""

from __future__ import annotations

import keras
import numpy as np

ACCURACY = "accuracy"  # every head's metric; Keras logs it as <head>_accuracy and val_<head>_accuracy
MEAN = "mean"  # MeanAccuracy logs the mean over heads under this name in place of a head's


def head_metrics(schema) -> dict[str, list[keras.metrics.Metric]]:
    return {a.name: [keras.metrics.BinaryAccuracy(name=ACCURACY, threshold=0.5) if a.is_multi_label
                     else keras.metrics.SparseCategoricalAccuracy(name=ACCURACY)]
            for a in schema.attributes}


def accuracy_key(head: str, prefix: str = "") -> str:
    """The log key of a head's accuracy (or of MEAN's), e.g. 'val_gender_accuracy' for prefix 'val_'."""
    return f"{prefix}{head}_{ACCURACY}"


def accuracy_keys(schema, prefix: str = "") -> dict[str, str]:
    """{head: log key}, e.g. {'gender': 'val_gender_accuracy'} for prefix 'val_'."""
    return {name: accuracy_key(name, prefix) for name in schema.names}


def mean_accuracy(logs: dict, schema, prefix: str = "") -> float | None:
    keys = accuracy_keys(schema, prefix).values()
    if not all(k in logs for k in keys):
        return None
    return float(np.mean([float(logs[k]) for k in keys]))


class MeanAccuracy(keras.callbacks.Callback):
    """Writes mean_accuracy (train) and val_mean_accuracy (when validation ran) into the epoch logs."""

    def __init__(self, schema):
        super().__init__()
        self.schema = schema

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            value = mean_accuracy(logs, self.schema, prefix)
            if value is not None:
                logs[accuracy_key(MEAN, prefix)] = value
