"""Input sharding across N workers: images/s one worker delivers to its replica, per tf.data policy.

    python benchmarks/input_sharding.py --data_dir /tmp/bench_data --workers 2 --seconds 8 --rounds 3

One process plays one worker of N (the input pipeline needs no cluster), with one tf.data thread, on the built
real dataset (hvc preset: letterbox crop, 96x48, uncached, so every example is decoded when read):
- `subsplit` (what trainer.input.data does): worker i reads tfds.even_splits(train, N)[i] and decodes only that
  (measured for worker 0 and for the last worker, whose part may start in the middle of a file);
- `data_policy` (tf.data AutoShardPolicy.DATA, what MultiWorkerMirroredStrategy falls back to with fewer
  files than workers): every worker reads and decodes every example and keeps every N-th global-batch slice,
  emulated as the full pipeline at the global batch, sliced to this worker's part;
- `file_policy` needs at least N files per split; the script reports the split's file count and, when it is
  enough, measures it too (each worker reads whole files: tfds ReadConfig with an input context).
Images/s counts the images the worker keeps. Rounds are interleaved, the best round kept. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from trainer.config_loader import load_config  # noqa: E402
from trainer.input.data import builder, dataset_info, example_to_inputs, make_train_dataset  # noqa: E402


def one_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    o = tf.data.Options()
    o.threading.private_threadpool_size = 1
    o.threading.max_intra_op_parallelism = 1
    return ds.with_options(o)


def file_policy(cfg, schema, batch, workers):
    ctx = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=0,
                                     num_replicas_in_sync=workers)
    read = tfds.ReadConfig(input_context=ctx, shuffle_seed=cfg.data.seed)
    ds = builder(cfg.data).as_dataset(split=cfg.data.train_split, shuffle_files=True, read_config=read,
                                      decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.repeat().shuffle(cfg.data.shuffle_buffer, seed=cfg.data.seed)
    return ds.map(lambda ex: example_to_inputs(ex, schema, cfg.data), num_parallel_calls=tf.data.AUTOTUNE).batch(
        batch, drop_remainder=True)


def rate(make, batch: int, seconds: float) -> float:
    it = iter(one_thread(make()))
    next(it)  # start-up outside the timing
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += batch
    return n / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="per-worker batch")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    cfg = load_config(["--config", "hvc", "--data_dir", a.data_dir, "--data.cache=false"])
    schema = dataset_info(cfg.data).schema
    n, b = a.workers, a.batch
    files = len(builder(cfg.data).info.splits[cfg.data.train_split].filenames)
    variants = {
        "subsplit": lambda: make_train_dataset(cfg, b, schema, n, 0),
        # The last worker's part starts mid-file: TFDS skips the records before it (read, not decoded).
        "subsplit_last_worker": lambda: make_train_dataset(cfg, b, schema, n, n - 1),
        # DATA policy keeps this worker's slice of every global batch, after every worker decoded all of it.
        "data_policy": lambda: make_train_dataset(cfg, b * n, schema).map(lambda x, y: (
            x[:b], {k: v[:b] for k, v in y.items()})),
    }
    if files >= n:
        variants["file_policy"] = lambda: file_policy(cfg, schema, b, n)
    rounds = {k: [] for k in variants}
    for _ in range(a.rounds):
        for k, make in variants.items():
            rounds[k].append(rate(make, b, a.seconds))
    best = {k: max(v) for k, v in rounds.items()}
    print(json.dumps({"benchmark": "input_sharding", "workers": n, "batch_per_worker": b, "train_files": files,
                      "images_per_s_kept_by_the_worker": {k: round(v, 1) for k, v in best.items()},
                      "subsplit_over_data_policy": round(best["subsplit"] / best["data_policy"], 2),
                      "all_rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
                      "nproc": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
