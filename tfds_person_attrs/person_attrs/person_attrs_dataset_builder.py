"""The `person_attrs` TFDS dataset: labelled person images as sharded TFRecords, built by Beam.

    python -m pipeline.preprocess --manual_dir ../shared/data --data_dir out/data      # the usual way
    tfds build tfds_person_attrs/person_attrs --config hvc --manual_dir ../shared/data --data_dir out/data

One Beam graph serves all three splits: the CSV is validated in the launching process, images are
decoded and checked once by the workers (and their bytes read again, unchanged, when written), near-duplicates
are grouped over all images, and each group lands in one split chosen by a stable hash. See README.md
beside this file for features and metadata.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import logging
import posixpath

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import split_builder

from tfds_person_attrs import beam_transforms as bt
from tfds_person_attrs import grouping, shard_writer
from tfds_person_attrs.annotation_rows import Annotation, batch_from_json, batches_to_jsonl, parse_annotations
from tfds_person_attrs.build_errors import ManualDataError, SourceChangedError, StrictModeError
from tfds_person_attrs.images import DEFAULT_MAX_PIXELS
from tfds_person_attrs.manual_data import DEFAULT_MAX_IMAGE_BYTES, ManualData
from tfds_person_attrs.schema import BUILTIN_SCHEMAS, DATASET_NAME, HVC, Schema

SUMMARY_FILE = "build_summary.json"
SKIPPED_FILE = "build_skipped.csv"
ANNOTATIONS_FILE = "build_rows.jsonl"  # the validated rows handed to the workers; removed after the build
FAILED_SUFFIX = ".failed"  # <version>.failed/ beside the dataset: the summary and skipped rows of a build that stopped


@dataclasses.dataclass(kw_only=True)
class PersonAttrsConfig(tfds.core.BuilderConfig):
    """A schema plus the split recipe. The config's name is the schema's name."""

    schema: Schema = HVC
    recipe: grouping.SplitRecipe = grouping.SplitRecipe()

    @classmethod
    def from_schema(cls, schema: Schema, **kwargs) -> PersonAttrsConfig:
        return cls(name=schema.name, description=schema.description or f"schema {schema.name}", schema=schema, **kwargs)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Person attributes from a CSV plus JPEGs (a folder or zip, local or gs://)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Leak-proof splits by near-duplicate groups; class counts in metadata."}
    BUILDER_CONFIGS = [PersonAttrsConfig.from_schema(s) for s in BUILTIN_SCHEMAS.values()]
    DEFAULT_CONFIG_NAME = HVC.name
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the CSV (hvc_annotations.csv for the hvc config) and its images (resized/N.jpg), or a zip holding "
        "them such as hvc_data.zip, in the manual dir, and pass --manual_dir DIR (local or gs://)."
    )

    def __init__(self, *, strict: bool = False, max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, follow_symlinks: tuple[str, ...] = (),
                 manual_source: str | None = None, **kwargs):
        """manual_source: the zip or folder to read, when it is not TFDS's manual dir itself (TFDS takes folders
        only, so a named zip comes here and its folder goes to TFDS); follow_symlinks: folders that symbolic
        links of a local manual folder may lead into."""
        self._strict = strict
        self._max_image_pixels = max_image_pixels
        self._max_image_bytes = max_image_bytes
        self._follow_symlinks = tuple(follow_symlinks)
        self._manual_source = manual_source
        self._source: ManualData | None = None
        super().__init__(**kwargs)

    @property
    def schema(self) -> Schema:
        return self.builder_config.schema

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "id": tfds.features.Text(),
            "group": tfds.features.Text(),
        }
        for a in self.schema.attributes:
            if a.is_multi_label:
                features[a.name] = tfds.features.Tensor(shape=(a.num_classes,), dtype=np.uint8)
            else:
                features[a.name] = tfds.features.ClassLabel(names=list(a.classes))
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/",
        )

    def _manual_data(self, dl_manager) -> ManualData:
        """The build's one ManualData: the rows, the fingerprint and every image read come from what it parsed."""
        if self._source is None:
            self._source = ManualData(self._manual_source or str(dl_manager.manual_dir), self.schema,
                                      follow_symlinks=self._follow_symlinks, max_image_bytes=self._max_image_bytes)
        return self._source

    def _split_generators(self, dl_manager: tfds.download.DownloadManager, pipeline):
        cfg = self.builder_config.recipe
        data = self._manual_data(dl_manager)
        annotations, csv_skipped = parse_annotations(data.read_csv_bytes(), self.schema, source=data.csv_path)
        if self._strict and csv_skipped:
            raise StrictModeError(bt.skip_message_for_strict(csv_skipped[0]))
        if not annotations:
            raise ManualDataError(f"{data.csv_path}: no usable rows ({len(csv_skipped)} skipped, first: "
                                  f"{csv_skipped[0].message})")
        check_every_split_gets_rows(annotations, cfg)
        source = data.fingerprint()
        logging.info("person_attrs: %d usable CSV rows, %d skipped before reading images",
                     len(annotations), len(csv_skipped))

        # Workers read the validated rows from a file rather than from the job graph: beam.Create would pickle
        # and compress every row into the graph (seconds here; too large for Dataflow with millions of rows).
        out_dir = str(self.data_dir)
        rows_file = posixpath.join(out_dir, ANNOTATIONS_FILE)
        with tf.io.gfile.GFile(rows_file, "w") as f:
            f.write(batches_to_jsonl(annotations, bt.ROWS_PER_BATCH))
        parts = (
            pipeline
            | "ReadAnnotations" >> beam.io.ReadFromText(rows_file)
            | "ParseAnnotations" >> beam.Map(batch_from_json)
            | "BuildSplits" >> bt.BuildSplits(
                data, self.schema, threshold=cfg.dedup_threshold, split_seed=cfg.split_seed,
                fractions=cfg.split_fractions, split_by=cfg.split_by, strict=self._strict,
                max_pixels=self._max_image_pixels, csv_rows=len(annotations) + len(csv_skipped),
                csv_skipped=csv_skipped, config=self._config_record())
        )
        _ = parts["summary"] | "WriteSummary" >> beam.Map(_write_summary, out_dir=out_dir, source=source)
        _ = (parts["skipped"] | "CollectSkippedRows" >> beam.combiners.ToList()
             | "WriteSkippedRows" >> beam.Map(_write_skipped_rows, out_dir=out_dir, csv_skipped=csv_skipped))
        return {name: parts[name] for name, _ in cfg.split_fractions}

    def _generate_examples(self, **_):
        """Unused: `_split_generators` returns each split's images from `BuildSplits` directly."""
        raise NotImplementedError

    def _generate_splits(self, dl_manager, download_config):
        """TFDS's Beam build, with each split written by `shard_writer.WriteSplit` rather than TFDS's writer, which
        shuffles and materialises serialised examples, image bytes included (see shard_writer.py)."""
        builder = split_builder.SplitBuilder(
            split_dict=self.info.splits, features=self.info.features, dataset_size=self.info.dataset_size,
            beam_options=download_config.beam_options, beam_runner=download_config.beam_runner,
            max_examples_per_split=None, shard_config=None, example_writer=self._example_writer(),
            ignore_duplicates=False)
        templates, data = {}, self._manual_data(dl_manager)
        with builder.maybe_beam_pipeline() as proxy:
            parts = self._split_generators(dl_manager, builder.beam_pipeline)
            for name, images in parts.items():
                templates[name] = self._get_filename_template(split_name=name)
                _ = images | f"Write_{name}" >> shard_writer.WriteSplit(
                    name, data, self.schema, example_writer=self._example_writer(), filename_template=templates[name],
                    shard_config=download_config.get_shard_config())
        self._process_pipeline_result(proxy.result)
        return [shard_writer.split_info(name, template) for name, template in templates.items()]

    def _config_record(self) -> dict:
        return {"schema": self.schema.name, **self.builder_config.recipe.record(),
                "max_image_pixels": self._max_image_pixels, "max_image_bytes": self._max_image_bytes,
                "follow_symlinks": list(self._follow_symlinks)}

    def _process_pipeline_result(self, pipeline_result) -> None:
        ours = beam.metrics.MetricsFilter().with_namespace(DATASET_NAME)
        totals = collections.Counter()
        for c in pipeline_result.metrics().query(ours)["counters"]:
            totals[c.key.metric.name] += c.committed  # summed over the steps that count it (one per table)
        for name, total in sorted(totals.items()):
            logging.info("person_attrs counter %s = %s", name, total)

    def _download_and_prepare(self, dl_manager, download_config):
        """TFDS's build, then the metadata that only the finished Beam pipeline knows (class counts, the source's
        sha256), read back from the summary it wrote. This override stays: TFDS has no public hook that runs after
        the pipeline and before dataset_info.json is written, and the counts must be in dataset_info so that a
        trainer reading only the built dataset gets them."""
        try:
            super()._download_and_prepare(dl_manager, download_config)
            self._manual_data(dl_manager).check_content_unchanged()
        except BaseException as e:
            kept = _keep_build_report(str(self.data_dir))
            if kept and type(e) in (ValueError, ManualDataError, SourceChangedError):
                raise type(e)(f"{e}; the summary and every skipped row are in {kept}") from None
            raise
        tf.io.gfile.remove(posixpath.join(str(self.data_dir), ANNOTATIONS_FILE))
        with tf.io.gfile.GFile(posixpath.join(str(self.data_dir), SUMMARY_FILE)) as f:
            summary = json.load(f)
        self.info.metadata.update({
            "schema": self.schema.to_dict(),
            "class_counts": summary["class_counts"],
            **self.builder_config.recipe.record(),
            "source_sha256": summary["source"]["sha256"],
        })
        _remove_abandoned_builds(str(self.data_dir))


