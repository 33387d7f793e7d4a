"""tf.data input from the built TFDS dataset: raw JPEG bytes -> decoded, cropped, resized batches.

    python -c "from trainer.config_loader import load_config; from trainer.input.data import make_train_dataset; \
print(make_train_dataset(load_config(['--config', 'smoke', '--data_dir', 'out/data']), 8).element_spec)"

Reads DATA_DIR/person_attrs/<dataset>/<version> with `tfds.builder_from_directory` (local or gs://; no builder
code needed). Images come as bytes (SkipDecoding) so that `image_decoder` can decode only the person band.
Elements are (image float32 [B, H, W, 3] 0..255, {attribute: label}); labels are int32 class indices
(single-label) or float32 multi-hot (multi-label). Augmentation is not here: it runs inside the model.

Sharding (multi-worker): each input pipeline (one per worker) reads its own contiguous part of the split,
`tfds.even_splits(split, n)[i]` (part sizes differ by at most one example), so within an epoch every example
is read and decoded by exactly one worker, whatever the number of files per split (TFDS reads only the records
of that range). docs/performance.md measures this against tf.data's DATA policy, which decodes every example
on every worker and keeps 1/N of them.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from typing import Mapping

import tensorflow as tf
import tensorflow_datasets as tfds

from tfds_person_attrs import csv_cells
from tfds_person_attrs.schema import BUILTIN_SCHEMAS, DATASET_NAME, Schema, schema_from_dict
from trainer.config import ConfigError
from trainer.input.preprocess_ops import image_decoder

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    schema: Schema
    class_counts: Mapping[str, Mapping[str, list]]  # {split: {attribute: [count per class]}}
    num_examples: Mapping[str, int]  # {split: examples}


def built_datasets(data_dir: str) -> list[str]:
    """The datasets built under data_dir, as "name/version" (folders person_attrs/NAME/VERSION/dataset_info.json)."""
    root = os.path.join(data_dir, DATASET_NAME)
    if not tf.io.gfile.isdir(root):
        return []
    found = []
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(root)):
        if not tf.io.gfile.isdir(os.path.join(root, name)):
            continue
        for version in sorted(v.rstrip("/") for v in tf.io.gfile.listdir(os.path.join(root, name))):
            if tf.io.gfile.exists(os.path.join(root, name, version, "dataset_info.json")):
                found.append(f"{name}/{version}")
    return found


def dataset_name(data_cfg) -> str:
    """data.dataset, or when it is empty the one dataset data_dir holds (none or several: a ConfigError)."""
    if data_cfg.dataset:
        return data_cfg.dataset
    _need_data_dir(data_cfg)
    names = sorted({entry.split("/")[0] for entry in built_datasets(data_cfg.data_dir)})
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(f"{data_cfg.data_dir} holds no built dataset (no person_attrs/NAME/VERSION/"
                          "dataset_info.json); build one with `python -m pipeline.preprocess --data_dir "
                          f"{data_cfg.data_dir} ...`, or pass the --data_dir it was built into")
    raise ConfigError(f"{data_cfg.data_dir} holds several datasets {names}: pick one with --data.dataset=NAME")


def with_dataset(config):
    """The config with data.dataset filled in (see dataset_name), as a run records it in config.yaml."""
    return config if config.data.dataset else config.replace(**{"data.dataset": dataset_name(config.data)})


def _need_data_dir(data_cfg) -> None:
    if not data_cfg.data_dir:
        raise ConfigError("data.data_dir is empty: pass --data_dir DIR (the pipeline's output, local or gs://)")


def dataset_dir(data_cfg) -> str:
    _need_data_dir(data_cfg)
    return os.path.join(data_cfg.data_dir, DATASET_NAME, dataset_name(data_cfg), data_cfg.version)


def builder(data_cfg):
    path = dataset_dir(data_cfg)
    if not tf.io.gfile.exists(os.path.join(path, "dataset_info.json")):
        present = built_datasets(data_cfg.data_dir)
        raise ConfigError(f"no built dataset at {path} (dataset_info.json missing); {data_cfg.data_dir} holds "
                          + (f"{present}: pick one with --data.dataset=NAME (and --data.version=V)" if present else
                             "no dataset: build one with the pipeline, or pass the --data_dir it was built into"))
    return tfds.builder_from_directory(path)


def dataset_info(data_cfg) -> DatasetInfo:
    """The schema and class counts the dataset carries in its metadata, and the split sizes."""
    b = builder(data_cfg)
    meta = b.info.metadata or {}
    if "schema" not in meta:
        raise ValueError(f"{dataset_dir(data_cfg)}: metadata has no 'schema'; rebuild with the pipeline")
    schema = schema_from_dict(meta["schema"], source=f"{dataset_dir(data_cfg)} metadata")
    builtin = BUILTIN_SCHEMAS.get(schema.name)
    if "loss_weights" not in meta["schema"] and builtin is not None and builtin.attributes == schema.attributes:
        # built before schemas carried their loss weights: the built-in schema's are this data's
        schema = dataclasses.replace(schema, loss_weights=dict(builtin.loss_weights))
    counts = dict(meta.get("class_counts", {}))
    return DatasetInfo(schema, counts, {name: s.num_examples for name, s in b.info.splits.items()})


def example_to_inputs(example, schema: Schema, data_cfg):
    """One TFDS example dict -> (image, {attribute: label}); pure, so it is tested eagerly and in map."""
    image = image_decoder(data_cfg)(example["image"])
    labels = {a.name: tf.cast(example[a.name], tf.float32 if a.is_multi_label else tf.int32)
              for a in schema.attributes}
    return image, labels


def split_examples(data_cfg, split: str) -> int:
    """Examples in `split`, which may be a TFDS slice such as "train[:64]"."""
    return builder(data_cfg).info.splits[split].num_examples


def has_groups(data_cfg) -> bool:
    """Whether the built records carry the near-duplicate group each example was split by."""
    return "group" in builder(data_cfg).info.features


def split_ids(data_cfg, split: str) -> list[tuple[str, str]]:
    """(id, group) of every example of `split` in its stored order; the group is the id itself when the records
    carry none (see has_groups). Reads the records without decoding a single image."""
    ds = _read(data_cfg, split, shuffle_files=False, seed=None)
    ds = ds.map(lambda ex: (ex["id"], ex["group"] if "group" in ex else ex["id"])).batch(4096)
    return [(i.decode(), g.decode()) for ids, groups in ds.as_numpy_iterator() for i, g in zip(ids, groups)]


def split_jpegs(data_cfg, split: str, ids) -> dict[str, bytes]:
    """{id: the stored JPEG} of the examples of `split` whose id is in `ids` (one pass, nothing decoded)."""
    wanted, found = set(ids), {}
    for ex in _read(data_cfg, split, shuffle_files=False, seed=None).as_numpy_iterator():
        if ex["id"].decode() in wanted:
            found[ex["id"].decode()] = ex["image"]
    return found


def read_excluded_ids(path: str) -> frozenset[str]:
    """The ids in the "id" column of the CSV at `path` (data.exclude_ids)."""
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"data.exclude_ids: {path} does not exist; pass a CSV with an 'id' column, such as the "
                          "label_issues.csv of `python -m trainer.label_audit`")
    with tf.io.gfile.GFile(path) as f:
        reader = csv.DictReader(f)
        if "id" not in (reader.fieldnames or []):
            raise ConfigError(f"data.exclude_ids: {path} has no 'id' column (header: {reader.fieldnames}); pass a "
                              "CSV whose header names an 'id' column, such as a label audit's label_issues.csv")
        ids = set()
        for line, row in enumerate(reader, start=2):
            if not (row["id"] or "").strip():
                raise ConfigError(f"data.exclude_ids: {path} line {line}: the id is empty; remove the line")
            ids.add(csv_cells.original(row["id"].strip()))  # the id as written before its spreadsheet quote
    return frozenset(ids)


def train_examples(data_cfg) -> int:
    """Examples of the train split that training reads: data.train_split less the data.exclude_ids listed in it."""
    n = split_examples(data_cfg, data_cfg.train_split)
    if not data_cfg.exclude_ids:
        return n
    listed = read_excluded_ids(data_cfg.exclude_ids)
    dropped = len(listed & {i for i, _ in split_ids(data_cfg, data_cfg.train_split)})
    log.info("data.exclude_ids: %d of %d train examples left out (%s lists %d id(s)%s)", dropped, n,
             data_cfg.exclude_ids, len(listed), "" if dropped == len(listed) else
             f"; {len(listed) - dropped} of them are not in split {data_cfg.train_split!r}")
    return n - dropped


def _without(ds: tf.data.Dataset, ids: frozenset[str]) -> tf.data.Dataset:
    """The records of `ds` whose id is not in `ids` (a hash table lookup per record)."""
    if not ids:
        return ds
    keys = tf.constant(sorted(ids))
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.zeros_like(keys, tf.int32)),
                                      default_value=1)
    return ds.filter(lambda ex: tf.equal(table.lookup(ex["id"]), 1))


def shard_split(data_cfg, split: str, num_shards: int = 1, index: int = 0):
    """The part of `split` that input pipeline `index` of `num_shards` reads (the whole split for one)."""
    if num_shards == 1:
        return split
    n = split_examples(data_cfg, split)
    if n < num_shards:
        raise ConfigError(f"split {split!r} has {n} example(s), fewer than the {num_shards} workers reading it: "
                          "use fewer workers or a larger split")
    return tfds.even_splits(split, n=num_shards)[index]


def _read(data_cfg, split, shuffle_files: bool, seed: int | None):
    b = builder(data_cfg)
    read_config = tfds.ReadConfig(
        interleave_cycle_length=data_cfg.cycle_length,  # files read in parallel
        shuffle_seed=seed,
        add_tfds_id=False,
    )
    return b.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                        decoders={"image": tfds.decode.SkipDecoding()})


def make_train_dataset(config, batch: int, schema: Schema | None = None, num_shards: int = 1,
                       index: int = 0, start_example: int = 0, ids_log: str = "",
                       batches_per_step: int = 1) -> tf.data.Dataset:
    """Endless, shuffled, batched (drop_remainder: every step has the same batch) train split, or shard `index`
    of `num_shards` of it (one per worker; `batch` is then that pipeline's batch).

    The order is a function of data.seed alone (seeded file and example shuffles, deterministic interleave and
    maps), so `start_example` > 0 continues the very stream a run that already took that many examples from
    this pipeline was reading: a resumed run trains on the same examples in the same order as one never
    stopped. The examples before it are skipped before decoding (read, not decoded; docs/architecture.md).
    `ids_log`: a file that gets one line per batch, `step,batch_in_step,id id ...` (`batches_per_step` batches
    of this pipeline make one step), appended as the batches are made (read it with `read_ids_log`)."""
    d = config.data
    schema = schema or dataset_info(d).schema
    ds = _read(d, shard_split(d, d.train_split, num_shards, index), shuffle_files=True, seed=d.seed)
    if d.exclude_ids:
        ds = _without(ds, read_excluded_ids(d.exclude_ids))

    def decode(ex):
        return (*example_to_inputs(ex, schema, d), ex["id"])

    if d.cache:
        # Decoding is a pure function of the bytes and augmentation runs in the model, so caching the decoded
        # uint8 split is exact: from the second epoch on the input costs almost nothing (measured 17x,
        # docs/performance.md). Memory: H x W x 3 bytes per image (138 MB for hvc at 128x64).
        ds = ds.map(lambda ex: _as_uint8(decode(ex)), num_parallel_calls=AUTOTUNE).cache()
    ds = ds.repeat()
    if d.shuffle_buffer > 1:
        ds = ds.shuffle(d.shuffle_buffer, seed=d.seed, reshuffle_each_iteration=True)
    if start_example:
        ds = ds.skip(start_example)
    if d.cache:
        ds = ds.map(lambda image, labels, i: (tf.cast(image, tf.float32), labels, i), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True)
    if ids_log:
        ds = ds.enumerate(start=start_example // batch).map(
            lambda n, b: _log_ids(ids_log, n, batches_per_step, b))
    return ds.map(lambda image, labels, ids: (image, labels)).prefetch(AUTOTUNE)


def _log_ids(path: str, n, batches_per_step: int, batch):
    """Appends `step,batch_in_step,ids` for batch number `n` of the stream to `path`; passes the batch on."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    line = tf.strings.join([tf.strings.as_string(n // batches_per_step), tf.strings.as_string(n % batches_per_step),
                            tf.strings.reduce_join(batch[2], separator=" ")], ",")

    def append(text):
        with tf.io.gfile.GFile(path, "a") as f:
            f.write(text.numpy().decode() + "\n")
        return 0

    with tf.control_dependencies([tf.py_function(append, [line], tf.int64)]):
        return tf.identity(batch[0]), batch[1], batch[2]


