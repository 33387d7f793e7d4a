"""Input pipeline, CPU, images per core-second: the trainer's tf.data pipeline vs the JPEG limit vs old Keras.

    make -C benchmarks bench-baseline   # once: benchmarks/.venv-baseline (project + tf_keras + OpenCV)
    benchmarks/.venv-baseline/bin/python benchmarks/input_pipeline.py --data_dir /tmp/bench_data \
        --zip /work/shared/data/hvc_data.zip --threads 1 --rounds 3

Variants, interleaved round by round in this one process (best round kept), all on the built train split:
- project_crop / project_nocrop: `trainer.input.data.make_train_dataset` (read, shuffle, one decode, letterbox crop
  or not, area resize to the preset's size, batch; augmentation is in the model, so not here);
  project_crop_cached: the same with `data.cache=true` (the decoded split kept in RAM as uint8), steady state
  from epoch 2 on;
- raw_decode (a): `tf.io.decode_jpeg` over the same JPEG bytes already in memory, same tf.data threads;
- old_keras (b): a `tf_keras.utils.Sequence` reading each batch's files with cv2.imread and augmenting with
  `ImageDataGenerator` (shift 0.1, shear 0.15, flip) -- needs .venv-baseline, skipped elsewhere;
- stage_*: pieces of the letterbox decode alone over in-memory bytes (where project_crop's time goes);
- fix_*: make_train_dataset's structure with one change each, candidates not yet adopted (the band stored
  at build time; uint8 output with the resize moved to the accelerator).
"Per core" = images / process CPU seconds (all threads): other engineers share the 2 cores, so wall time is
noisy while CPU time is not. Wall images/s are printed too. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: trainer/
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from trainer.config_loader import load_config  # noqa: E402
from trainer.input.data import builder, dataset_info, make_train_dataset  # noqa: E402
from trainer.input.preprocess_ops import person_band  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # user + system over every thread of this process
    return r.ru_utime + r.ru_stime


def with_threads(ds: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    # The same thread budget for every tf.data variant: a private pool of `threads`, no intra-op fan-out.
    o = tf.data.Options()
    o.threading.private_threadpool_size = threads
    o.threading.max_intra_op_parallelism = 1
    o.autotune.cpu_budget = threads
    return ds.with_options(o)


def measure(batches, batch: int, seconds: float, warmup: int = 3) -> dict:
    """Pulls batches for `seconds` after `warmup` batches; images per wall second and per CPU second."""
    for _ in range(warmup):  # fills shuffle buffers and the autotuner's first guesses
        next(batches)
    n, t0, c0 = 0, time.perf_counter(), cpu_s()
    while time.perf_counter() - t0 < seconds:
        next(batches)
        n += batch
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    return {"images": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / max(cpu, 1e-9), 1)}


def in_memory(jpegs: tf.Tensor, fn, batch: int, threads: int):
    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    return iter(with_threads(ds.batch(batch).prefetch(2), threads))


def area_resize(img, h: int, w: int):
    # Box filter: antialiased for these 1.5-1.8x shrinks, no overshoot, ~3x cheaper than bilinear+antialias.
    return tf.ensure_shape(tf.clip_by_value(tf.image.resize(img, (h, w), method="area"), 0.0, 255.0), (h, w, 3))


def crop_decode(jpeg, x, bw):
    h = tf.io.extract_jpeg_shape(jpeg)[0]
    return tf.io.decode_and_crop_jpeg(jpeg, tf.stack([0, x, h, bw]), channels=3, dct_method="INTEGER_ACCURATE")


def fixed_pipeline(cfg, schema, batch: int, threads: int, decode_fn):
    """make_train_dataset's structure (read, repeat, shuffle, map, batch) with another decode: fix candidates."""
    d = cfg.data
    ds = builder(d).as_dataset(split=d.train_split, shuffle_files=True, decoders={"image": tfds.decode.SkipDecoding()},
                               read_config=tfds.ReadConfig(interleave_cycle_length=d.cycle_length,
                                                           shuffle_seed=d.seed))
    ds = ds.repeat().shuffle(d.shuffle_buffer, seed=d.seed)
    labels = lambda ex: {a.name: tf.cast(ex[a.name], tf.float32 if a.is_multi_label else tf.int32)  # noqa: E731
                         for a in schema.attributes}
    ds = ds.map(lambda ex: (decode_fn(ex), labels(ex)), num_parallel_calls=tf.data.AUTOTUNE)
    return iter(with_threads(ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE), threads))


