"""Training step on CPU, TensorFlow backend: MirroredStrategy on one device vs the default strategy.

    KERAS_BACKEND=tensorflow python benchmarks/strategy_overhead.py --presets smoke,hvc --steps 20 --rounds 3

For each preset, three models built and compiled exactly as trainer/training/train.py does (build_model, make_losses,
head_metrics, ScheduledSGD, distribute.jit_compile) under: the default strategy, `distribute.make_strategy`
with strategy=mirrored (one CPU device), and the same with model.sync_batchnorm=false (to isolate the
synchronised-BN all-reduces from the strategy's own per-step cost). Each is driven by model.fit on a
synthetic in-memory batch (input costs nothing), `--steps` per round; rounds are interleaved and the best
kept (per round: the median step, timed by a callback around each step, so fit's start-up is excluded).
Overhead % = mirrored step time / default step time - 1. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfds_person_attrs.schema import HVC  # noqa: E402
from trainer.config_loader import load_config  # noqa: E402
from trainer.model.network import build_model  # noqa: E402
from trainer.objective.losses import make_losses  # noqa: E402
from trainer.objective.metrics import head_metrics  # noqa: E402
from trainer.optim.schedules import make_optimizer, make_schedule  # noqa: E402
from trainer.training import distribute  # noqa: E402


def compiled(config, strategy):
    """The model as trainer.training.train.run builds it inside `strategy.scope()`."""
    with strategy.scope():
        model = build_model(HVC, config)
        schedule = make_schedule(config.optim, 10_000, 100, distribute.lr_scale(config, 1))
        losses, weights = make_losses(HVC, config.loss)
        model.compile(optimizer=make_optimizer(config.optim, schedule), loss=losses, loss_weights=weights,
                      metrics=head_metrics(HVC), jit_compile=distribute.jit_compile(config))
    return model


class StepTimes(keras.callbacks.Callback):
    """Wall time of each step inside fit: fit's per-call start-up (distributing the dataset, building the
    iterator) is not a per-step cost, and under a strategy it is large enough to swamp short runs."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.t)


def synthetic(config, batch):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, config.data.height, config.data.width, 3)).astype("float32")
    y = {a.name: rng.integers(0, a.num_classes, (batch,)).astype("int32") for a in HVC.attributes}
    return tf.data.Dataset.from_tensors((x, y)).repeat()  # one batch in memory, repeated: no input cost


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="smoke,hvc")
    p.add_argument("--steps", type=int, default=20, help="fit steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hvc_batch", type=int, default=0, help="override the hvc preset's batch (0 = preset's)")
    a = p.parse_args(argv)
    results = {}
    for preset in a.presets.split(","):
        cfg = load_config(preset)
        if preset == "hvc" and a.hvc_batch:
            cfg = cfg.replace(**{"train.batch_size": a.hvc_batch})
        batch = cfg.train.batch_size
        mirrored_cfg = cfg.replace(**{"distribute.strategy": "mirrored"})
        variants = {
            "default": (cfg, tf.distribute.get_strategy()),
            "mirrored_1dev": (mirrored_cfg, distribute.make_strategy(mirrored_cfg)),
            "mirrored_1dev_no_syncbn": (mirrored_cfg.replace(**{"model.sync_batchnorm": False}),
                                        distribute.make_strategy(mirrored_cfg)),
        }
        models = {k: compiled(c, s) for k, (c, s) in variants.items()}
        ds = synthetic(cfg, batch)
        for m in models.values():  # trace + first steps outside the timing
            m.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
        times = {k: [] for k in models}
        for _ in range(a.rounds):
            for k, m in models.items():
                cb = StepTimes()
                m.fit(ds, steps_per_epoch=a.steps, epochs=1, verbose=0, callbacks=[cb])
                times[k].append(float(np.median(cb.times)))  # median step: robust to the shared cores
        best = {k: min(v) for k, v in times.items()}
        results[preset] = {
            "batch": batch, "input": [cfg.data.height, cfg.data.width],
            "model": f"WRN-{cfg.model.depth}-{cfg.model.width}",
            "replicas": {k: variants[k][1].num_replicas_in_sync for k in variants},
            "step_ms": {k: round(v * 1e3, 2) for k, v in best.items()},
            "overhead_pct": {k: round((v / best["default"] - 1) * 100, 1) for k, v in best.items() if k != "default"},
            "all_rounds_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
        }
        print(json.dumps({preset: results[preset]}), file=sys.stderr, flush=True)
    out = {"benchmark": "strategy_overhead", "backend": keras.backend.backend(), "tensorflow": tf.__version__,
           "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
           "steps": a.steps, "rounds": a.rounds, "results": results}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
