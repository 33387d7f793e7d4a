"""One process: the trainer's loop (trainer.training.loop.Loop) against Keras' `model.fit`, same model, same step.

    python benchmarks/loop_vs_fit.py --presets smoke,hvc --steps smoke=40,hvc=6 --rounds 3

The loop replaced fit because fit cannot run under MultiWorkerMirroredStrategy (docs/architecture.md); this
checks it costs nothing where fit does run. Both drive the same compiled model (trainer.training.train.compiled_model,
default strategy) on one synthetic in-memory batch repeated (no input cost). Per round each variant runs
`steps` steps and keeps the median step (timed around each step, so fit's per-call start-up is excluded);
rounds are interleaved and the best round wins. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from strategy_overhead import StepTimes, synthetic  # noqa: E402  (a sibling script: same batch, same timer)
from tfds_person_attrs.schema import HVC  # noqa: E402
from trainer.config_loader import load_config  # noqa: E402
from trainer.training.loop import Loop  # noqa: E402
from trainer.training.train import compiled_model  # noqa: E402


def fit_step_s(model, ds, steps) -> float:
    cb = StepTimes()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[cb])
    return statistics.median(cb.times)


def loop_step_s(loop, iterator, steps) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        float(loop.train_step(iterator))  # as in the loop: the loss is read every step (the non-finite guard)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="smoke,hvc")
    p.add_argument("--steps", default="smoke=40,hvc=6")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    steps = {k: int(v) for k, v in (kv.split("=") for kv in a.steps.split(","))}
    strategy = tf.distribute.get_strategy()
    results = {}
    for preset in a.presets.split(","):
        cfg = load_config(preset)
        n, batch = steps.get(preset, 10), cfg.train.batch_size
        ds = synthetic(cfg, batch)
        fit_model = compiled_model(cfg, HVC, strategy, steps_per_epoch=1000)
        loop = Loop(compiled_model(cfg, HVC, strategy, steps_per_epoch=1000), strategy, synthetic(cfg, 1).element_spec)
        iterator = iter(ds)
        fit_model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace outside the timing
        loop.train_step(iterator)
        t = {"fit": [], "loop": []}
        for _ in range(a.rounds):
            t["fit"].append(fit_step_s(fit_model, ds, n))
            t["loop"].append(loop_step_s(loop, iterator, n))
        best = {k: min(v) for k, v in t.items()}
        results[preset] = {"batch": batch, "model": f"WRN-{cfg.model.depth}-{cfg.model.width}",
                           "jit_compile": {"fit": bool(fit_model.jit_compile), "loop": bool(loop.model.jit_compile)},
                           "step_ms": {k: round(1e3 * v, 1) for k, v in best.items()},
                           "loop_over_fit": round(best["loop"] / best["fit"], 3),
                           "all_rounds_ms": {k: [round(1e3 * x, 1) for x in v] for k, v in t.items()}}
        print(json.dumps({preset: results[preset]}), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "loop_vs_fit", "tensorflow": tf.__version__, "keras": keras.__version__,
                      "nproc": os.cpu_count(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