def old_keras_loader(files: list[str], batch: int):
    """The loader of Keras-2-era notebooks for this data: Sequence + cv2.imread + ImageDataGenerator.flow."""
    import cv2
    import tf_keras

    class PersonSequence(tf_keras.utils.Sequence):
        def __init__(self):
            super().__init__()
            self.aug = tf_keras.preprocessing.image.ImageDataGenerator(
                width_shift_range=0.1, height_shift_range=0.1, shear_range=0.15, horizontal_flip=True)

        def __len__(self):
            return len(files) // batch

        def __getitem__(self, i):
            images = np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
                               for p in files[i * batch:(i + 1) * batch]])
            return self.aug.flow(images, batch_size=len(images), shuffle=False).next()

    seq = PersonSequence()

    def forever():
        while True:
            for i in range(len(seq)):
                yield seq[i]
    return forever()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="/tmp/bench_data", help="holds person_attrs/hvc/1.0.0")
    p.add_argument("--zip", default="", help="hvc_data.zip, for the old-Keras loader's JPEG files")
    p.add_argument("--preset", default="hvc")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="tf.data threads (per-core figures use CPU time)")
    p.add_argument("--seconds", type=float, default=6.0, help="per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no_diag", action="store_true", help="skip the stage_* and fix_* variants")
    a = p.parse_args(argv)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, a.threads))
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)

    cfg = load_config(["--config", a.preset, "--data_dir", a.data_dir])
    d = cfg.data
    h, w = d.height, d.width
    # Decoded every epoch (what the targets compare); the cache is measured on its own as project_crop_cached.
    cfg = cfg.replace(**{"data.cache": False})
    nocrop = cfg.replace(**{"data.letterbox_crop": False})
    # The same bytes the pipeline reads, held in memory for the raw limit and the diagnostics.
    raw = builder(d).as_dataset(split=d.train_split, decoders={"image": tfds.decode.SkipDecoding()})
    ids, blobs = [], []
    for ex in raw.as_numpy_iterator():
        ids.append(ex["id"].decode())
        blobs.append(ex["image"])
    jpegs = tf.constant(blobs)
    schema = dataset_info(d).schema
    def band_of(jpeg):  # (x, width)
        return tf.stack(person_band(tf.io.decode_jpeg(jpeg, channels=3), d.letterbox_threshold))

    bands = tf.concat(list(tf.data.Dataset.from_tensor_slices(jpegs).map(band_of).batch(1024)), 0)  # [N, 2]

    variants = {
        "project_crop": lambda: iter(with_threads(make_train_dataset(cfg, a.batch), a.threads)),
        "project_nocrop": lambda: iter(with_threads(make_train_dataset(nocrop, a.batch), a.threads)),
        "project_crop_dct_scaled": lambda: iter(with_threads(make_train_dataset(
            cfg.replace(**{"data.dct_scaling": True}), a.batch), a.threads)),
        "raw_decode": lambda: in_memory(jpegs, lambda j: tf.io.decode_jpeg(j, channels=3), a.batch, a.threads),
        # Steady state from epoch 2 on: measure() skips one epoch first for this one (it fills the cache).
        "project_crop_cached": lambda: iter(with_threads(make_train_dataset(
            cfg.replace(**{"data.cache": True}), a.batch), a.threads)),
    }
    if not a.no_diag:
        # Stage costs over in-memory bytes (which stage of the image decoder costs what) ...
        def with_band(fn):
            return lambda i: fn(tf.gather(jpegs, i), bands[i, 0], bands[i, 1])
        band_ds = lambda fn: iter(with_threads(  # noqa: E731
            tf.data.Dataset.range(len(ids)).repeat().map(with_band(fn), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(a.batch).prefetch(2), a.threads))
        resize_aa = lambda im: tf.image.resize(im, (h, w), method="bilinear", antialias=True)  # noqa: E731
        variants.update({
            "stage_decode_person_band": lambda: in_memory(jpegs, band_of, a.batch, a.threads),
            "stage_crop_decode": lambda: band_ds(lambda j, x, bw: tf.shape(crop_decode(j, x, bw))),
            "stage_crop_decode_resize_aa": lambda: band_ds(lambda j, x, bw: resize_aa(crop_decode(j, x, bw))),
            "stage_crop_decode_resize_area": lambda: band_ds(lambda j, x, bw: area_resize(crop_decode(j, x, bw),
                                                                                          h, w)),
        })
        # ... and whole pipelines with one change each (the same read/shuffle/batch as make_train_dataset).
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids), bands[:, 0] * 4096 + bands[:, 1]), -1)  # the band, as if the build stored it

        def stored_band(ex):
            v = table.lookup(ex["id"])
            return v // 4096, v % 4096

        def device_resize(ex):  # uint8 band padded to 224 px; crop-resize would run on the accelerator
            return tf.image.pad_to_bounding_box(crop_decode(ex["image"], *stored_band(ex)), 0, 0, 224, 224)
        fix = lambda fn: (lambda: fixed_pipeline(cfg, schema, a.batch, a.threads, fn))  # noqa: E731
        variants.update({
            "fix_stored_band_area": fix(lambda ex: area_resize(crop_decode(ex["image"], *stored_band(ex)), h, w)),
            "fix_stored_band_uint8_device_resize": fix(device_resize),
        })
    tmp = None
    try:
        import cv2  # noqa: F401
        import tf_keras  # noqa: F401
        if not a.zip:
            raise ImportError("--zip not given")
        tmp = tempfile.TemporaryDirectory(prefix="hvc_jpegs_")
        with zipfile.ZipFile(a.zip) as z:  # all 7,000 files; the loader reads the train split's
            z.extractall(tmp.name, [n for n in z.namelist() if n.lower().endswith(".jpg")])
        files = [os.path.join(tmp.name, i) for i in ids]
        cv2.setNumThreads(1)
        variants["old_keras"] = lambda: old_keras_loader(files, a.batch)
        skipped = None
    except ImportError as e:
        skipped = f"old_keras skipped ({e}): run it in benchmarks/.venv-baseline (make -C benchmarks bench-baseline)"

    its = {k: make() for k, make in variants.items()}  # built once; each round resumes where it stopped
    rounds: dict[str, list] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for k, it in its.items():
            # old_keras is ~20x slower: a shorter slice keeps the run short without changing its rate.
            warm = {"old_keras": 1, "project_crop_cached": len(ids) // a.batch + 3}.get(k, 3) if not rounds[k] else 1
            rounds[k].append(measure(it, a.batch, a.seconds, warmup=warm))
    best = {k: max(v, key=lambda r: r["images_per_cpu_s"]) for k, v in rounds.items()}
    per_core = {k: v["images_per_cpu_s"] for k, v in best.items()}
    ratio = lambda x, y: round(per_core[x] / per_core[y], 3) if x in per_core and y in per_core else None  # noqa
    out = {
        "benchmark": "input_pipeline", "preset": a.preset, "output_size": [h, w], "batch": a.batch,
        "threads": a.threads, "rounds": a.rounds, "seconds_per_round": a.seconds, "train_images": len(ids),
        "machine": {"nproc": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                    "tensorflow": tf.__version__},
        "images_per_core_s": per_core,
        "images_per_wall_s": {k: v["images_per_s"] for k, v in best.items()},
        "vs_raw_decode": {k: ratio(k, "raw_decode") for k in per_core if k.startswith(("project", "fix"))},
        "vs_old_keras": {k: ratio(k, "old_keras") for k in per_core if k.startswith(("project", "fix"))},
        "targets": {"project >= 0.9 x raw_decode": "project_nocrop/raw_decode",
                    "project >= 15 x old_keras": "project_crop/old_keras",
                    "with letterbox crop > raw_decode": "project_crop/raw_decode"},
        "all_rounds": rounds,
    }
    if skipped:
        out["note"] = skipped
    if tmp:
        tmp.cleanup()
    print(json.dumps(out, indent=1))
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
