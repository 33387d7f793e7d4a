"""The Beam part of the build as one composite transform, `BuildSplits`: batches of validated CSV rows in, the
images of each split and a summary out; `shard_writer.WriteSplit` then writes each split.

    row batches -> ReadAndCheckImages -> NearDuplicateGroups (near_duplicates.py) -> AssignSplits -> each split
                 `-> skipped rows (with reasons) ------------------------------------------> summary

An image is decoded once, in `ReadAndCheckImages` (a DCT-scaled decode that checks it and gives its signature).
What travels on from there is small: the annotation, the signature and a CRC-32 of the bytes, but not the bytes
of a valid JPEG, because the split assignment waits for the grouping's side input, so every runner materialises
its input (the in-process DirectRunner in memory). The shard writer reads the bytes again, checks the CRC and
stores them as they are; only images converted to JPEG (PNG, grayscale, ...) carry their new bytes. Images
travel in batches (a list per element, ROWS_PER_BATCH rows from the CSV), so the runner's own work per element
is paid per batch.

Every annotation that enters `ReadAndCheckImages` leaves it either as a checked image or on the `skipped`
output with a reason; the summary adds them up, so it accounts for every CSV row. Bad records also count in
Beam metrics (namespace `person_attrs`), which Dataflow's UI shows live. Tested under TestPipeline in
tests/test_build_transform.py.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from tfds_person_attrs import csv_cells, grouping
from tfds_person_attrs.near_duplicates import NearDuplicateGroups
from tfds_person_attrs.annotation_rows import OUTSIDE_REASON, Annotation, Skipped
from tfds_person_attrs.build_errors import (
    ImageRefusedError,
    OutsideManualDataError,
    StrictModeError,
    quiet_reported_stops,
)
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.images import DEFAULT_MAX_PIXELS, BadImageError, inspect_image
from tfds_person_attrs.schema import DATASET_NAME, Schema
import csv
import io
import tensorflow as tf

SKIPPED_TAG = "skipped"
_EXAMPLES_PER_REASON = 5
# CSV rows per Beam element: the runner's work per element (encoding at each stage boundary, dispatch through
# each step) is then paid once per batch.
ROWS_PER_BATCH = 256
_PROGRESS_EVERY = 1000


@dataclasses.dataclass(frozen=True)
class CheckedImage:
    annotation: Annotation
    signature: np.ndarray
    crc32: int  # of the bytes as read: the shard writer stores the same bytes or fails
    num_bytes: int = 0  # of the bytes to store (sizes the shards before any is written)
    converted_from: str | None = None
    converted_jpeg: bytes | None = None  # the re-encoded image when converted_from is set; None: the file as is


class CheckedBatch(list):
    """A list of CheckedImages that pickles as plain columns: Beam pickles an object it has no coder for one by
    one, which cost ~15-30 us per CheckedImage at each stage boundary, against ~2 us this way."""

    def __reduce__(self):
        rows = [(c.annotation.row, c.annotation.image_id, c.annotation.labels, c.annotation.group, c.crc32,
                 c.num_bytes, c.converted_from, c.converted_jpeg) for c in self]
        return _checked_batch, (rows, np.stack([c.signature for c in self]) if self else None)


def _checked_batch(rows, signatures) -> CheckedBatch:
    return CheckedBatch(CheckedImage(Annotation(row, image_id, labels, group), signature, crc32, num_bytes,
                                     converted_from, converted_jpeg)
                        for (row, image_id, labels, group, crc32, num_bytes, converted_from, converted_jpeg), signature
                        in zip(rows, signatures if signatures is not None else []))


def skip_message_for_strict(s: Skipped) -> str:
    return (f"--strict: row {s.row} ({s.image_id or 'no image path'}) was skipped: {s.reason}: {s.message}. "
            "Fix the row or drop --strict to skip and report such rows instead")


class ReadAndCheckImages(beam.DoFn):
    """A batch of Annotations -> the batch's CheckedImages as one list, and a Skipped on the `skipped` output
    for each row refused (missing or undecodable image). Batches, not single rows, travel between steps: the
    runner's work per element (encoding, dispatch through each step) then counts once per batch."""

    def __init__(self, data: ManualData, strict: bool, max_pixels: int = DEFAULT_MAX_PIXELS):
        self._data = data
        self._strict = strict
        self._max_pixels = max_pixels
        self._read = Metrics.counter(DATASET_NAME, "images_read")
        self._converted = Metrics.counter(DATASET_NAME, "images_converted")

    def setup(self):
        self._seen = 0
        self._start = time.time()
        if self._strict:
            quiet_reported_stops()

    def process(self, batch: list[Annotation]):
        self._data.check_unchanged()  # the zip or CSV is still the one parsed (one stat a batch)
        checked = []
        for ann in batch:
            item = yield from self._check(ann)
            if item is not None:
                checked.append(item)
        self._read.inc(len(checked))
        before, self._seen = self._seen, self._seen + len(checked)
        if self._seen // _PROGRESS_EVERY > before // _PROGRESS_EVERY:
            rate = self._seen / max(time.time() - self._start, 1e-9)
            logging.info("person_attrs: this worker has checked %d images (%.0f/s)", self._seen, rate)
        if checked:
            yield CheckedBatch(checked)

    def _check(self, ann: Annotation):
        """Yields the row's Skipped if it is refused; returns its CheckedImage otherwise."""
        try:
            data = self._data.read_image(ann.image_id)
        except OutsideManualDataError as e:
            yield from self._skip(ann, OUTSIDE_REASON, f"row {ann.row}: {e}")
            return None
        except ImageRefusedError as e:
            yield from self._skip(ann, e.reason, f"row {ann.row}: {ann.image_id}: {e}")
            return None
        if data is None:
            yield from self._skip(ann, "missing_image", f"row {ann.row}: image file {ann.image_id} not found in {self._data}")
            return None
        try:
            checked = inspect_image(data, self._max_pixels)
        except BadImageError as e:
            yield from self._skip(ann, e.reason, f"row {ann.row}: {ann.image_id}: {e}")
            return None
        if checked.converted_from:
            self._converted.inc()
            for reason in checked.converted_from.split("+"):
                Metrics.counter(DATASET_NAME, f"converted_{reason}").inc()
        converted = checked.jpeg if checked.converted_from else None
        return CheckedImage(ann, checked.signature, self._data.crc32(ann.image_id, data), len(checked.jpeg), checked.converted_from,
                            converted)

    def _skip(self, ann: Annotation, reason: str, message: str):
        Metrics.counter(DATASET_NAME, f"skipped_{reason}").inc()
        skipped = Skipped(ann.row, ann.image_id, reason, message)
        if self._strict:
            raise StrictModeError(skip_message_for_strict(skipped))
        yield beam.pvalue.TaggedOutput(SKIPPED_TAG, skipped)


