"""The model, augmentation, schedule, loss and metric code runs under KERAS_BACKEND=jax without TensorFlow.

A fresh interpreter (the backend is fixed at Keras import) builds the project's model for the HVC schema,
compiles it with the project's losses, one-cycle SGD and per-head metrics, trains two epochs on random data,
trains one step of the separable-convolution backbone with a backbone learning-rate multiplier and the weights'
moving average (Keras' use_ema), mixes a batch of every head with MixUp and CutMix and takes its loss, and reports
whether anything imported TensorFlow.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, keras
    from tfds_person_attrs.schema import HVC
    from trainer.config_loader import load_config
    from trainer.objective.losses import make_losses
    from trainer.objective.metrics import head_metrics
    from trainer.model.network import build_model
    from trainer.optim.schedules import make_optimizer, make_schedule

    cfg = load_config(["--config", "smoke"])
    model = build_model(HVC, cfg)
    losses, weights = make_losses(HVC, cfg.loss, {a.name: [5] * a.num_classes for a in HVC.attributes})
    model.compile(optimizer=make_optimizer(cfg.optim, make_schedule(cfg.optim, 4, 2, 1.0)), loss=losses,
                  loss_weights=weights, metrics=head_metrics(HVC))
    x = np.random.default_rng(0).uniform(0, 255, (16, cfg.data.height, cfg.data.width, 3)).astype("float32")
    y = {a.name: np.arange(16) % a.num_classes for a in HVC.attributes}
    h = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    out = model.predict(x[:2], verbose=0)
    # Another backbone (trainer.model.backbones), with the backbone learning-rate multiplier of the optimizer.
    sep = load_config(["--config", "smoke", "--model.backbone=sepconv", "--data.height=32", "--data.width=32",
                       "--optim.ema=0.9"])
    net = build_model(HVC, sep)
    net.compile(optimizer=make_optimizer(sep.optim, make_schedule(sep.optim, 4, 2, 1.0),
                                         net.get_layer("backbone").trainable_variables, 0.5),
                loss=losses, loss_weights=weights)
    x32 = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    # train_on_batch: fit would end by copying the average into the weights (Keras' finalize_variable_values)
    sep_loss = [float(net.train_on_batch(x32, {k: v[:8] for k, v in y.items()}, return_dict=True)["loss"])
                for _ in range(2)][-1:]
    from trainer.model.augment import LabelMixing
    from trainer.optim.ema import ema_weights
    with ema_weights(net):
        averaged = [np.array(w) for w in net.get_weights()]
    ema_moved = max(float(np.abs(a - b).max()) for a, b in zip(averaged, net.get_weights()))
    mx, my_ = LabelMixing(HVC, mixup=0.4, cutmix=1.0, seed=1)(x, y)
    mixed_loss = float(sum(losses[k](my_[k], out_k) for k, out_k in model(mx).items()))
    # One layer that opts out of XLA (e.g. keras.layers.RandomTranslation) switches it off for the whole model.
    # a multi-label head: the weighted BCE and the mA / mAP / balanced-accuracy metrics
    from tests.trainer_fixtures import MULTI_SCHEMA
    mcfg = load_config(["--config", "smoke", "--loss.multi_label_loss=weighted_bce"])
    m = build_model(MULTI_SCHEMA, mcfg)
    mlosses, mweights = make_losses(MULTI_SCHEMA, mcfg.loss, {"gender": [8, 8], "clothes": [4, 8, 2]}, 16)
    m.compile(optimizer="sgd", loss=mlosses, loss_weights=mweights, metrics=head_metrics(MULTI_SCHEMA))
    my = {"gender": np.arange(16) % 2, "clothes": (np.arange(48).reshape(16, 3) % 3 == 0).astype("float32")}
    multi = m.fit(x, my, batch_size=8, epochs=1, verbose=0).history
    jit = {}
    for preset in ("smoke", "hvc"):
        m = build_model(HVC, load_config(["--config", preset]))
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile="auto")
        jit[preset] = bool(m.jit_compile)
    print("RESULT " + json.dumps({"backend": keras.backend.backend(),
                                  "loss": h.history["loss"] + sep_loss + [mixed_loss],
                                  "jit": jit, "ema_moved": ema_moved, "mixed_age": list(my_["age"].shape),
                                  "shapes": {k: list(v.shape) for k, v in out.items()},
                                  "tensorflow_imported": "tensorflow" in sys.modules,
                                  "multi": {k: v[-1] for k, v in multi.items()}}))
""")


def test_model_trains_under_jax_without_tensorflow():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=root,
                          timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    r = json.loads(line[0][len("RESULT "):])
    assert r["backend"] == "jax" and not r["tensorflow_imported"]
    assert len(r["loss"]) == 4 and all(v == v and v < 100 for v in r["loss"])  # finite
    assert r["ema_moved"] > 0 and r["mixed_age"] == [16, 5]
    assert r["shapes"]["age"] == [2, 5] and r["shapes"]["gender"] == [2, 2]
    assert r["jit"] == {"smoke": True, "hvc": True}
    multi = r["multi"]
    assert {"clothes_mA", "clothes_mAP", "gender_balanced_accuracy", "gender_accuracy"} <= set(multi)
    assert 0 <= multi["clothes_mA"] <= 1 and multi["loss"] == multi["loss"]
