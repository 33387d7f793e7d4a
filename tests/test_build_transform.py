"""The Beam part of the build as one composite transform (`BuildSplits`) under TestPipeline, and the whole
build under three runners: the in-process DirectRunner (default), the multi-process DirectRunner, and the
PortableRunner against Beam's own Python job service on localhost (the portable Fn API path that Dataflow
Runner v2, Flink and Spark use). All three must write the same record bytes.

    python -m pytest -q tests/test_build_transform.py
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import sys

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from PIL import Image

from pipeline import preprocess
from tests.local_server import serving
from tfds_person_attrs.annotation_rows import parse_annotations
from tfds_person_attrs.beam_transforms import BuildSplits
from tfds_person_attrs.demo.generate import write_demo_data
from tfds_person_attrs.grouping import DEFAULT_FRACTIONS
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.schema import HVC


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """40 demo images, a mirrored copy of image 3 and a row whose image is missing."""
    root = pathlib.Path(write_demo_data(str(tmp_path_factory.mktemp("demo")), num_images=40, seed=7, num_missing=1))
    mirror = Image.open(root / "resized" / "3.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    mirror.save(out, "JPEG", quality=90)
    (root / "resized" / "mirror_of_3.jpg").write_bytes(out.getvalue())
    lines = (root / HVC.csv_name).read_text().splitlines()
    mirror = lines[3].replace("resized/3.jpg", "resized/mirror_of_3.jpg")
    (root / HVC.csv_name).write_text("\n".join(lines + [mirror]) + "\n")
    return root


def test_build_splits_under_test_pipeline(source):
    data = ManualData(str(source), HVC)
    annotations, csv_skipped = parse_annotations(data.read_csv_bytes(), HVC)
    assert len(annotations) == 42 and not csv_skipped

    def check_summary(summaries):
        (s,) = summaries
        if not (s["accounted"] and s["csv_rows"] == 42 and s["written"] == 41
                and s["skipped_by_reason"] == {"missing_image": 1}
                and s["groups"]["multi_image_groups"] == 1 and s["groups"]["size_histogram"] == {"1": 39, "2": 1}
                and sum(s["splits"].values()) == 41):
            raise BeamAssertException(f"unexpected summary {s}")

    def check_mirror_with_its_source(rows):
        where = {i: (split, group) for split, i, group in rows}
        if len(where) != 41 or where["resized/mirror_of_3.jpg"] != where["resized/3.jpg"]:
            raise BeamAssertException(f"the mirror is not with its source: {len(where)} ids")

    with TestPipeline() as p:
        batches = [annotations[i:i + 16] for i in range(0, len(annotations), 16)]  # as the builder reads them
        parts = p | beam.Create(batches) | BuildSplits(
            data, HVC, threshold=0.85, split_seed=0, fractions=DEFAULT_FRACTIONS, csv_rows=42, config={"test": 1})
        tagged = [parts[name] | f"Tag{name}" >> beam.FlatMap(
                      lambda batch, s=name: [(s, e[2].annotation.image_id, e[1]) for e in batch])
                  for name, _ in DEFAULT_FRACTIONS]
        assert_that(tagged | beam.Flatten(), check_mirror_with_its_source, label="MirrorWithSource")
        assert_that(parts["summary"], check_summary, label="Summary")
        assert_that(parts["skipped"] | beam.Map(lambda s: (s.row, s.reason)), equal_to([(41, "missing_image")]),
                    label="Skipped")


@contextlib.contextmanager
def beam_job_service():
    """Beam's own Python job service (what Flink/Spark/Dataflow job servers stand in for) on a local port."""
    with serving([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port",
                  "{port}"], "the Beam job service", host="localhost") as (host, port):
        yield f"{host}:{port}"


def _records(dataset_dir: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dataset_dir.glob("*.tfrecord*"))}


def test_three_runners_write_the_same_record_bytes(source, tmp_path):
    built = {}
    runs = {
        "direct": [],
        "direct_multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    }
    for name, beam_args in runs.items():
        preprocess.run(["--manual_dir", str(source), "--data_dir", str(tmp_path / name), *beam_args])
        built[name] = _records(tmp_path / name / "person_attrs" / "hvc" / "1.0.0")
    with beam_job_service() as endpoint:
        summary = preprocess.run(["--manual_dir", str(source), "--data_dir", str(tmp_path / "portable"),
                                  "--runner=PortableRunner", f"--job_endpoint={endpoint}",
                                  "--environment_type=LOOPBACK"])
    built["portable"] = _records(tmp_path / "portable" / "person_attrs" / "hvc" / "1.0.0")
    assert summary["written"] == 41 and len(built["direct"]) == 3
    assert built["direct_multi_processing"] == built["direct"]
    assert built["portable"] == built["direct"]


def test_split_sizes_count_images_when_the_first_head_is_multi_label(tmp_path):
    """A multi-label image has 0..L positives, so a split's size is not any head's count sum."""
    import dataclasses

    from tests.trainer_fixtures import MULTI_SCHEMA, write_multi_csv

    schema = dataclasses.replace(MULTI_SCHEMA, attributes=MULTI_SCHEMA.attributes[::-1])  # clothes (multi) first
    root = write_demo_data(str(tmp_path), num_images=30, seed=2, num_missing=0)
    write_multi_csv(root)
    data = ManualData(root, schema)
    annotations, csv_skipped = parse_annotations(data.read_csv_bytes(), schema)
    assert len(annotations) == 30 and not csv_skipped
    positives = sum(sum(a.labels["clothes"]) for a in annotations)
    assert positives != 30  # else this data could not tell the two counts apart

    def check_summary(summaries):
        (s,) = summaries
        if not (s["accounted"] and s["written"] == 30 and sum(s["splits"].values()) == 30):
            raise BeamAssertException(f"unexpected summary {s}")

    with TestPipeline() as p:
        parts = p | beam.Create([annotations]) | BuildSplits(
            data, schema, threshold=0.85, split_seed=0, fractions=DEFAULT_FRACTIONS, csv_rows=30, config={})
        assert_that(parts["summary"], check_summary, label="Summary")
