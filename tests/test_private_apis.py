"""The libraries' private or internal names the project relies on, each checked for the shape it is used in, so
that a new pinned TFDS or Keras fails here, naming the name, before a build or a run fails somewhere deep.

    python -m pytest -q tests/test_private_apis.py

docs/architecture.md ("Private APIs we rely on") lists the same names with why each is used; a test below
keeps the two lists equal. The behaviour behind them is tested end to end elsewhere (tests/test_shard_writer.py
compares every record with TFDS's own serializer; tests/test_build_transform.py builds on three runners).
"""

import inspect
import pathlib
import re

import keras
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing, naming, shuffle, split_builder, splits, utils
from tensorflow_datasets.core.utils import shard_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


# name as docs/architecture.md gives it -> a check of the shape the project's code uses
CHECKS = {
    "tfds.core.DatasetBuilder._download_and_prepare": lambda: _params(
        tfds.core.DatasetBuilder._download_and_prepare)[:2] == ["dl_manager", "download_config"],
    "tfds.core.GeneratorBasedBuilder._generate_splits": lambda: _params(
        tfds.core.GeneratorBasedBuilder._generate_splits)[:2] == ["dl_manager", "download_config"],
    "tfds.core.split_builder.SplitBuilder": lambda: {
        "split_dict", "features", "dataset_size", "beam_options", "beam_runner", "max_examples_per_split",
        "shard_config", "example_writer", "ignore_duplicates"} <= set(_params(split_builder.SplitBuilder.__init__))
        and hasattr(split_builder.SplitBuilder, "maybe_beam_pipeline"),
    "tfds.core.hashing.Hasher": lambda: isinstance(hashing.Hasher("train").hash_key("a"), int),
    "tfds.core.shuffle.get_bucket_number": lambda: _params(shuffle.get_bucket_number) == [
        "hkey", "num_buckets", "max_hkey"],
    "tfds.core.naming.ShardedFileTemplate": lambda: "filetype_suffix" in _params(naming.ShardedFileTemplate),
    "tfds.core.splits.SplitInfo": lambda: {"name", "shard_lengths", "num_bytes"} <= set(
        _params(splits.SplitInfo)),
    "tfds.core.utils.incomplete_files": lambda: callable(utils.incomplete_files),
    "tfds.core.utils.incomplete_file": lambda: callable(utils.incomplete_file),
    "tfds.core.utils.shard_utils.ShardConfig": lambda: hasattr(shard_utils.ShardConfig(), "get_number_shards"),
    "keras.Model._symbolic_build": lambda: "data_batch" in _params(keras.Model._symbolic_build),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_private_api_we_use_still_has_the_shape_we_use(name):
    assert CHECKS[name](), f"{name} changed in the pinned library: see docs/architecture.md, 'Private APIs we rely on'"


def test_the_architecture_doc_lists_exactly_these():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Private APIs we rely on"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    listed = set(re.findall(r"^\| `([^`]+)` \|", section, re.M))
    assert listed == set(CHECKS), f"doc only: {sorted(listed - set(CHECKS))}; test only: {sorted(set(CHECKS) - listed)}"


def test_the_code_uses_no_other_internal_module():
    """An import from a library's internal modules that is not in the list above fails here."""
    known = {"tensorflow_datasets.core", "tensorflow_datasets.core.utils", "tensorflow.core.example"}
    for package in ("trainer", "pipeline", "tfds_person_attrs"):
        for path in (ROOT / package).rglob("*.py"):
            for module in re.findall(r"^\s*from ((?:tensorflow|tensorflow_datasets|keras|apache_beam)\.\S+) import",
                                     path.read_text(), re.M):
                internal = any(part in module.split(".") for part in ("core", "src", "python", "internal"))
                assert not internal or module in known, f"{path.relative_to(ROOT)} imports {module}"
