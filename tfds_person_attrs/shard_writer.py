"""`WriteSplit`: one split's images into TFDS's sharded TFRecord files, with only small references shuffled.

TFDS's own Beam writer serialises every example, image bytes included, before its shuffle and materialises
them for the side inputs that size its shards, so on the in-process DirectRunner a build's memory grew with
the data (about 1.1 GB more from 7,000 to 28,000 images, docs/performance.md section 5). Here the shard
assignment and the shuffle carry a reference per image (key, row, labels, CRC-32: ~170 bytes as Beam encodes
it, hvc schema), and each shard's writer sorts its references, then reads, checks, encodes and writes one
example at a time.

Order and sharding follow TFDS's writer: keys hashed with md5 salted by the split name, shards cut by hashed
key range (`shuffle.get_bucket_number`), examples sorted by hashed key within a shard, shard count from
`ShardConfig` (here from the image sizes, before serialising), records as TFDS's serializer writes them
(`serialize`). So two builds, or two runners, write the same bytes, and for the same shard count they are
the bytes TFDS's writer wrote (benchmarks/build_speed.py compares them with an earlier build's). `split_info`
hands TFDS the shard lengths and sizes it records in dataset_info.json.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import posixpath

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from etils import epath
from tensorflow.core.example import example_pb2
from tensorflow_datasets.core import hashing, naming, shuffle, splits, utils
from tensorflow_datasets.core.utils import shard_utils

from tfds_person_attrs.build_errors import ImageChangedError, quiet_reported_stops
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.schema import DATASET_NAME, Schema

_RECORD_OVERHEAD = 200  # bytes an example adds to its image (id, group, labels, proto framing): sizes shards only


def example_reference(group: str, item) -> tuple:
    """What travels through the shuffle for one image (a CheckedImage): plain values, no image bytes (only
    images converted to JPEG carry their new bytes, since the source holds other bytes for them)."""
    ann = item.annotation
    return ann.image_id, ann.row, group, ann.labels, item.crc32, item.num_bytes, item.converted_jpeg


def read_example(ref: tuple, data: ManualData, schema: Schema) -> dict:
    """The TFDS example of a reference, its image bytes read again and checked against the CRC-32 taken when
    the image was checked: a source that changes during the build would otherwise give unchecked images."""
    image_id, row, group, labels, crc32, _, converted = ref
    jpeg = converted
    if jpeg is None:
        jpeg = data.read_image(image_id)
        if jpeg is None or data.crc32(image_id, jpeg) != crc32:
            now = "is gone" if jpeg is None else "has other bytes"
            raise ImageChangedError(f"row {row}: {image_id} {now} since this build checked it; the source "
                                    f"{data.source_file} changed during the build: rebuild once it is stable")
    example = {"image": jpeg, "id": image_id, "group": group}
    for a in schema.attributes:
        example[a.name] = np.asarray(labels[a.name], np.uint8) if a.is_multi_label else labels[a.name]
    return example


def serialize(example: dict) -> bytes:
    """The tf.train.Example record of an example of this dataset (bytes, text, class indices, 0/1 vectors).

    The same bytes as TFDS's encode_example + ExampleSerializer with the feature map in key order (tested for
    the built-in and a multi-label schema), built directly: 0.017 against 0.067 ms an example. Key order,
    because protobuf writes a map's entries in an order that differs from process to process.
    """
    proto = example_pb2.Example()
    features = proto.features.feature
    for name, value in example.items():
        if isinstance(value, bytes):
            features[name].bytes_list.value.append(value)
        elif isinstance(value, str):
            features[name].bytes_list.value.append(value.encode())
        else:
            features[name].int64_list.value.extend(np.atleast_1d(value).tolist())
    return proto.SerializeToString(deterministic=True)


class _SplitSize(beam.CombineFn):
    """Batches of (hashed key, reference) -> [examples, estimated bytes, largest hashed key]."""

    def create_accumulator(self):
        return [0, 0, 0]

    def add_input(self, acc, batch):
        acc[0] += len(batch)
        acc[1] += sum(ref[5] for _, ref in batch) + _RECORD_OVERHEAD * len(batch)
        acc[2] = max([acc[2], *(hkey for hkey, _ in batch)])
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for n, size, top in accs:
            out = [out[0] + n, out[1] + size, max(out[2], top)]
        return out

    def extract_output(self, acc):
        return acc


class WriteSplit(beam.PTransform):
    """Batches of (split, group, CheckedImage, shared) of one split -> its shard files, plus a split-info file
    that `split_info` reads once the pipeline is done."""

    def __init__(self, name: str, data: ManualData, schema: Schema, *, example_writer,
                 filename_template: naming.ShardedFileTemplate, shard_config: shard_utils.ShardConfig | None):
        """example_writer: TFDS's ExampleWriter for the dataset's file format."""
        super().__init__()
        self._name = name
        self._template = filename_template
        self._shard_config = shard_config or shard_utils.ShardConfig()
        self._write = _WriteShard(data, schema, example_writer, filename_template)

    def expand(self, items):
        keyed = items | "HashKeys" >> beam.ParDo(_HashKey(self._name))
        size = beam.pvalue.AsSingleton(keyed | "SplitSize" >> beam.CombineGlobally(_SplitSize()))
        shards = (keyed | "AssignShards" >> beam.FlatMap(self._assign_shards, size=size)
                  | "GroupShards" >> beam.GroupByKey())
        non_empty = beam.pvalue.AsSingleton(
            shards | "ShardIds" >> beam.Keys() | "CollectShardIds" >> beam.combiners.ToList()
            | "SortShardIds" >> beam.Map(sorted))
        return (shards | "WriteShards" >> beam.ParDo(self._write, non_empty=non_empty)
                | "CollectShardInfo" >> beam.combiners.ToList()
                | "WriteSplitInfo" >> beam.Map(_write_split_info, path=split_info_path(self._template)))

    def _assign_shards(self, batch, size):
        """A batch of (hashed key, reference) -> (shard id, the batch's part in that shard) per shard."""
        n, total, top = size
        num_shards = self._shard_config.get_number_shards(total_size=total, num_examples=n,
                                                          uses_precise_sharding=False)
        parts = collections.defaultdict(list)
        for keyed in batch:
            parts[shuffle.get_bucket_number(hkey=keyed[0], num_buckets=num_shards, max_hkey=top)].append(keyed)
        return list(parts.items())


class _HashKey(beam.DoFn):
    """A batch of (split, group, CheckedImage, shared) -> a batch of (hashed key, reference); the key is the
    image id."""

    def __init__(self, salt: str):
        self._salt = salt

    def setup(self):
        self._hasher = hashing.Hasher(self._salt)  # holds an md5 object, which does not pickle

    def process(self, batch):
        yield [(self._hasher.hash_key(item.annotation.image_id), example_reference(group, item))
               for _, group, item, _ in batch]


class _WriteShard(beam.DoFn):
    """(shard id, [[(hashed key, reference)] per batch]) -> (index, examples, bytes) after writing its file."""

    def __init__(self, data, schema, example_writer, template):
        self._data, self._schema = data, schema
        self._example_writer, self._template = example_writer, template
        self._written = Metrics.counter(DATASET_NAME, "examples_written")

    def setup(self):
        quiet_reported_stops()

    def process(self, element, non_empty):
        shard_id, parts = element
        refs = sorted(itertools.chain.from_iterable(parts), key=lambda kv: kv[0])
        for (k1, r1), (k2, r2) in zip(refs, refs[1:]):
            if k1 == k2:
                raise ValueError(f"rows {r1[1]} and {r2[1]} both give the example key {r1[0]!r}: keys must be unique")
        index = non_empty.index(shard_id)  # shards no key fell into get no file, as in TFDS's writer
        path = self._template.sharded_filepath(shard_index=index, num_shards=len(non_empty))
        sizes = []

        def records():
            for hkey, ref in refs:
                record = serialize(read_example(ref, self._data, self._schema))
                sizes.append(len(record))
                yield hkey, record

        with utils.incomplete_files(epath.Path(path)) as tmp:
            self._example_writer.write(tmp, records())
        self._written.inc(len(refs))
        logging.debug("person_attrs: wrote %s (%d examples)", posixpath.basename(str(path)), len(refs))
        yield index, len(refs), sum(sizes)


def split_info_path(template: naming.ShardedFileTemplate) -> str:
    return f"{template.filepath_prefix()}.split_info.json"


def _write_split_info(shards: list, path: str) -> None:
    shards = sorted(shards)
    with utils.incomplete_file(epath.Path(path)) as tmp:
        tmp.write_text(json.dumps({"shard_lengths": [n for _, n, _ in shards],
                                   "total_size": sum(size for _, _, size in shards)}))


def split_info(name: str, template: naming.ShardedFileTemplate) -> splits.SplitInfo:
    """The SplitInfo of a split `WriteSplit` wrote (read from, then removing, its split-info file)."""
    path = epath.Path(split_info_path(template))
    info = json.loads(path.read_text())
    path.unlink()
    if not info["shard_lengths"]:
        raise ValueError(f"split {name!r} got no examples: each of its images was skipped")
    return splits.SplitInfo(name=name, shard_lengths=info["shard_lengths"], num_bytes=info["total_size"],
                            filename_template=template)