class ClassCounts(beam.CombineFn):
    """Batches of (split, group, CheckedImage, shared) -> {split: {attribute: [count per class]}}, examples per split,
    conversion tallies and group sizes ({size: number of groups}).

    Only images that may share a group (`shared`: a near-duplicate, or a group from the CSV) are counted by
    group name; the rest are counted as groups of one. So group sizes need no step of their own per image,
    and the accumulator holds no more names than the near-duplicate side input already does.
    """

    def __init__(self, schema: Schema):
        self._schema = schema

    def create_accumulator(self):
        return {"class_counts": {}, "split_sizes": collections.Counter(), "converted": collections.Counter(),
                "converted_images": 0, "converted_examples": {}, "shared_groups": collections.Counter(), "single_groups": 0}

    def add_input(self, acc, batch):
        for element in batch:
            self._add_one(acc, element)
        return acc

    def _add_one(self, acc, element):
        split, group, item, shared = element
        if shared:
            acc["shared_groups"][group] += 1
        else:
            acc["single_groups"] += 1
        acc["split_sizes"][split] += 1  # not a class count's sum: a multi-label image has 0..L positives
        counts = acc["class_counts"].setdefault(split, {a.name: [0] * a.num_classes for a in self._schema.attributes})
        for a in self._schema.attributes:
            label = item.annotation.labels[a.name]
            if a.is_multi_label:
                counts[a.name] = [c + b for c, b in zip(counts[a.name], label)]
            else:
                counts[a.name][label] += 1
        if item.converted_from:  # an image counts once in "images", and under each of its reasons
            acc["converted_images"] += 1
            for reason in item.converted_from.split("+"):
                acc["converted"][reason] += 1
                ex = acc["converted_examples"].setdefault(reason, [])
                if len(ex) < _EXAMPLES_PER_REASON:
                    ex.append({"row": item.annotation.row, "id": item.annotation.image_id})

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            for split, per_attr in acc["class_counts"].items():
                tgt = out["class_counts"].setdefault(split, {k: [0] * len(v) for k, v in per_attr.items()})
                for k, v in per_attr.items():
                    tgt[k] = [a + b for a, b in zip(tgt[k], v)]
            out["split_sizes"].update(acc["split_sizes"])
            out["converted"].update(acc["converted"])
            out["converted_images"] += acc["converted_images"]
            out["shared_groups"].update(acc["shared_groups"])
            out["single_groups"] += acc["single_groups"]
            for reason, ex in acc["converted_examples"].items():
                tgt = out["converted_examples"].setdefault(reason, [])
                tgt.extend(ex[: _EXAMPLES_PER_REASON - len(tgt)])
        return out

    def extract_output(self, acc):
        sizes = collections.Counter(acc["shared_groups"].values())
        if acc["single_groups"]:
            sizes[1] += acc["single_groups"]
        return {"class_counts": acc["class_counts"], "split_sizes": dict(acc["split_sizes"]),
                "converted": dict(acc["converted"]), "converted_images": acc["converted_images"],
                "converted_examples": acc["converted_examples"], "group_sizes": dict(sizes)}


