"""Per-head losses: cross-entropy per schema attribute, per-head weights, label smoothing, class balance.

    python -c "from trainer.objective.losses import class_weights; print(class_weights([90, 10], 'effective'))"

Single-label heads take integer labels (softmax outputs); multi-label heads take multi-hot float labels
(sigmoid outputs). Both also take the mixed targets of MixUp/CutMix (a softmax head's soft [B, C] target, a
multi-label head's fractional labels): every loss here is linear in its target, so a target
lam * y_a + (1 - lam) * y_b costs exactly lam * L(y_a) + (1 - lam) * L(y_b), class and label weights included.
Class balancing multiplies each example's loss by the weight of its class:
- "inverse":   w_c proportional to 1 / n_c;
- "effective": w_c proportional to (1 - beta) / (1 - beta ** n_c), the "effective number of samples" of Cui et
  al., CVPR 2019 (beta -> 0 is no balancing, beta -> 1 is inverse frequency).
Weights are normalised so that their mean over the training labels is 1 (sum_c p_c w_c = 1): balancing
changes which examples matter, not the head's overall scale, so the per-head weights keep their meaning.
Class balancing applies to single-label heads only.

Multi-label heads balance positives against negatives per label instead (`loss.multi_label_loss`):
- "bce": plain binary cross-entropy, every term weight 1;
- "weighted_bce": the weighted sigmoid cross-entropy of DeepMAR (Li, Chen and Huang, "Multi-attribute Learning
  for Pedestrian Attribute Recognition in Surveillance Scenarios", ACPR 2015) in the form of the strong
  pedestrian-attribute baseline (Jia et al., "Rethinking of Pedestrian Attribute Recognition: Realistic
  Datasets with Efficient Method", arXiv:2005.11909, 2020): with r_l the fraction of training images in which
  label l is present, a positive of label l weighs exp(1 - r_l) and a negative exp(r_l) (sigma = 1), so a
  label present in 24% of images weighs its positives exp(0.76) = 2.14 and its negatives exp(0.24) = 1.27.
  Not normalised, as published.
Keras 3 only (keras.ops), so these losses run under any backend.

    python -c "from trainer.objective.losses import positive_negative_weights; \
print(positive_negative_weights([24], 100))"
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


def positive_negative_weights(positives: Sequence[float], num_examples: int) -> tuple[list[float], list[float]]:
    """(positive weights, negative weights) per label of the weighted BCE (module docstring): exp(1 - r), exp(r)."""
    if num_examples < 1:
        raise ValueError("the positive/negative weights need at least one training example")
    r = np.clip(np.asarray(positives, dtype=np.float64) / num_examples, 0.0, 1.0)
    return np.exp(1.0 - r).tolist(), np.exp(r).tolist()


@keras.saving.register_keras_serializable(package="person_attrs")
class HeadLoss(keras.losses.Loss):
    """Cross-entropy for one head on probabilities (the heads end in softmax/sigmoid, in float32)."""

    def __init__(self, multi_label: bool, num_classes: int, label_smoothing: float = 0.0,
                 class_weights: Sequence[float] | None = None, name: str = "head_loss",
                 positive_weights: Sequence[float] | None = None, negative_weights: Sequence[float] | None = None,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.multi_label, self.num_classes = bool(multi_label), int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.positive_weights = None if positive_weights is None else [float(w) for w in positive_weights]
        self.negative_weights = None if negative_weights is None else [float(w) for w in negative_weights]

    def call(self, y_true, y_pred):
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        eps = self.label_smoothing
        if self.multi_label:
            # Per label: y * L(positive) + (1 - y) * L(negative), each term smoothed and weighted as its hard
            # label says. Linear in y, so a MixUp/CutMix target lam * y_a + (1 - lam) * y_b gives exactly
            # lam * L(y_a) + (1 - lam) * L(y_b); for 0/1 labels it is the (weighted) smoothed BCE.
            y = ops.cast(y_true, "float32")
            log_p, log_q = ops.log(y_pred), ops.log(1.0 - y_pred)
            positive = (1.0 - eps / 2) * log_p + eps / 2 * log_q
            negative = eps / 2 * log_p + (1.0 - eps / 2) * log_q
            if self.positive_weights is not None:
                positive = positive * ops.convert_to_tensor(self.positive_weights, "float32")
                negative = negative * ops.convert_to_tensor(self.negative_weights, "float32")
            return -ops.mean(y * positive + (1.0 - y) * negative, axis=-1)
        target = self.targets(y_true)
        if self.class_weights is not None:
            target = target * ops.convert_to_tensor(self.class_weights, "float32")
        # sum_c t_c * smoothed CE of class c = (1 - eps) * sum_c t_c (-log p_c) + eps / C * sum_c t_c * sum(-log p),
        # with t the (class-weighted) target: for a one-hot label that is w_label * smoothed CE, and linear in t.
        nll = -ops.log(y_pred)
        return ((1.0 - eps) * ops.sum(target * nll, axis=-1)
                + eps / self.num_classes * ops.sum(target, axis=-1) * ops.sum(nll, axis=-1))

    def targets(self, y_true):
        """A softmax head's targets as [B, C] floats: one-hot from integer labels ([B] or [B, 1]), or the soft
        targets MixUp/CutMix make (trainer.model.augment.LabelMixing) as they are."""
        if len(y_true.shape) == 2 and y_true.shape[-1] == self.num_classes and self.num_classes > 1:
            return ops.cast(y_true, "float32")
        return ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_classes)

    def get_config(self):
        return {**super().get_config(), "multi_label": self.multi_label, "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing, "class_weights": self.class_weights,
                "positive_weights": self.positive_weights, "negative_weights": self.negative_weights}


def make_losses(schema, loss_config, class_counts: Mapping[str, Sequence[float]] | None = None,
                num_train: int = 0):
    """({head: HeadLoss}, {head: weight}) for model.compile.

    class_counts: the training split's counts per class (positives per label for multi-label heads), and
    num_train its number of examples: needed by class balancing and the weighted BCE. The head weights are the
    schema's `loss_weights` updated by loss_config.weights; heads named in neither weigh 1.0.
    """
    losses, weights = {}, {}
    head_weights = {**schema.loss_weights, **loss_config.weights}
    for a in schema.attributes:
        kw = {}
        balance = loss_config.multi_label_loss == "weighted_bce" if a.is_multi_label else (
            loss_config.class_balance != "none")
        if balance and (not class_counts or a.name not in class_counts or (a.is_multi_label and num_train < 1)):
            raise ValueError(f"balancing the loss of {a.name!r} needs the dataset's training class counts "
                             "(metadata['class_counts']['train']); rebuild the dataset with the pipeline")
        if balance and a.is_multi_label:
            kw["positive_weights"], kw["negative_weights"] = positive_negative_weights(class_counts[a.name], num_train)
        elif balance:
            kw["class_weights"] = class_weights(class_counts[a.name], loss_config.class_balance,
                                                loss_config.class_balance_beta)
        losses[a.name] = HeadLoss(a.is_multi_label, a.num_classes, loss_config.label_smoothing,
                                  name=f"{a.name}_loss", **kw)
        weights[a.name] = float(head_weights.get(a.name, 1.0))
    if loss_config.normalize_weights:
        # Relative weights, mean 1: the shared trunk's gradient then has the scale of one head's, so the
        # learning rate (and an LR range test) means the same whatever the weights add up to (hvc's sum to 23).
        mean = sum(weights.values()) / len(weights)
        weights = {k: w / mean for k, w in weights.items()}
    return losses, weights
