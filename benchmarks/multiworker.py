"""Multi-worker training on one machine's CPUs: images/s of 1 process vs 2 workers, and what the all-reduce costs.

    python benchmarks/multiworker.py --preset hvc --steps 6 --rounds 2 > multiworker.json

Every variant is a fresh set of processes running the trainer's own pieces (trainer.training.train.compiled_model and
trainer.training.loop.Loop: Keras' train_step under strategy.run, synchronised batch norm) on one synthetic in-memory
batch per replica (the input costs nothing), so the figures are compute + communication. Variants:
- `one_b` / `one_2b`: one process, default strategy, batch b / 2b, TensorFlow's default threads (all cores);
- `two`: two MultiWorkerMirroredStrategy workers (as trainer.launch starts them), per-replica batch b, default
  threads (each process sizes its pools for all cores);
- `two_1thread`: the same with TF_NUM_INTRAOP_THREADS=1 / TF_NUM_INTEROP_THREADS=1 per worker (one core each);
- `two_1thread_nosyncbn`: the same with model.sync_batchnorm=false, to tell the cost of batch norm's per-layer
  all-reduces (two small collectives per BN layer, forward and backward) from the rest.
Per round each variant runs `--steps` timed steps after 2 warm-up steps (tracing excluded); the median step is
kept, rounds are interleaved, the best round wins. Images/s = global batch / median step.

The two-worker variants also measure, inside the same processes after training:
- `allreduce_ms`: one all-reduce of tensors shaped like every trainable variable (the gradient all-reduce);
- `collective_bytes`: bytes entering all-reduce ops in the traced training step (gradients and synchronised
  batch-norm statistics, forward and backward), counted from the graph, plus the same for `--bytes_presets`
  (traced only: e.g. WRN-16-8, too slow to run here).
Prints JSON; docs/performance.md turns it into the table and the N-node projection.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from trainer.launch import free_ports  # noqa: E402
from trainer.training import cluster  # noqa: E402  (no TensorFlow import: the driver stays light)

COLLECTIVES = ("CollectiveReduceV2", "CollectiveReduce", "CollectiveReduceScatterV2")


def _config(preset: str, batch: int, width: int = 0, sync_bn: bool = True):
    from trainer.config_loader import load_config

    overrides = {"train.batch_size": batch, "train.epochs": 1, "augment.enabled": True,
                 "model.sync_batchnorm": sync_bn}
    if width:
        overrides["model.width"] = width
    return load_config(preset).replace(**overrides)


def _synthetic(config, schema, batch: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, config.data.height, config.data.width, 3)).astype("float32")
    y = {a.name: rng.integers(0, a.num_classes, (batch,)).astype("int32") for a in schema.attributes}
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _collective_bytes(graph) -> int:
    """Bytes entering all-reduce ops in `graph` and the functions it calls (cond branches, nested functions)."""
    total = 0
    for op in graph.get_operations():
        if op.type in COLLECTIVES:
            t = op.inputs[0]
            total += (t.shape.num_elements() or 0) * t.dtype.size
    for fn in getattr(graph, "_functions", {}).values():
        if hasattr(fn, "graph"):
            total += _collective_bytes(fn.graph)
    return total


def worker(a) -> dict:
    """One process of a variant (TF_CONFIG set for the two-worker variants)."""

    from tfds_person_attrs.schema import HVC
    from trainer.training import distribute
    from trainer.training.loop import Loop
    from trainer.training.train import compiled_model

    config = _config(a.preset, a.batch, sync_bn=not a.no_sync_bn)
    strategy = distribute.make_strategy(config)
    distribute.set_precision(config)
    replicas = strategy.num_replicas_in_sync

    def measure(cfg, run_steps: bool) -> dict:
        model = compiled_model(cfg, HVC, strategy, steps_per_epoch=1000)
        data = strategy.distribute_datasets_from_function(lambda ctx: _synthetic(cfg, HVC, cfg.train.batch_size))
        loop = Loop(model, strategy, _synthetic(cfg, HVC, 1).element_spec)
        it = iter(data)
        loop.train_step(it)  # trace
        out = {"model": f"WRN-{cfg.model.depth}-{cfg.model.width}",
               "trainable_params": int(sum(v.numpy().size for v in model.trainable_variables)),
               "collective_bytes": _collective_bytes(loop.step_function.get_concrete_function(next(it)).graph)}
        if run_steps:
            float(loop.train_step(it))
            times = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                float(loop.train_step(it))  # float(): wait for the step, not just its dispatch
                times.append(time.perf_counter() - t0)
            out["step_s"] = statistics.median(times)
            out["images_per_s"] = cfg.train.batch_size * replicas / out["step_s"]
            if replicas > 1:
                out["allreduce_ms"] = _allreduce_ms(strategy, model, a.steps)
        return out

    result = {"replicas": replicas, **measure(config, True)}
    if replicas > 1:
        result["bytes_only"] = [measure(_config(a.preset, a.batch, int(w)), False)
                                for w in a.bytes_widths.split(",") if w]
    return result


def _allreduce_ms(strategy, model, reps: int) -> float:
    import tensorflow as tf

    shapes = [tuple(v.shape) for v in model.trainable_variables]

    @tf.function
    def reduce_once():
        def fn():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce("SUM", [tf.ones(s) for s in shapes])

        out = strategy.run(fn)
        return strategy.experimental_local_results(out)[0][0][..., :1]

    reduce_once()
    times = []
    for _ in range(max(5, reps)):
        t0 = time.perf_counter()
        reduce_once().numpy()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _run(cmd, envs) -> list[dict]:
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for env in envs]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a benchmark process failed: {cmd}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def driver(a) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    base["TF_CPP_MIN_LOG_LEVEL"] = "2"
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--preset", a.preset, "--steps", str(a.steps)]
    one_thread = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}

    def two(extra_env, *flags):
        layout = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
        envs = [{**base, **extra_env, "TF_CONFIG": cluster.tf_config(layout, "worker", i)} for i in range(2)]
        return _run([*me, "--batch", str(a.batch), "--bytes_widths", a.bytes_widths, *flags], envs)[0]

    variants = {
        "one_b": lambda: _run([*me, "--batch", str(a.batch)], [base])[0],
        "one_2b": lambda: _run([*me, "--batch", str(2 * a.batch)], [base])[0],
        "two": lambda: two({}),
        "two_1thread": lambda: two(one_thread),
        "two_1thread_nosyncbn": lambda: two(one_thread, "--no_sync_bn", "--bytes_widths", ""),
    }
    rounds = {k: [] for k in variants}
    for r in range(a.rounds):
        for name, fn in variants.items():
            rounds[name].append(fn())
            print(json.dumps({"round": r, name: rounds[name][-1]}), file=sys.stderr, flush=True)
    best = {k: min(v, key=lambda x: x["step_s"]) for k, v in rounds.items()}
    ref = max(best["one_b"]["images_per_s"], best["one_2b"]["images_per_s"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    return {
        "benchmark": "multiworker", "preset": a.preset, "batch_per_replica": a.batch, "steps": a.steps,
        "rounds": a.rounds, "machine": {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version()},
        "best": best,
        "ratio_two_vs_best_one": {k: round(best[k]["images_per_s"] / ref, 3) for k in best if k.startswith("two")},
        "all_rounds_step_s": {k: [round(x["step_s"], 3) for x in v] for k, v in rounds.items()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="hvc")
    p.add_argument("--batch", type=int, default=64, help="per-replica batch b")
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bytes_widths", default="2,8", help="WRN widths whose step is traced for collective bytes")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no_sync_bn", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    print(json.dumps(worker(a) if a.worker else driver(a), indent=None if a.worker else 1), flush=True)


if __name__ == "__main__":
    main()
