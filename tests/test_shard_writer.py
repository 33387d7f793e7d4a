"""The shard writer: records as TFDS's serializer writes them, images read again and checked, and the errors
a split with no example or two rows with one key give.

    python -m pytest -q tests/test_shard_writer.py
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from tensorflow_datasets.core import example_serializer, naming

from tests import data_fixtures as fx
from tests.trainer_fixtures import MULTI_SCHEMA
from tfds_person_attrs.annotation_rows import Annotation
from tfds_person_attrs.beam_transforms import CheckedImage
from tfds_person_attrs.build_errors import ImageChangedError
from tfds_person_attrs.images import inspect_image
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.person_attrs.person_attrs_dataset_builder import Builder, PersonAttrsConfig
from tfds_person_attrs.schema import HVC
from tfds_person_attrs.shard_writer import (
    _write_split_info,
    _WriteShard,
    example_reference,
    read_example,
    serialize,
    split_info,
    split_info_path,
)


@pytest.mark.parametrize("schema", [HVC, MULTI_SCHEMA], ids=["hvc", "multi_label"])
def test_records_are_the_bytes_tfds_serializer_writes(schema, tmp_path):
    config = schema.name if schema is HVC else PersonAttrsConfig.from_schema(schema)
    features = Builder(data_dir=str(tmp_path), config=config).info.features
    tfds_serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    rng = np.random.default_rng(0)
    for i in range(20):
        example = {"image": rng.bytes(100 + i), "id": f"resized/{i}é.jpg", "group": f"g{i % 3}"}
        for a in schema.attributes:
            example[a.name] = (rng.integers(0, 2, a.num_classes).astype(np.uint8) if a.is_multi_label
                               else int(rng.integers(a.num_classes)))
        expected = tfds_serializer.get_tf_example(features.encode_example(example)).SerializeToString(
            deterministic=True)
        assert serialize(example) == expected


def test_writing_refuses_an_image_whose_bytes_changed_since_the_check(tmp_path):
    src = fx.write_real_slice(tmp_path / "manual", 2)
    data = ManualData(str(src), HVC)
    ann = Annotation(2, "resized/2.jpg", {a.name: 0 for a in HVC.attributes if not a.is_multi_label})
    jpeg = (src / "resized" / "2.jpg").read_bytes()
    ref = example_reference("g", CheckedImage(ann, inspect_image(jpeg).signature, zlib.crc32(jpeg), len(jpeg)))
    example = read_example(ref, data, HVC)
    assert example["id"] == "resized/2.jpg" and example["group"] == "g" and example["image"] == jpeg
    (src / "resized" / "2.jpg").write_bytes(jpeg[:-10] + bytes(10))
    with pytest.raises(ImageChangedError, match=r"row 2: resized/2.jpg has other bytes since this build checked it"):
        read_example(ref, data, HVC)
    (src / "resized" / "2.jpg").unlink()
    with pytest.raises(ImageChangedError, match="resized/2.jpg is gone"):
        read_example(ref, data, HVC)


def _template(tmp_path, split="test"):
    return naming.ShardedFileTemplate(data_dir=tmp_path, template=naming.DEFAULT_FILENAME_TEMPLATE,
                                      dataset_name="person_attrs", split=split, filetype_suffix="tfrecord")


def test_a_split_whose_images_were_all_skipped_is_named(tmp_path):
    template = _template(tmp_path)
    _write_split_info([], path=split_info_path(template))
    with pytest.raises(ValueError, match="split 'test' got no examples"):
        split_info("test", template)


def test_two_rows_with_one_key_stop_the_shard_with_both_rows(tmp_path):
    ann = Annotation(4, "resized/1.jpg", {})
    ref = example_reference("g", CheckedImage(ann, np.zeros(1), 0, 10))
    twin = example_reference("g", CheckedImage(Annotation(9, "resized/1.jpg", {}), np.zeros(1), 0, 10))
    write = _WriteShard(None, HVC, None, _template(tmp_path))
    with pytest.raises(ValueError, match="rows 4 and 9 both give the example key 'resized/1.jpg'"):
        list(write.process((0, [[(7, ref)], [(7, twin)]]), non_empty=[0]))
