"""A tiny person_attrs-layout TFDS dataset for trainer tests, written per docs/architecture.md.

    python -c "from tests.trainer_fixtures import fixture_data_dir; print(fixture_data_dir())"

Features: image (letterboxed JPEG), id, group, one ClassLabel per single-label attribute, a uint8 multi-hot
Tensor per multi-label attribute; metadata: schema + class_counts. Written to
DATA_DIR/person_attrs/<schema>/1.0.0 exactly like the real builder, so the trainer reads it unchanged. The
band colour depends on the labels, so a model can learn something in a few steps.
"""

from __future__ import annotations

import functools
import io
import tempfile
import zlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tfds_person_attrs.schema import HVC, MULTI, Attribute, Schema

SPLITS = {"train": 48, "validation": 16, "test": 16}
MULTI_SCHEMA = Schema(name="multi_demo", attributes=(
    Attribute("gender", ("female", "male"), column="gender"),
    Attribute("clothes", ("hat", "coat", "scarf"), column="clothes", kind=MULTI),
))


def _labels(schema: Schema, split: str, n: int) -> list[dict]:
    rng = np.random.default_rng(zlib.crc32(f"{schema.name}/{split}".encode()))  # hash() is salted
    rows = []
    for i in range(n):
        row = {}
        for a in schema.attributes:
            if a.is_multi_label:
                row[a.name] = (rng.random(a.num_classes) < 0.4).astype(np.uint8)
            else:
                row[a.name] = int(rng.integers(a.num_classes))
        rows.append(row)
    return rows


def _jpeg(row: dict, schema: Schema, i: int, size: int = 96) -> bytes:
    """size x size, black bars left and right, a lit band whose colour encodes the first attribute."""
    img = np.zeros((size, size, 3), np.uint8)
    first = row[schema.attributes[0].name]
    level = int(np.asarray(first).ravel()[0])
    band = slice(size // 4 + i % 5, 3 * size // 4 - i % 3)
    img[:, band] = (60 + 120 * level, 90, 200 - 100 * level)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _counts(schema: Schema, rows: list[dict]) -> dict[str, list[int]]:
    out = {}
    for a in schema.attributes:
        if a.is_multi_label:
            out[a.name] = np.sum([r[a.name] for r in rows], axis=0).astype(int).tolist()
        else:
            out[a.name] = np.bincount([r[a.name] for r in rows], minlength=a.num_classes).tolist()
    return out


def make_builder(schema: Schema, data_dir: str, splits: dict[str, int] | None = None):
    splits = splits or SPLITS
    labels = {s: _labels(schema, s, n) for s, n in splits.items()}

    class PersonAttrs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        # The real builder's name, so that files land in DATA_DIR/person_attrs/<schema>/1.0.0.
        name = "person_attrs"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            feats = {"image": tfds.features.Image(encoding_format="jpeg"), "id": tfds.features.Text(),
                     "group": tfds.features.Text()}
            for a in schema.attributes:
                feats[a.name] = (tfds.features.Tensor(shape=(a.num_classes,), dtype=np.uint8) if a.is_multi_label
                                 else tfds.features.ClassLabel(names=list(a.classes)))
            # DatasetInfo directly: dataset_info_from_configs looks for a package dir this module lacks.
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(feats),
                metadata=tfds.core.MetadataDict(
                    schema=schema.to_dict(), class_counts={s: _counts(schema, r) for s, r in labels.items()}))

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s in splits}

        def _generate_examples(self, split):
            for i, row in enumerate(labels[split]):
                key = f"{split}/{i}.jpg"
                yield key, {"image": _jpeg(row, schema, i), "id": key, "group": key, **row}

    return PersonAttrs(config=tfds.core.BuilderConfig(name=schema.name), data_dir=data_dir)


def build(schema: Schema, data_dir: str, splits: dict[str, int] | None = None) -> str:
    """Writes the dataset under data_dir and returns data_dir."""
    make_builder(schema, data_dir, splits).download_and_prepare(
        download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return data_dir


@functools.lru_cache(maxsize=None)
def fixture_data_dir(schema_name: str = "hvc") -> str:
    """Built once per test process: a temp DATA_DIR holding person_attrs/<schema_name>/1.0.0."""
    schema = {"hvc": HVC, MULTI_SCHEMA.name: MULTI_SCHEMA}[schema_name]
    return build(schema, tempfile.mkdtemp(prefix=f"trainer_fixture_{schema_name}_"))


def smoke_config(data_dir: str, job_dir: str = "", dataset: str = "hvc", **overrides):
    """The smoke preset shrunk further for unit tests (32x16 input, 2 steps per epoch)."""
    from trainer.config import load_config

    base = {"data.dataset": dataset, "data.height": 32, "data.width": 16, "train.steps_per_epoch": 2,
            "train.validation_steps": 1, "train.verbose": "0"}
    base.update(overrides)
    argv = ["--config", "smoke", "--data_dir", data_dir, "--job_dir", job_dir or "unused"]
    return load_config(argv).replace(**base)