def read_ids_log(path: str) -> dict[int, list[str]]:
    """{step: the ids it trained on} from an `ids_log` file; a resumed run's lines replace those a killed run
    wrote ahead of its last step (its input read ahead of training)."""
    parts: dict[tuple[int, int], list[str]] = {}
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            step, part, ids = line.rstrip("\n").split(",", 2)
            parts[int(step), int(part)] = ids.split(" ")
    steps: dict[int, list[str]] = {}
    for (step, _), ids in sorted(parts.items()):
        steps.setdefault(step, []).extend(ids)
    return steps


def _as_uint8(inputs):
    image, labels, i = inputs
    return tf.cast(tf.round(image), tf.uint8), labels, i


def eval_examples(config, split: str | None = None, schema: Schema | None = None, num_shards: int = 1,
                  index: int = 0) -> tf.data.Dataset:
    """One deterministic pass over a split (default: data.eval_split) or shard `index` of it, unbatched:
    {"image": decoded, "labels": {attribute: label}, "id": the example's id, "image_bytes": its JPEG}."""
    d = config.data
    schema = schema or dataset_info(d).schema
    ds = _read(d, shard_split(d, split or d.eval_split, num_shards, index), shuffle_files=False, seed=None)

    def prepare(example):
        image, labels = example_to_inputs(example, schema, d)
        return {"image": image, "labels": labels, "id": example["id"], "image_bytes": example["image"]}

    return ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)


def make_eval_dataset(config, split: str | None = None, batch: int = 64, schema: Schema | None = None,
                      num_shards: int = 1, index: int = 0) -> tf.data.Dataset:
    """`eval_examples` as batches of (image, labels), last batch kept."""
    ds = eval_examples(config, split, schema, num_shards, index)
    return ds.map(lambda ex: (ex["image"], ex["labels"])).batch(batch).prefetch(AUTOTUNE)
