"""End-to-end training epoch on the real data, this machine's CPUs: wall time and where it goes.

    KERAS_BACKEND=tensorflow python benchmarks/epoch_time.py --data_dir /tmp/bench_data \
        --presets smoke,hvc --steps smoke=60,hvc=8 --rounds 2

Per preset, the trainer's own pieces as trainer/training/train.py wires them (make_train_dataset, build_model,
make_losses, head_metrics, ScheduledSGD, default strategy; no validation, checkpoints or export), timed
three ways, interleaved round by round, best round kept:
- together: model.fit on make_train_dataset (what a training epoch does);
- input alone: iterating make_train_dataset, nothing else;
- compute alone: model.fit on one batch of it, cached and repeated (no decoding).
Only `--steps` steps are timed (a full hvc epoch takes minutes on 2 cores); the epoch is EXTRAPOLATED as
step time x steps per epoch (train examples // batch), and the JSON says so. Prints JSON.
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
import tensorflow as tf  # noqa: E402

from trainer.config_loader import load_config  # noqa: E402
from trainer.input.data import dataset_info, make_train_dataset  # noqa: E402
from trainer.model.network import build_model  # noqa: E402
from trainer.objective.losses import make_losses  # noqa: E402
from trainer.objective.metrics import head_metrics  # noqa: E402
from trainer.optim.schedules import make_optimizer, make_schedule  # noqa: E402
from trainer.training import distribute  # noqa: E402


class StepTimes(keras.callbacks.Callback):
    """Per-step wall times inside fit, so fit's own start-up (tracing, iterator creation) is left out."""

    def on_train_begin(self, logs=None):
        self.times, self.t = [], None

    def on_train_batch_begin(self, batch, logs=None):
        self.t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.t)


def per_step_fit(model, ds, steps) -> float:
    cb = StepTimes()
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[cb])
    # Wall time over the steps (fit start-up excluded by skipping the first step's share): what an epoch pays.
    return (time.perf_counter() - t0 - cb.times[0]) / max(1, steps - 1)


def per_step_input(it, steps) -> float:
    next(it)
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        next(it)
    return (time.perf_counter() - t0) / max(1, steps - 1)


def run_preset(preset, data_dir, steps, rounds):
    cfg = load_config(["--config", preset, "--data_dir", data_dir])
    info = dataset_info(cfg.data)
    schema = info.schema
    batch = distribute.global_batch_size(cfg, 1)
    n_train = info.num_examples[cfg.data.train_split]
    steps_per_epoch = n_train // batch  # train.steps_per_epoch=0: one pass over the train split
    keras.utils.set_random_seed(cfg.train.seed)
    distribute.set_precision(cfg)
    model = build_model(schema, cfg)
    schedule = make_schedule(cfg.optim, steps_per_epoch * cfg.train.epochs, steps_per_epoch)
    losses, weights = make_losses(schema, cfg.loss, info.class_counts.get(cfg.data.train_split))
    model.compile(optimizer=make_optimizer(cfg.optim, schedule), loss=losses, loss_weights=weights,
                  metrics=head_metrics(schema), jit_compile=distribute.jit_compile(cfg))
    train_ds = make_train_dataset(cfg, batch, schema)
    one_batch = train_ds.take(1).cache().repeat()
    input_it = iter(make_train_dataset(cfg, batch, schema))
    model.fit(one_batch, steps_per_epoch=2, epochs=1, verbose=0)  # trace outside the timing
    t = {"together": [], "input_alone": [], "compute_alone": []}
    for _ in range(rounds):
        t["input_alone"].append(per_step_input(input_it, steps))
        t["compute_alone"].append(per_step_fit(model, one_batch, steps))
        t["together"].append(per_step_fit(model, train_ds, steps))
    best = {k: min(v) for k, v in t.items()}
    return {
        "model": f"WRN-{cfg.model.depth}-{cfg.model.width}", "input": [cfg.data.height, cfg.data.width],
        "batch": batch, "train_examples": n_train, "steps_per_epoch": steps_per_epoch, "timed_steps": steps,
        "jit_compile_effective": bool(getattr(model, "jit_compile", None)),
        "step_ms": {k: round(v * 1e3, 1) for k, v in best.items()},
        "images_per_s": {k: round(batch / v, 1) for k, v in best.items()},
        "epoch_s_extrapolated": {k: round(v * steps_per_epoch, 1) for k, v in best.items()},
        "input_share_of_together": round(best["input_alone"] / best["together"], 3),
        "together_over_compute": round(best["together"] / best["compute_alone"], 3),
        "all_rounds_ms": {k: [round(x * 1e3, 1) for x in v] for k, v in t.items()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="/tmp/bench_data", help="holds person_attrs/hvc/1.0.0")
    p.add_argument("--presets", default="smoke,hvc")
    p.add_argument("--steps", default="smoke=60,hvc=8", help="timed steps per round, per preset")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    steps = {k: int(v) for k, v in (kv.split("=") for kv in a.steps.split(","))}
    results = {}
    for preset in a.presets.split(","):
        results[preset] = run_preset(preset, a.data_dir, steps.get(preset, 10), a.rounds)
        print(json.dumps({preset: results[preset]}), file=sys.stderr, flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    out = {"benchmark": "epoch_time", "extrapolated": "epoch = best step time x steps_per_epoch",
           "machine": {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
                       "tensorflow": tf.__version__, "keras": keras.__version__}, "results": results}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
