"""The build's reader of remote manual data (`--manual_dir gs://...`), on TensorFlow's in-memory filesystem.

    python -m pytest -q tests/test_cloud_gcs.py

Paths with a scheme are read through tf.io.gfile, as `gs://` is. TensorFlow's GCS filesystem cannot be pointed
at a local emulator (docs/cloud.md), so these tests put the manual data under `ram://`, which takes the same
branch of the same code.
"""

import pathlib
import pickle
import posixpath
import zipfile

import pytest
import tensorflow as tf

from tests import data_fixtures as fx
from tfds_person_attrs.annotation_rows import parse_annotations
from tfds_person_attrs.build_errors import SourceChangedError
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.schema import HVC

N_IMAGES, N_MISSING = 20, 2


def _upload(local: pathlib.Path, uri: str) -> None:
    """Copies a local file or folder to `uri` with tf.io.gfile."""
    files = [local] if local.is_file() else [p for p in local.rglob("*") if p.is_file()]
    for p in files:
        dst = uri if local.is_file() else posixpath.join(uri, p.relative_to(local).as_posix())
        tf.io.gfile.makedirs(posixpath.dirname(dst))
        tf.io.gfile.GFile(dst, "wb").write(p.read_bytes())


@pytest.fixture
def remote_slice(tmp_path):
    """A slice of hvc (its CSV and images, some rows missing their image) under a fresh ram:// folder."""
    local = fx.write_real_slice(tmp_path / "manual", N_IMAGES, num_missing=N_MISSING)
    uri = f"ram://{tmp_path.name}/raw/hvc"
    _upload(local, uri)
    return local, uri


def test_a_remote_folder_reads_every_row_and_image(remote_slice):
    local, uri = remote_slice
    manual = ManualData(uri, HVC)
    assert manual.source_file == f"{uri}/{HVC.csv_name}"
    assert manual.read_csv_bytes() == (local / HVC.csv_name).read_bytes()
    annotations, skipped = parse_annotations(manual.read_csv_bytes(), HVC)
    assert len(annotations) + len(skipped) == N_IMAGES + N_MISSING
    images = {a.image_id: manual.read_image(a.image_id) for a in annotations}
    assert {i for i, img in images.items() if img is None} == {a.image_id for a in annotations[-N_MISSING:]}
    assert all(img == (local / i).read_bytes() for i, img in images.items() if img is not None)
    # A remote folder is fingerprinted by its CSV alone: one request, not one per image.
    fingerprint = manual.fingerprint()
    assert "images_sha256" not in fingerprint and "images_sha256" in ManualData(str(local), HVC).fingerprint()
    assert fingerprint["sha256"] == ManualData(str(local), HVC).fingerprint()["sha256"]


def test_a_remote_zip_reads_every_row_and_image(remote_slice, tmp_path):
    local, _ = remote_slice
    zipped = tmp_path / "hvc_data.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for p in local.rglob("*"):
            if p.is_file():
                z.write(p, p.relative_to(local).as_posix())
    uri = f"ram://{tmp_path.name}/zips/hvc_data.zip"
    _upload(zipped, uri)

    manual = ManualData(posixpath.dirname(uri), HVC)  # the folder holding the zip finds it
    assert manual.source_file == uri
    annotations, skipped = parse_annotations(manual.read_csv_bytes(), HVC)
    assert len(annotations) + len(skipped) == N_IMAGES + N_MISSING
    images = [manual.read_image(a.image_id) for a in annotations]
    assert sum(img is not None and img[:2] == b"\xff\xd8" for img in images) == N_IMAGES
    assert manual.fingerprint()["sha256"] == ManualData(str(zipped), HVC).fingerprint()["sha256"]


def _replace(uri: str, data: bytes) -> None:
    tf.io.gfile.remove(uri)  # ram:// appends when a file is written again
    tf.io.gfile.GFile(uri, "wb").write(data)


def test_a_remote_zip_replaced_after_parsing_is_never_read_with_the_old_rows(remote_slice, tmp_path):
    """The replacement holds the same names and CSV, each image under the next name: a worker that read it
    with the rows parsed from the first zip would give every image another picture's labels. ram:// keeps no
    modification time, so one replacement also differs in size (as a new GCS object differs in its time), and
    one keeps the size exactly: the end-of-build check reads the directory again and catches both."""
    local, _ = remote_slice
    images = sorted(p.relative_to(local).as_posix() for p in local.rglob("*.jpg"))
    first, shifted, grown = tmp_path / "first.zip", tmp_path / "shifted.zip", tmp_path / "grown.zip"
    for path, shift in ((first, 0), (shifted, 1), (grown, 1)):
        with zipfile.ZipFile(path, "w") as z:
            z.write(local / HVC.csv_name, HVC.csv_name)
            for i, name in enumerate(images):
                z.write(local / images[(i + shift) % len(images)], name)
            if path == grown:
                z.writestr("extra.txt", "x")
    assert shifted.stat().st_size == first.stat().st_size
    uri = f"ram://{tmp_path.name}/replaced/hvc_data.zip"
    _upload(first, uri)

    launcher = ManualData(uri, HVC)
    fingerprint = launcher.fingerprint()  # parses the CSV and the directory, once
    _replace(uri, shifted.read_bytes())
    with pytest.raises(SourceChangedError, match=f"{uri} changed during the build .*its directory differs"):
        launcher.check_content_unchanged()
    assert ManualData(uri, HVC).fingerprint() != fingerprint

    _replace(uri, first.read_bytes())
    launcher = ManualData(uri, HVC)
    launcher.read_csv_bytes()
    worker = pickle.loads(pickle.dumps(launcher))  # what Beam hands each step that reads images
    _replace(uri, grown.read_bytes())
    with pytest.raises(SourceChangedError, match=f"{uri} changed during the build .*its directory .* is not the one"):
        worker.read_image(images[0])


def test_a_remote_csv_changed_after_parsing_fails_the_end_check(remote_slice):
    local, uri = remote_slice
    manual = ManualData(uri, HVC)
    manual.read_csv_bytes()
    manual.check_content_unchanged()  # unchanged: passes
    _replace(f"{uri}/{HVC.csv_name}", (local / HVC.csv_name).read_bytes() + b"\n")
    with pytest.raises(SourceChangedError, match="its CSV differs from what the build parsed"):
        manual.check_content_unchanged()
