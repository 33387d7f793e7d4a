"""Training metrics: each head's on its own labels, equal to the evaluation's numpy figures, exact under two
replicas, and a monitor that a constant model cannot win.

    python -m pytest -q -x tests/test_trainer_metrics.py
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfds_person_attrs.schema import MULTI, Attribute, Schema
from trainer.config_loader import load_config
from trainer.evaluation import eval_metrics
from trainer.objective.log_keys import MONITOR
from trainer.objective.losses import make_losses
from trainer.objective.metrics import MeanBalancedAccuracy, head_metrics
from trainer.training.callbacks import BestCheckpoint

# Heads deliberately not in alphabetical order, with different class counts.
SCHEMA = Schema(name="routing", attributes=(
    Attribute("zeta", ("a", "b", "c"), column="z"),
    Attribute("alpha", ("a", "b"), column="a"),
    Attribute("mid", ("a", "b", "c", "d"), column="m"),
    Attribute("tags", ("x", "y", "z"), column="t", kind=MULTI),
))
N = 40


def _passthrough_model(schema=SCHEMA):
    """Each head outputs its own input unchanged, so the predictions are exactly what we feed."""
    inputs = {f"{a.name}_in": keras.Input((a.num_classes,), name=f"{a.name}_in") for a in schema.attributes}
    outputs = {a.name: keras.layers.Activation("linear", name=a.name)(inputs[f"{a.name}_in"])
               for a in schema.attributes}
    return keras.Model(inputs, outputs)


def _data(seed=0):
    """Imbalanced labels and noisy predictions that know something about them."""
    rng = np.random.default_rng(seed)
    labels, probs = {}, {}
    for a in SCHEMA.attributes:
        if a.is_multi_label:
            y = (rng.random((N, a.num_classes)) < [0.2, 0.5, 0.1]).astype("float32")
            labels[a.name], probs[a.name] = y, np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1).astype("float32")
        else:
            y = rng.choice(a.num_classes, N, p=np.r_[0.7, np.full(a.num_classes - 1, 0.3 / (a.num_classes - 1))])
            p = rng.dirichlet(np.ones(a.num_classes), N) + 0.6 * np.eye(a.num_classes)[y]
            labels[a.name], probs[a.name] = y.astype("int32"), (p / p.sum(1, keepdims=True)).astype("float32")
    return labels, probs


def _compiled(model):
    losses, weights = make_losses(SCHEMA, load_config("smoke").loss)
    model.compile(loss=losses, loss_weights=weights, metrics=head_metrics(SCHEMA))
    return model


def test_each_head_metric_sees_its_own_labels_and_matches_the_evaluation():
    labels, probs = _data()
    logs = _compiled(_passthrough_model()).evaluate({f"{k}_in": v for k, v in probs.items()}, labels,
                                                    batch_size=7, verbose=0, return_dict=True)  # uneven batches
    expected = eval_metrics.evaluate_arrays(SCHEMA, labels, probs)["heads"]
    for a in SCHEMA.attributes:
        h = expected[a.name]
        if a.is_multi_label:
            assert logs[f"{a.name}_mA"] == pytest.approx(h["mA"], abs=1e-6)
            # Keras' interpolated PR-AUC on 200 thresholds approximates the exact AP
            assert logs[f"{a.name}_mAP"] == pytest.approx(h["mAP"], abs=0.05)
            assert f"{a.name}_accuracy" not in logs  # binary accuracy flatters rare labels: not tracked
        else:
            assert logs[f"{a.name}_accuracy"] == pytest.approx(h["accuracy"], abs=1e-6)
            assert logs[f"{a.name}_balanced_accuracy"] == pytest.approx(h["balanced_accuracy"], abs=1e-6)
    epoch_logs = {f"val_{k}": v for k, v in logs.items()}
    MeanBalancedAccuracy(SCHEMA).on_epoch_end(0, epoch_logs)
    heads = [h["mA"] if h["kind"] == "multi" else h["balanced_accuracy"] for h in expected.values()]
    assert epoch_logs[MONITOR] == pytest.approx(np.mean(heads), abs=1e-6)
    assert epoch_logs["val_mean_accuracy"] == pytest.approx(
        np.mean([h["accuracy"] for h in expected.values() if h["kind"] == "single"]), abs=1e-6)


def _constant_model():
    """Heads that see nothing of their input (it is multiplied by 0): training can only learn the prior."""
    inputs = {f"{a.name}_in": keras.Input((a.num_classes,), name=f"{a.name}_in") for a in SCHEMA.attributes}
    outputs = {a.name: keras.layers.Dense(a.num_classes, activation="sigmoid" if a.is_multi_label else "softmax",
                                          name=a.name)(keras.layers.Rescaling(0.0)(inputs[f"{a.name}_in"]))
               for a in SCHEMA.attributes}
    return keras.Model(inputs, outputs)


def _weak_data():
    """75% of every single-label head is class 0 and every tag is present in a quarter of the examples; the
    predictions are right for two examples in three (so below always answering the majority in accuracy)."""
    n, labels, probs = 60, {}, {}
    wrong = np.arange(n) % 3 == 0
    for a in SCHEMA.attributes:
        if a.is_multi_label:
            y = (np.arange(n)[:, None] + np.arange(a.num_classes)) % 4 == 1
            pred = y ^ wrong[:, None]
            labels[a.name], probs[a.name] = y.astype("float32"), np.where(pred, 0.8, 0.2).astype("float32")
        else:
            y = np.r_[np.zeros(45, int), 1 + np.arange(15) % (a.num_classes - 1)]
            pred = np.where(wrong, (y + 1) % a.num_classes, y)
            p = np.full((n, a.num_classes), 0.2 / (a.num_classes - 1))
            p[np.arange(n), pred] = 0.8
            labels[a.name], probs[a.name] = y.astype("int32"), p.astype("float32")
    return labels, probs


def test_a_trained_constant_model_is_never_chosen_best(tmp_path):
    labels, probs = _weak_data()
    x = {f"{k}_in": v for k, v in probs.items()}
    informative = _compiled(_passthrough_model()).evaluate(x, labels, batch_size=60, verbose=0, return_dict=True)
    informative = {f"val_{k}": v for k, v in informative.items()}
    MeanBalancedAccuracy(SCHEMA).on_epoch_end(0, informative)

    constant = _compiled(_constant_model())
    constant.optimizer = keras.optimizers.Adam(0.2)
    best = BestCheckpoint(str(tmp_path / "best.keras"), MONITOR, best=informative[MONITOR])
    history = constant.fit(x, labels, batch_size=60, epochs=25, validation_data=(x, labels), verbose=0,
                           callbacks=[MeanBalancedAccuracy(SCHEMA), best]).history
    # it learnt the prior: every answer is the majority (absent, for the rare tags), and by accuracy it wins ...
    assert history["val_mean_accuracy"][-1] > informative["val_mean_accuracy"]
    # ... but by the monitor it sits exactly at chance (1/C per softmax head, 0.5 per multi-label head)
    chance = np.mean([0.5 if a.is_multi_label else 1 / a.num_classes for a in SCHEMA.attributes])
    assert history[MONITOR][-1] == pytest.approx(chance, abs=1e-6)
    assert max(history[MONITOR]) < informative[MONITOR]
    assert not os.path.exists(tmp_path / "best.keras") and best.best == informative[MONITOR]


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tests.test_trainer_metrics import SCHEMA, _compiled, _data, _passthrough_model
    from trainer.training.loop import Loop

    labels, probs = _data(int(sys.argv[1]))
    x = {f"{k}_in": v for k, v in probs.items()}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _compiled(_passthrough_model())
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(7)  # 40 = 5 * 7 + 5: replicas get 4+3, last 3+2
    loop = Loop(model, strategy, ds.element_spec)
    logs = loop.evaluate(strategy.experimental_distribute_dataset(ds), keras.callbacks.CallbackList([], model=model))
    print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "logs": logs}))
""")


def test_metrics_are_exact_over_two_mirrored_replicas():
    """The counts of both replicas are summed before the ratio: the epoch value equals numpy's on all examples."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", MIRRORED, "3"], capture_output=True, text=True, env=env, cwd=repo,
                          timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    result = json.loads(line[0][len("RESULT "):])
    labels, probs = _data(3)
    expected = eval_metrics.evaluate_arrays(SCHEMA, labels, probs)["heads"]
    assert result["replicas"] == 2
    logs = result["logs"]
    for a in SCHEMA.attributes:
        if a.is_multi_label:
            assert logs[f"val_{a.name}_mA"] == pytest.approx(expected[a.name]["mA"], abs=1e-6)
        else:
            assert logs[f"val_{a.name}_balanced_accuracy"] == pytest.approx(expected[a.name]["balanced_accuracy"],
                                                                            abs=1e-6)
