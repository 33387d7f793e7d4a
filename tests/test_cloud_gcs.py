"""gs:// round trips through a real GCS JSON API on localhost (gcp-storage-emulator), no cloud account.

    python -m pytest -q tests/test_cloud_gcs.py
"""

import csv
import io
import json
import os
import pathlib
import socket
import zipfile

import pytest

from trainer import gcs

BUCKET = "person-attrs-test"


@pytest.fixture
def emulator(monkeypatch):
    """A GCS emulator on a free loopback port, with STORAGE_EMULATOR_HOST pointing at it and one bucket."""
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        client = gcs.client()
        client.create_bucket(BUCKET)
        yield client
    finally:
        server.stop()


@pytest.fixture
def hvc_slice(tmp_path, hvc_zip):
    """The first 50 CSV rows of hvc_data.zip and their images, as a small zip in tmp (never in the repo)."""
    out = tmp_path / "hvc_data.zip"
    with zipfile.ZipFile(hvc_zip) as src, zipfile.ZipFile(out, "w") as dst:
        text = src.read("hvc_annotations.csv").decode()
        rows = list(csv.reader(io.StringIO(text)))[:51]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        dst.writestr("hvc_annotations.csv", buf.getvalue())
        names = set(src.namelist())
        for row in rows[1:]:
            if row[-1] in names:
                dst.writestr(row[-1], src.read(row[-1]))
    return out


def _tree(root):
    root = pathlib.Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_manual_data_round_trip(emulator, hvc_slice, tmp_path):
    # Upload the slice both ways users keep it: the zip as one object, and extracted under a prefix.
    extracted = tmp_path / "extracted"
    zipfile.ZipFile(hvc_slice).extractall(extracted)
    assert gcs.upload(hvc_slice, f"gs://{BUCKET}/raw/") == [f"gs://{BUCKET}/raw/hvc_data.zip"]
    written = gcs.upload(extracted, f"gs://{BUCKET}/raw/hvc")
    assert len(written) == len(_tree(extracted)) > 40  # the CSV and its images

    listed = gcs.list_uris(f"gs://{BUCKET}/raw/hvc")
    assert listed == sorted(written) and f"gs://{BUCKET}/raw/hvc/hvc_annotations.csv" in listed
    assert gcs.list_uris(f"gs://{BUCKET}/raw/hvc_data.zip") == [f"gs://{BUCKET}/raw/hvc_data.zip"]

    staged_zip = gcs.stage_from_gcs(f"gs://{BUCKET}/raw/hvc_data.zip", tmp_path / "stage1")
    assert pathlib.Path(staged_zip).read_bytes() == hvc_slice.read_bytes()
    staged_dir = pathlib.Path(gcs.stage_from_gcs(f"gs://{BUCKET}/raw/hvc/", tmp_path / "stage2"))
    assert _tree(staged_dir) == _tree(extracted)
    # What the builder needs from it: the CSV, and a JPEG behind every image path it names that exists.
    rows = list(csv.DictReader((staged_dir / "hvc_annotations.csv").open()))
    assert len(rows) == 50
    assert all((staged_dir / r["image_path"]).read_bytes()[:2] == b"\xff\xd8" for r in rows)
    assert gcs.stage_from_gcs(str(extracted), tmp_path / "unused") == str(extracted)  # local passes through


def test_builder_reads_staged_manual_data(emulator, hvc_slice, tmp_path):
    """The project's own manual-data reader on a zip staged from gs:// (its gfile reads cannot reach the emulator)."""
    from tfds_person_attrs.annotations import ManualData, parse_annotations
    from tfds_person_attrs.schema import HVC

    gcs.upload(hvc_slice, f"gs://{BUCKET}/raw/hvc_data.zip")
    manual = ManualData(gcs.stage_from_gcs(f"gs://{BUCKET}/raw/hvc_data.zip", tmp_path), HVC)
    annotations, skipped = parse_annotations(manual.read_csv_bytes(), HVC)
    assert len(annotations) + len(skipped) == 50
    images = [manual.read_image(a.image_id) for a in annotations]
    assert sum(img is not None and img[:2] == b"\xff\xd8" for img in images) == len(annotations) > 40


def test_report_publish_and_fetch(emulator, tmp_path, capsys):
    report = tmp_path / "eval"
    (report / "plots").mkdir(parents=True)
    (report / "metrics.json").write_text(json.dumps({"mean_accuracy": 0.5}))
    (report / "report.html").write_text("<html><img src='plots/cm_gender.png'></html>")
    (report / "plots" / "cm_gender.png").write_bytes(b"\x89PNG fake")
    uri = f"gs://{BUCKET}/jobs/run1/eval"

    assert gcs.main(["cp", str(report), uri]) == 0
    capsys.readouterr()
    assert gcs.main(["ls", f"gs://{BUCKET}/jobs/run1"]) == 0
    assert capsys.readouterr().out.split() == [f"{uri}/metrics.json", f"{uri}/plots/cm_gender.png",
                                               f"{uri}/report.html"]
    gcs.copy(uri, str(tmp_path / "back"))
    assert _tree(tmp_path / "back") == _tree(report)
    one = tmp_path / "one"
    one.mkdir()
    gcs.copy(f"{uri}/metrics.json", str(one))  # one object into an existing folder keeps its name
    assert json.loads((one / "metrics.json").read_text()) == {"mean_accuracy": 0.5}


def test_missing_objects_fail_clearly(emulator, tmp_path):
    with pytest.raises(FileNotFoundError, match="no objects at"):
        gcs.download(f"gs://{BUCKET}/nothing/here", tmp_path)
    with pytest.raises(ValueError, match="not a gs:// URI"):
        gcs.split_uri("/local/path")
    assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
