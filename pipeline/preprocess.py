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

from tfds_person_attrs import grouping
from trainer import cli
from trainer.cli import UserError
from tfds_person_attrs.annotations import ManualData, ManualDataError
from tfds_person_attrs.schema import BUILTIN_SCHEMAS, SchemaError, load_schema


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
    p.add_argument("--dedup_threshold", type=int, default=grouping.DEFAULT_THRESHOLD,
                   help="max Hamming distance (of 64 bits) between perceptual hashes of one near-duplicate group")
    p.add_argument("--strict", action="store_true", help="fail on the first row that would be skipped")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
    return p.parse_known_args(argv)


def make_builder(args: argparse.Namespace):
    from tfds_person_attrs.person_attrs.person_attrs_dataset_builder import Builder, PersonAttrsConfig

    schema = load_schema(args.schema) if args.schema else BUILTIN_SCHEMAS.get(args.config)
    if schema is None:
        raise SchemaError(f"--config {args.config!r} is not a built-in schema ({sorted(BUILTIN_SCHEMAS)}); "
                          "pass --schema FILE for your own")
    recipe = dict(split_seed=args.split_seed, split_fractions=grouping.parse_fractions(args.split),
                  dedup_threshold=args.dedup_threshold, split_by=args.split_by)
    config = PersonAttrsConfig.from_schema(schema, **recipe)
    builtin = {c.name: c for c in Builder.BUILDER_CONFIGS}.get(config.name)
    if builtin is not None and builtin != config:
        # TFDS keeps one directory per config name: another split recipe must not overwrite the default one.
        shares = "-".join(f"{f:g}" for _, f in recipe["split_fractions"])
        if args.split_by == "row":
            name = f"{schema.name}_byrow_split{shares}".replace(".", "p")
        else:
            name = f"{schema.name}_seed{args.split_seed}_dedup{args.dedup_threshold}_split{shares}".replace(".", "p")
        config = dataclasses.replace(config, name=name)
    return Builder(config=builtin if builtin == config else config, data_dir=args.data_dir, strict=args.strict)


def beam_options(beam_args: list[str]):
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
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from pipeline.summary import format_summary
    from tfds_person_attrs.person_attrs.person_attrs_dataset_builder import SUMMARY_FILE

    args, beam_args = parse_args(argv)
    builder = make_builder(args)
    ManualData(args.manual_dir, builder.schema)  # fails fast, with advice, before TFDS or Beam start
    manual_dir = posixpath.dirname(args.manual_dir) if args.manual_dir.endswith(".zip") else args.manual_dir
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if args.overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    options = beam_options(beam_args)
    start = time.time()
    logging.info("building %s into %s with Beam options %s", builder.info.full_name, builder.data_dir, beam_args)
    with cli.library_stdout_muted():  # TFDS prints "Downloading and preparing dataset ..." for every build
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, beam_options=options, download_mode=mode))
    with tf.io.gfile.GFile(posixpath.join(str(builder.data_dir), SUMMARY_FILE)) as f:
        summary = json.load(f)
    summary["seconds"] = round(time.time() - start, 1)
    summary["dataset_dir"] = str(builder.data_dir)
    print(format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (ManualDataError, SchemaError, UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - Beam wraps worker errors; surface ours without the stack
        from tfds_person_attrs.beam_transforms import StrictModeError

        if isinstance(e, StrictModeError) or "StrictModeError" in str(e):
            msg = str(e)
            start = msg.find("--strict:")
            print(f"error: {msg[start:].splitlines()[0] if start >= 0 else msg}", file=sys.stderr)
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
