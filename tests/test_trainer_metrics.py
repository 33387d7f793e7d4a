"""Each head's accuracy is computed on that head's labels (Keras 3.14 paired dict metrics with wrong heads).

    python -m pytest -q -x tests/test_trainer_metrics.py
"""

import keras
import numpy as np
import pytest

from tfds_person_attrs.schema import MULTI, Attribute, Schema
from trainer.config import load_config
from trainer.losses import make_losses
from trainer.metrics import MeanAccuracy, head_metrics

# Heads deliberately not in alphabetical order, with different class counts.
SCHEMA = Schema(name="routing", attributes=(
    Attribute("zeta", ("a", "b", "c"), column="z"),
    Attribute("alpha", ("a", "b"), column="a"),
    Attribute("mid", ("a", "b", "c", "d"), column="m"),
    Attribute("tags", ("x", "y", "z"), column="t", kind=MULTI),
))
PRED = {  # the model below outputs exactly these, whatever its input
    "zeta": [0, 1, 2, 0], "alpha": [0, 1, 0, 1], "mid": [0, 1, 2, 3],
}
LABELS = {"zeta": [0, 1, 2, 0],  # 4/4 right
          "alpha": [0, 1, 1, 0],  # 2/4
          "mid": [0, 0, 0, 0],  # 1/4
          "tags": [[1, 0, 0]] * 4}  # predicted [1, 1, 0] -> 2/3 of the binary decisions right
EXPECTED = {"zeta": 1.0, "alpha": 0.5, "mid": 0.25, "tags": 2 / 3}


def _passthrough_model():
    """Each head outputs its own input unchanged, so the predictions are exactly what we feed."""
    inputs = {f"{a.name}_in": keras.Input((a.num_classes,), name=f"{a.name}_in") for a in SCHEMA.attributes}
    outputs = {a.name: keras.layers.Activation("linear", name=a.name)(inputs[f"{a.name}_in"])
               for a in SCHEMA.attributes}
    return keras.Model(inputs, outputs)


def _predictions():
    x = {}
    for a in SCHEMA.attributes:
        if a.is_multi_label:
            x[f"{a.name}_in"] = np.tile(np.array([[0.9, 0.8, 0.1]], "float32"), (4, 1))
        else:
            x[f"{a.name}_in"] = np.eye(a.num_classes, dtype="float32")[PRED[a.name]] * 0.9 + 0.1 / a.num_classes
    return x


def test_each_head_metric_sees_its_own_labels():
    model = _passthrough_model()
    losses, weights = make_losses(SCHEMA, load_config("smoke").loss)
    model.compile(loss=losses, loss_weights=weights, metrics=head_metrics(SCHEMA))
    x = _predictions()
    y = {k: np.array(v, "float32" if k == "tags" else "int32") for k, v in LABELS.items()}
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    for name, acc in EXPECTED.items():
        assert logs[f"{name}_accuracy"] == pytest.approx(acc), (name, logs)
    # The mean-over-heads callback reads exactly these keys.
    epoch_logs = {f"val_{k}": v for k, v in logs.items()}
    MeanAccuracy(SCHEMA).on_epoch_end(0, epoch_logs)
    assert epoch_logs["val_mean_accuracy"] == pytest.approx(np.mean(list(EXPECTED.values())))
