"""Per-head losses: cross-entropy per schema attribute, per-head weights, label smoothing, class balance.

    python -c "from trainer.losses import class_weights; print(class_weights([90, 10], 'effective'))"

Single-label heads take integer labels (softmax outputs); multi-label heads take multi-hot float labels
(sigmoid outputs). Class balancing multiplies each example's loss by the weight of its class:
- "inverse":   w_c proportional to 1 / n_c;
- "effective": w_c proportional to (1 - beta) / (1 - beta ** n_c), the "effective number of samples" of Cui et
  al., CVPR 2019 (beta -> 0 is no balancing, beta -> 1 is inverse frequency).
Weights are normalised so that their mean over the training labels is 1 (sum_c p_c w_c = 1): balancing
changes which examples matter, not the head's overall scale, so the per-head weights keep their meaning.
For multi-label heads the weight of class c scales its positive term only (n_c = its positives).
Keras 3 only (keras.ops), so these losses run under any backend.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np
from keras import ops

_EPS = 1e-7


def class_weights(counts: Sequence[float], method: str, beta: float = 0.999) -> list[float]:
    """Per-class weights from training counts (see the module docstring); 'none' gives all ones."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)  # an empty class must not get an infinite weight
    if method == "none":
        return [1.0] * len(n)
    if method == "inverse":
        w = 1.0 / n
    elif method == "effective":
        w = (1.0 - beta) / (1.0 - np.power(beta, n))
    else:
        raise ValueError(f"class balance must be none, inverse or effective, got {method!r}")
    p = n / n.sum()
    return (w / float((p * w).sum())).tolist()


@keras.saving.register_keras_serializable(package="person_attrs")
class HeadLoss(keras.losses.Loss):
    """Cross-entropy for one head on probabilities (the heads end in softmax/sigmoid, in float32)."""

    def __init__(self, multi_label: bool, num_classes: int, label_smoothing: float = 0.0,
                 class_weights: Sequence[float] | None = None, name: str = "head_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.multi_label, self.num_classes = bool(multi_label), int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        if self.multi_label:
            y = ops.cast(y_true, "float32")
            target = y * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            pos = target * ops.log(y_pred)
            if self.class_weights is not None:
                pos = pos * ops.convert_to_tensor(self.class_weights, "float32")
            return -ops.mean(pos + (1.0 - target) * ops.log(1.0 - y_pred), axis=-1)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, self.num_classes)
        target = one_hot * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        ce = -ops.sum(target * ops.log(y_pred), axis=-1)
        if self.class_weights is not None:
            ce = ce * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), labels)
        return ce

    def get_config(self):
        return {**super().get_config(), "multi_label": self.multi_label, "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing, "class_weights": self.class_weights}


def make_losses(schema, loss_config, class_counts: Mapping[str, Sequence[float]] | None = None):
    """({head: HeadLoss}, {head: weight}) for model.compile; unnamed heads weigh 1.0."""
    losses, weights = {}, {}
    for a in schema.attributes:
        cw = None
        if loss_config.class_balance != "none":
            if not class_counts or a.name not in class_counts:
                raise ValueError(f"loss.class_balance={loss_config.class_balance} needs the dataset's class "
                                 f"counts for {a.name!r} (metadata['class_counts']['train'])")
            cw = class_weights(class_counts[a.name], loss_config.class_balance, loss_config.class_balance_beta)
        losses[a.name] = HeadLoss(a.is_multi_label, a.num_classes, loss_config.label_smoothing, cw,
                                  name=f"{a.name}_loss")
        weights[a.name] = float(loss_config.weights.get(a.name, 1.0))
    if loss_config.normalize_weights:
        # Relative weights, mean 1: the shared trunk's gradient then has the scale of one head's, so the
        # learning rate (and an LR range test) means the same whatever the weights add up to (hvc's sum to 23).
        mean = sum(weights.values()) / len(weights)
        weights = {k: w / mean for k, w in weights.items()}
    return losses, weights