def build_summary(csv_rows: int, csv_skipped: list[Skipped], image_skipped: list[Skipped], stats: dict,
                  group_sizes: dict[int, int], config: dict) -> dict:
    """The one-screen account of a build: every CSV row is written to a split or skipped with a reason."""
    skipped = sorted(csv_skipped + image_skipped, key=lambda s: s.row)
    by_reason: dict[str, list[Skipped]] = collections.defaultdict(list)
    for s in skipped:
        by_reason[s.reason].append(s)
    split_counts = dict(stats["split_sizes"])
    written = sum(split_counts.values())
    summary = {
        "csv_rows": csv_rows,
        "written": written,
        "skipped": len(skipped),
        "accounted": written + len(skipped) == csv_rows,
        "splits": dict(sorted(split_counts.items())),
        "skipped_by_reason": {r: len(v) for r, v in sorted(by_reason.items())},
        "skipped_examples": {r: [dataclasses.asdict(s) for s in v[:_EXAMPLES_PER_REASON]] for r, v in sorted(by_reason.items())},
        "converted_images": stats["converted_images"],  # re-encoded images; each counts under every reason:
        "converted": stats["converted"],  # png, grayscale, cmyk, png_16bit, ..., rotated (EXIF orientation)
        "converted_examples": stats["converted_examples"],
        "groups": {"count": sum(group_sizes.values()),
                   "multi_image_groups": sum(n for size, n in group_sizes.items() if size > 1),
                   "size_histogram": {str(k): v for k, v in sorted(group_sizes.items())}},
        "class_counts": stats["class_counts"],
        "config": config,
    }
    return summary


