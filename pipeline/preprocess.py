"""Build the `person_attrs` dataset with Apache Beam: CSV + JPEGs in, sharded TFRecords and a summary out.

    python -m pipeline.preprocess --manual_dir ../shared/data --data_dir out/data
    python -m pipeline.preprocess --manual_dir gs://B/raw --data_dir gs://B/data --runner DataflowRunner \
        --project P --region us-central1 --temp_location gs://B/tmp --setup_file ./setup.py
    python -m pipeline.preprocess --manual_dir my_data/ --schema my_schema.yaml --data_dir out/data --strict

Flags this launcher does not know are Beam pipeline options (--runner, --direct_num_workers,
--direct_running_mode, --project, --region, --temp_location, --setup_file, ...). On the DirectRunner the
default is one in-process worker: for 7,000 images that is faster than spawning worker processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import posixpath
import sys
import time

import tensorflow as tf
import tensorflow_datasets as tfds

from tfds_person_attrs import cli, grouping
from tfds_person_attrs.build_errors import ImageChangedError, ManualDataError, SourceChangedError, StrictModeError
from tfds_person_attrs.cli import UserError
from tfds_person_attrs.images import DEFAULT_MAX_PIXELS
from tfds_person_attrs.manual_data import DEFAULT_MAX_IMAGE_BYTES, ManualData
from tfds_person_attrs.person_attrs.person_attrs_dataset_builder import SUMMARY_FILE, Builder, PersonAttrsConfig
from tfds_person_attrs.schema import BUILTIN_SCHEMAS, SchemaError, load_schema
from tfds_person_attrs.summary import format_summary


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manual_dir", required=True, help="folder or .zip holding the CSV and images (local or gs://)")
    p.add_argument("--data_dir", required=True, help="TFDS data dir to write person_attrs/<config>/<version> into")
    p.add_argument("--config", default="hvc", help=f"built-in schema name: {sorted(BUILTIN_SCHEMAS)}")
    p.add_argument("--schema", help="a YAML/JSON schema file for another CSV-labelled dataset (overrides --config)")
    p.add_argument("--split", default="80,10,10", help="train,validation,test shares (default 80,10,10)")
    p.add_argument("--split_seed", type=int, default=0, help="seed of the group -> split hash")
    p.add_argument("--split_by", choices=grouping.SPLIT_BY, default="group",
                   help="group: leak-proof hash of near-duplicate groups (default); row: CSV row order, the first "
                        "80%% of the images train (the naive split of earlier work, for comparison only)")
    p.add_argument("--dedup_threshold", type=float, default=grouping.DEFAULT_THRESHOLD,
                   help="least similarity (cosine of image signatures, 0-1; mirror images count) for two images "
                        "to share a near-duplicate group (default %(default)s)")
    p.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="skip (and report) images larger than this many pixels, before decoding them "
                        "(default: PIL's limit, %(default)s)")
    p.add_argument("--max_image_bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES,
                   help="skip (and report) image files larger than this many bytes without reading them (a zip "
                        "member: its uncompressed size, from its header; default %(default)s, 256 MiB)")
    p.add_argument("--follow_symlinks", nargs="+", default=[], metavar="DIR",
                   help="read images that are symbolic links into these folders (a manual folder of links into an "
                        "image store); by default a link that leads outside the manual dir is refused")
    p.add_argument("--num_shards", type=int, default=None,
                   help="TFRecord files per split (default: TFDS's choice by size); more files let more readers, "
                        "e.g. multi-worker training's FILE sharding, each take whole files")
    p.add_argument("--strict", action="store_true", help="fail on the first row that would be skipped")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild even if the dataset exists (needed when its source has changed since)")
    return p.parse_known_args(argv)


def make_builder(args: argparse.Namespace):
    schema = load_schema(args.schema) if args.schema else BUILTIN_SCHEMAS.get(args.config)
    if schema is None:
        raise SchemaError(f"--config {args.config!r} is not a built-in schema ({sorted(BUILTIN_SCHEMAS)}); "
                          "pass --schema FILE for your own")
    if not 0 < args.dedup_threshold <= 1:
        raise ValueError(f"--dedup_threshold {args.dedup_threshold}: give a similarity in (0, 1], e.g. "
                         f"{grouping.DEFAULT_THRESHOLD} (the default); higher joins fewer images")
    recipe = grouping.SplitRecipe(split_seed=args.split_seed, split_fractions=grouping.parse_fractions(args.split),
                                  dedup_threshold=args.dedup_threshold, split_by=args.split_by)
    config = PersonAttrsConfig.from_schema(schema, recipe=recipe)
    builtin = {c.name: c for c in Builder.BUILDER_CONFIGS}.get(config.name)
    if builtin is not None and builtin != config:
        # TFDS keeps one directory per config name: another split recipe must not overwrite the default one.
        config = dataclasses.replace(config, name=recipe.config_name(schema.name))
    return Builder(config=builtin if builtin == config else config, data_dir=args.data_dir, strict=args.strict,
                   max_image_pixels=args.max_image_pixels, max_image_bytes=args.max_image_bytes,
                   follow_symlinks=tuple(args.follow_symlinks), manual_source=args.manual_dir)


def beam_options(beam_args: list[str]):
    # heavy, and only after the command's quiet output is set up: importing it logs through the root logger
    from apache_beam.options.pipeline_options import PipelineOptions

    if not any(a.startswith("--runner") for a in beam_args):
        beam_args = ["--runner=DirectRunner"] + beam_args
    if not any(a.startswith("--direct_num_workers") for a in beam_args):
        beam_args = beam_args + ["--direct_num_workers=1"]
    options = PipelineOptions(beam_args)
    # Beam drops flags it does not know with a log line; a mistyped flag of ours would vanish the same way.
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    if unknown:
        raise UserError(f"unknown flag(s) {', '.join('--' + u for u in unknown)}: neither this command's "
                        "(see --help) nor a Beam pipeline option")
    return options


def run(argv: list[str] | None = None) -> dict:
    """Builds the dataset and returns its summary (also written beside it as build_summary.json)."""

    args, beam_args = parse_args(argv)
    builder = make_builder(args)
    # Fails fast, with advice, before TFDS or Beam start.
    source = ManualData(args.manual_dir, builder.schema, follow_symlinks=tuple(args.follow_symlinks),
                        max_image_bytes=args.max_image_bytes)
    summary_path = posixpath.join(str(builder.data_dir), SUMMARY_FILE)
    if not args.overwrite and tf.io.gfile.exists(posixpath.join(str(builder.data_dir), "dataset_info.json")):
        summary = _reused_summary(summary_path, source)
        print(f"reused the dataset built from {summary['source']['file']} at {summary['built_at']} "
              f"(sha256 {summary['source']['sha256'][:16]}...; --overwrite rebuilds it)")
        print(format_summary(summary))
        return summary
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if args.overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    options = beam_options(beam_args)
    start = time.time()
    logging.info("building %s into %s with Beam options %s", builder.info.full_name, builder.data_dir, beam_args)
    with cli.library_stdout_muted():  # TFDS prints "Downloading and preparing dataset ..." for every build
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=posixpath.dirname(source.source_file) or ".", beam_options=options, download_mode=mode,
            num_shards=args.num_shards))
    with tf.io.gfile.GFile(summary_path) as f:
        summary = json.load(f)
    summary["seconds"] = round(time.time() - start, 1)
    summary["dataset_dir"] = str(builder.data_dir)
    print(format_summary(summary))
    return summary


def _reused_summary(summary_path: str, source: ManualData) -> dict:
    """The summary of the dataset already built here, if it was built from this very source; else an error."""
    dataset_dir = posixpath.dirname(summary_path)
    recorded = {}
    if tf.io.gfile.exists(summary_path):
        with tf.io.gfile.GFile(summary_path) as f:
            recorded = json.load(f)
    now = source.fingerprint()
    if _content(recorded.get("source")) != _content(now):
        was = recorded.get("source") or {"file": "an unrecorded source", "sha256": "unknown"}
        raise StaleDatasetError(
            f"{dataset_dir} was built from {was['file']} (sha256 {was['sha256'][:16]}...), but {now['file']} "
            f"(sha256 {now['sha256'][:16]}...) is not that data any more: pass --overwrite to rebuild it, or another "
            "--data_dir to keep both")
    recorded["dataset_dir"] = dataset_dir
    return recorded


def _content(fingerprint: dict | None) -> dict:
    """A source fingerprint without its path: the same data reached by another path is still the same data."""
    return {k: v for k, v in (fingerprint or {}).items() if k != "file"}


class StaleDatasetError(ValueError):
    """The dataset in --data_dir was built from other data than the source named now."""


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (ManualDataError, SchemaError, UserError, ValueError, SourceChangedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - Beam wraps worker errors; surface ours without the stack

        for stop, status in ((StrictModeError, 3), (ImageChangedError, 2), (SourceChangedError, 2)):
            msg, marker = str(e), f"{stop.__name__}: "
            if isinstance(e, stop) or marker in msg:
                start = msg.find(marker)
                print(f"error: {msg[start + len(marker):] if start >= 0 else msg}".splitlines()[0], file=sys.stderr)
                return status
        raise
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