def _keep_build_report(building_dir: str) -> str | None:
    """Copies the summary and skipped rows of a build that stopped to <version>.failed/ beside the dataset (TFDS
    deletes the folder it was building); returns that folder, or None when the build stopped before writing
    them. The next successful build of the version removes it."""
    parent, own = posixpath.split(building_dir.rstrip("/"))  # incomplete.<random>_<version>
    kept = posixpath.join(parent, own.rsplit("_", 1)[-1] + FAILED_SUFFIX)
    if tf.io.gfile.exists(kept):
        tf.io.gfile.rmtree(kept)  # an earlier failed build's report would speak of other rows
    names = [n for n in (SUMMARY_FILE, SKIPPED_FILE) if tf.io.gfile.exists(posixpath.join(building_dir, n))]
    if not names:
        return None
    tf.io.gfile.makedirs(kept)
    for n in names:
        tf.io.gfile.copy(posixpath.join(building_dir, n), posixpath.join(kept, n), overwrite=True)
    return kept


def _write_summary(summary: dict, out_dir: str, source: dict) -> None:
    summary["source"] = source
    summary["built_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    bt.write_json(posixpath.join(out_dir, SUMMARY_FILE), summary)


def _write_skipped_rows(image_skipped: list, out_dir: str, csv_skipped: list) -> None:
    with tf.io.gfile.GFile(posixpath.join(out_dir, SKIPPED_FILE), "w") as f:
        f.write(bt.skipped_rows_csv(csv_skipped, image_skipped))


def check_every_split_gets_rows(annotations: list[Annotation], cfg: grouping.SplitRecipe) -> None:
    """Refuses, before Beam starts, a recipe that would leave a split without a single row.

    Counts each usable row in the split of its own group (or of its row rank for --split_by row); grouping
    near-duplicates can only merge groups, so a split empty here is empty after the build too.
    """
    counts = _provisional_split_counts(annotations, cfg, cfg.split_seed)
    if all(counts.values()):
        return
    names = [name for name, _ in cfg.split_fractions]
    said = ", ".join(f"{n} {counts[n]}" for n in names)
    shares = ",".join(f"{f * 100:g}" for _, f in cfg.split_fractions)
    advice = "add rows, or give the empty split a larger share with --split"
    if cfg.split_by == "group":
        seed = next((s for s in range(1, 1000) if all(_provisional_split_counts(annotations, cfg, s).values())), None)
        if seed is not None:
            advice += f", or try --split_seed {seed} (it gives every split a row)"
    raise ManualDataError(f"{len(annotations)} usable rows split {shares} give {said}: every split needs at least one "
                          f"image; {advice}")


def _provisional_split_counts(annotations: list[Annotation], cfg: grouping.SplitRecipe, seed: int) -> dict[str, int]:
    counts = collections.Counter({name: 0 for name, _ in cfg.split_fractions})
    if cfg.split_by == "row":
        for rank in range(len(annotations)):
            counts[grouping.split_at(rank / len(annotations), cfg.split_fractions)] += 1
    else:
        for a in annotations:
            counts[grouping.split_of(a.group or a.image_id, seed, cfg.split_fractions)] += 1
    return counts


def _remove_abandoned_builds(building_dir: str) -> None:
    """Deletes the `incomplete.*` folders that killed builds of this version left beside the one being finished,
    and the `<version>.failed` report of a build that stopped."""
    parent, own = posixpath.split(building_dir.rstrip("/"))
    version = own.rsplit("_", 1)[-1]
    for name in tf.io.gfile.listdir(parent):
        name = name.rstrip("/")
        if (name.startswith("incomplete.") and name.endswith("_" + version) and name != own) or \
                name == version + FAILED_SUFFIX:
            tf.io.gfile.rmtree(posixpath.join(parent, name))
            logging.info("person_attrs: removed %s, left by an interrupted build", posixpath.join(parent, name))