def skipped_rows_csv(csv_skipped: list[Skipped], image_skipped: list[Skipped]) -> str:
    """Every skipped row, one line each, so none is lost even when the summary shows only examples."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["row", "image_id", "reason", "message"])
    for s in sorted(csv_skipped + image_skipped, key=lambda s: s.row):
        w.writerow([s.row, csv_cells.as_text(s.image_id), s.reason, csv_cells.as_text(s.message)])
    return out.getvalue()


def write_json(path: str, obj) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False))


class BuildSplits(beam.PTransform):
    """Batches of Annotations -> {split name: batches of (split, group, CheckedImage, shared)} for each split,
    plus "summary" (one summary dict) and "skipped" (a Skipped record for every row the images step refused;
    those refused from the CSV came in). `shard_writer.WriteSplit` writes a split's batches.

    The near-duplicate map joins the checked images as a side input that holds only images that have a
    near-duplicate (about 50 of the 7,000 real ones); the checked images carry no bytes across that join
    (the shard writer reads them again), so image bytes cross no shuffle or materialisation.
    """

    def __init__(self, data: ManualData, schema: Schema, *, threshold: float, split_seed: int, fractions,
                 split_by: str = "group", strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                 csv_rows: int = 0, csv_skipped: tuple[Skipped, ...] = (), config: dict | None = None):
        """csv_rows and csv_skipped: the CSV's row count and the rows refused before Beam, for the summary's
        account; config: the build recipe the summary records."""
        super().__init__()
        self._data, self._schema = data, schema
        self._threshold, self._seed, self._fractions, self._split_by = threshold, split_seed, fractions, split_by
        self._strict, self._max_pixels = strict, max_pixels
        self._csv_rows, self._csv_skipped = csv_rows, list(csv_skipped)
        self._config = config or {}

    def expand(self, annotations):
        checked = annotations | "ReadAndCheckImages" >> beam.ParDo(
            ReadAndCheckImages(self._data, self._strict, self._max_pixels)).with_outputs(SKIPPED_TAG, main="checked")
        images = checked.checked
        near = (images | "UngroupedSignatures" >> beam.FlatMap(
                    lambda b: [(c.annotation.image_id, c.signature) for c in b if not c.annotation.group])
                | "NearDuplicates" >> NearDuplicateGroups(self._threshold))
        groups = beam.pvalue.AsDict(near)
        if self._split_by == "row":
            order = (images | "RowNumbers" >> beam.Map(lambda b: np.array([c.annotation.row for c in b]))
                     | "CollectRowNumbers" >> beam.combiners.ToList()
                     | "SortRows" >> beam.Map(lambda parts: np.sort(np.concatenate(parts))))
            assigned = images | "AssignSplitsByRow" >> beam.Map(
                _assign_split_by_row, groups=groups, order=beam.pvalue.AsSingleton(order), fractions=self._fractions)
        else:
            assigned = images | "AssignSplits" >> beam.Map(
                _assign_split, groups=groups, seed=self._seed, fractions=self._fractions)

        stats = assigned | "CountClasses" >> beam.CombineGlobally(ClassCounts(self._schema))
        image_skipped = checked[SKIPPED_TAG] | "CollectSkipped" >> beam.combiners.ToList()
        summary = (
            annotations.pipeline
            | "SummaryTrigger" >> beam.Create([None])
            | "Summarise" >> beam.Map(
                _summarise, csv_rows=self._csv_rows, csv_skipped=self._csv_skipped,
                image_skipped=beam.pvalue.AsSingleton(image_skipped), stats=beam.pvalue.AsSingleton(stats),
                config=self._config)
        )
        names = [name for name, _ in self._fractions]
        parts = assigned | "PartitionBySplit" >> beam.ParDo(_BySplit()).with_outputs(*names)
        out = {name: parts[name] for name in names}
        out["summary"] = summary
        out["skipped"] = checked[SKIPPED_TAG]
        return out


def _group_of(item: CheckedImage, groups: dict) -> tuple[str, bool]:
    """The image's group, and whether other images may share it (a CSV group, or a near-duplicate)."""
    ann = item.annotation
    if ann.group:
        return ann.group, True
    group = groups.get(ann.image_id)
    return (ann.image_id, False) if group is None else (group, True)


def _assign_split(batch: list[CheckedImage], groups: dict, seed: int, fractions) -> list[tuple]:
    out = []
    for item in batch:
        group, shared = _group_of(item, groups)
        out.append((grouping.split_of(group, seed, fractions), group, item, shared))
    return out


def _assign_split_by_row(batch: list[CheckedImage], groups: dict, order, fractions) -> list[tuple]:
    ranks = np.searchsorted(order, [item.annotation.row for item in batch])
    out = []
    for item, rank in zip(batch, ranks):
        group, shared = _group_of(item, groups)
        out.append((grouping.split_at(int(rank) / len(order), fractions), group, item, shared))
    return out


class _BySplit(beam.DoFn):
    """A batch of (split, ...) -> one batch per split it holds, on the output named after the split."""

    def process(self, batch):
        parts = collections.defaultdict(list)
        for element in batch:
            parts[element[0]].append(element)
        for name, part in parts.items():
            yield beam.pvalue.TaggedOutput(name, part)


def _summarise(_, csv_rows, csv_skipped, image_skipped, stats, config):
    return build_summary(csv_rows, csv_skipped, image_skipped, stats, stats["group_sizes"], config)
