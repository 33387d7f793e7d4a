"""How a resumed run finds its place in the training stream: skipping to the example vs tf.data's iterator
checkpoint (docs/architecture.md, "Fault tolerance").

    python benchmarks/resume_input.py --data_dir out/data [--batch 64] [--height 128 --width 64]

- skip: `make_train_dataset(start_example=N)` (what the trainer does): seconds to its first batch for several N;
  the N examples before it are read and shuffled, not decoded.
- iterator checkpoint: `tf.train.Checkpoint(iterator=...)` of the same pipeline after some batches: bytes
  written and seconds to save and to restore (the state holds the shuffle and prefetch buffers).
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from trainer.config_loader import load_config  # noqa: E402
from trainer.input.data import dataset_info, make_train_dataset  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--skips", default="0,10000,100000")
    a = p.parse_args(argv)
    cfg = load_config(["--config", "smoke", "--data_dir", a.data_dir, "--job_dir", "unused"]).replace(
        **{"data.height": a.height, "data.width": a.width})
    schema = dataset_info(cfg.data).schema
    for n in (int(x) for x in a.skips.split(",")):
        start = time.perf_counter()
        next(iter(make_train_dataset(cfg, a.batch, schema, start_example=n)))
        took = round(time.perf_counter() - start, 2)
        print(json.dumps({"method": "skip", "examples_skipped": n, "first_batch_s": took}))
    it = iter(make_train_dataset(cfg, a.batch, schema))
    for _ in range(20):
        next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prefix = ckpt.write(os.path.join(tmp, "it"))
        saved = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        fresh = iter(make_train_dataset(cfg, a.batch, schema))
        start = time.perf_counter()
        tf.train.Checkpoint(iterator=fresh).read(prefix).assert_consumed()
        next(fresh)
        print(json.dumps({"method": "iterator_checkpoint", "bytes": size, "save_s": round(saved, 2),
                          "restore_and_first_batch_s": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    main()
