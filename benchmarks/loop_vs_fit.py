"""Images/s of the trainer's loop (trainer.training.loop.Loop) at N steps per compiled call, against Keras'
`model.fit(steps_per_execution=N)` in one process, and the loop's N values with two workers.

    python benchmarks/loop_vs_fit.py --n 1,8,32 --steps 160 --rounds 3 --repeats 2 > loop_vs_fit.json

The loop replaced fit because fit cannot run under MultiWorkerMirroredStrategy (docs/architecture.md), so the
two-worker part compares the loop with itself. The model is the smoke preset at --size (default 32x16: WRN-10-1,
batch 8, a step of a few ms), small enough that what a step costs the host (dispatch, reading the loss) shows.
Every variant drives a model built by trainer.training.train.compiled_model on one synthetic in-memory batch per
replica, repeated (the input costs nothing). Timing: a timestamp at every loop boundary once the loss is read (the
loop reads it there; for fit a callback reads `logs["loss"]`, as a progress bar does); images/s = global batch x
the steps between the first and the last boundary / the time between them, so tracing, fit's per-call start-up
and the first loop are left out. Each repeat: one fresh process measures every one-process variant --rounds
times, interleaved, then two workers started by `python -m trainer.launch --workers 2` measure the loop's N values
the same way (TensorFlow's default threads in every process, as the launcher leaves them). Medians over all
rounds of all repeats. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _config(a):
    from trainer.config_loader import load_config

    height, width = (int(v) for v in a.size.split("x"))
    return load_config("smoke").replace(**{"data.height": height, "data.width": width, "train.batch_size": a.batch})


def _timed(run_loop, steps: int, n: int) -> float:
    """Seconds per step between the first and the last loop boundary; run_loop(n) runs n steps, reads the loss."""
    stamps = []
    for _ in range(steps // n):
        run_loop(n)
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / (n * (len(stamps) - 1))


def worker(a) -> dict:
    """Measures in this process (under TF_CONFIG: one of the two workers); returns seconds per step per variant."""
    import keras
    import tensorflow as tf

    from strategy_overhead import synthetic  # a sibling script: the same in-memory batch
    from tfds_person_attrs.schema import HVC
    from trainer.training import distribute
    from trainer.training.loop import Loop
    from trainer.training.train import compiled_model

    cfg = _config(a)
    strategy = distribute.make_strategy(cfg)
    ns = [int(n) for n in a.n.split(",")]
    data = strategy.distribute_datasets_from_function(lambda ctx: synthetic(cfg, cfg.train.batch_size))
    loop = Loop(compiled_model(cfg, HVC, strategy, steps_per_epoch=1000), strategy, synthetic(cfg, 1).element_spec)
    iterator = iter(data)
    lengths = {n: tf.constant(n) for n in ns}

    def loop_steps(steps, n):
        return _timed(lambda k: float(loop.train_steps(iterator, lengths[k])), steps, n)

    variants = {f"loop_{n}": (n, loop_steps) for n in ns}
    if a.fit:
        stamps: list[float] = []

        class ReadLoss(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])
                stamps.append(time.perf_counter())

        fit_ds = synthetic(cfg, cfg.train.batch_size)
        models = {}
        for n in ns:
            models[n] = compiled_model(cfg, HVC, strategy, steps_per_epoch=1000)
            models[n].steps_per_execution = n  # what compile(steps_per_execution=n) sets; read when fit traces

        def fit_steps(steps, n):
            stamps.clear()
            models[n].fit(fit_ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[ReadLoss()])
            return (stamps[-1] - stamps[0]) / (n * (len(stamps) - 1))

        variants.update({f"fit_{n}": (n, fit_steps) for n in ns})
    for n, fn in variants.values():  # tracing and the first steps, untimed
        fn(3 * n, n)
    times = {name: [] for name in variants}
    for _ in range(a.rounds):
        for name, (n, fn) in variants.items():
            times[name].append(fn(max(a.steps, 3 * n) // n * n, n))
    replicas = strategy.num_replicas_in_sync
    return {"replicas": replicas, "global_batch": cfg.train.batch_size * replicas, "step_s": times}


def _last_json(text: str, prefix: str = "") -> dict:
    lines = [ln[len(prefix):] for ln in text.splitlines() if ln.startswith(prefix + "{")]
    return json.loads(lines[-1])


def driver(a) -> dict:
    me = ["--n", a.n, "--steps", str(a.steps), "--rounds", str(a.rounds), "--size", a.size, "--batch", str(a.batch)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "benchmarks"), env.get("PYTHONPATH", "")])
    one_cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--fit", *me]
    two_cmd = [sys.executable, "-m", "trainer.launch", "--workers", "2", "--module", "benchmarks.loop_vs_fit", "--",
               "--worker", *me]
    runs = {"one_process": [], "two_workers": []}
    for r in range(a.repeats):
        for name, cmd in (("one_process", one_cmd), ("two_workers", two_cmd)):
            loads = os.getloadavg()[0]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            out = _last_json(proc.stdout, "[chief:0] " if name == "two_workers" else "")
            out["load_before"] = round(loads, 1)
            runs[name].append(out)
            print(json.dumps({"repeat": r, name: out}), file=sys.stderr, flush=True)

    def summary(results):
        batch = results[0]["global_batch"]
        step_s = {k: [t for res in results for t in res["step_s"][k]] for k in results[0]["step_s"]}
        ips = {k: round(batch / statistics.median(v), 1) for k, v in step_s.items()}
        return {"global_batch": batch, "images_per_s_median": ips,
                "images_per_s_rounds": {k: [round(batch / t, 1) for t in v] for k, v in step_s.items()},
                "load_before_each_repeat": [res["load_before"] for res in results]}

    one, two = summary(runs["one_process"]), summary(runs["two_workers"])
    ns = a.n.split(",")
    one_ips, two_ips = one["images_per_s_median"], two["images_per_s_median"]
    one["loop_over_fit"] = {n: round(one_ips[f"loop_{n}"] / one_ips[f"fit_{n}"], 3) for n in ns}
    two["over_loop_1"] = {n: round(two_ips[f"loop_{n}"] / two_ips["loop_1"], 3) for n in ns}
    import keras  # only for the versions: the measuring processes have their own
    import tensorflow as tf

    return {"benchmark": "loop_vs_fit", "preset": "smoke", "size": a.size, "batch_per_replica": a.batch,
            "steps": a.steps, "rounds": a.rounds, "repeats": a.repeats, "tensorflow": tf.__version__,
            "keras": keras.__version__, "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
            "one_process": one, "two_workers": two}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", default="1,8,32", help="steps per loop / steps_per_execution values")
    p.add_argument("--steps", type=int, default=160, help="timed steps per variant and round (rounded to N)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per process, variants interleaved")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes: one process, then two workers")
    p.add_argument("--size", default="32x16", help="input HxW")
    p.add_argument("--batch", type=int, default=8, help="per-replica batch")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fit", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        sys.path.insert(0, os.path.join(REPO, "benchmarks"))
        result = worker(a)
        print(json.dumps(result), flush=True)
    else:
        print(json.dumps(driver(a), indent=1))


if __name__ == "__main__":
    main()
