"""The Beam build through its public entry point: every CSV row is written or skipped with its reason.

One messy build (a slice of the real data plus planted bad rows and near-duplicates) serves most tests,
since each Beam build costs seconds; CSV-level failures stop before Beam and are checked separately.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from pipeline import preprocess
from tests import data_fixtures as fx
from tfds_person_attrs.annotation_rows import parse_annotations
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.schema import HVC
from tfds_person_attrs.summary import format_summary

N_REAL = 40
_SIDEWAYS = 6  # EXIF orientation: stored turned 90 degrees counter-clockwise, shown turned clockwise


def _phone_photo(upright: bytes) -> bytes:
    """A real image stored sideways with EXIF orientation 6, as a phone writes a portrait photo."""
    exif = Image.Exif()
    exif[0x0112] = _SIDEWAYS
    out = io.BytesIO()
    Image.open(io.BytesIO(upright)).transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=95,
                                                                              exif=exif.tobytes())
    return out.getvalue()


def _png_16bit() -> bytes:
    """A 16-bit grayscale PNG ramp over the whole range (clipped to 8 bits it would be mostly white)."""
    y, x = np.mgrid[0:96, 0:64]
    out = io.BytesIO()
    Image.fromarray((x * 600 + y * 280).astype(np.uint16)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    src = fx.write_real_slice(root / "manual", N_REAL, num_missing=5)
    header, rows = fx.real_rows()
    rows = rows[:N_REAL] + rows[7000:7005]
    first = (src / rows[4]["image_path"]).read_bytes()
    second = (src / rows[9]["image_path"]).read_bytes()
    planted = {
        "planted/reencoded_of_5.jpg": fx.reencoded(first, quality=60),
        "planted/shifted_of_10.jpg": fx.reencoded(second, quality=90, shift=4),
        "planted/truncated.jpg": first[: len(first) // 2],
        "planted/not_an_image.jpg": b"this is text, not a JPEG",
        "planted/png.png": fx.encoded("RGB", "PNG"),
        "planted/gray.jpg": fx.encoded("L"),
        "planted/cmyk.jpg": fx.encoded("CMYK", seed=1),
        "planted/phone.jpg": _phone_photo(second),
        "planted/gray16.png": _png_16bit(),
    }
    (src / "planted").mkdir()
    for name, data in planted.items():
        (src / name).write_bytes(data)
        rows.append({**rows[0], "image_path": name, "filename": name})
    rows.append({**rows[1], "gender": "unknown", "image_path": "resized/2.jpg"})  # duplicate id AND bad label
    rows.append({**rows[2], "image_path": "planted/bad_label.jpg", "age": "100+"})
    rows.append({**rows[3]})  # an exact duplicate row: same image id as row 4
    fx.write_csv(src / fx.CSV_NAME, header, rows)
    summary = preprocess.run(["--manual_dir", str(src), "--data_dir", str(root / "data")])
    return summary, root / "data" / "person_attrs" / "hvc" / "1.0.0", len(rows)


def test_every_row_is_written_or_skipped_with_its_reason(messy):
    summary, ds_dir, n_rows = messy
    assert summary["csv_rows"] == n_rows
    assert summary["accounted"] and summary["written"] + summary["skipped"] == n_rows
    assert summary["skipped_by_reason"] == {"bad_label": 1, "duplicate_id": 2, "missing_image": 5,
                                            "unreadable_image": 2}
    # 40 real + 2 near-duplicates + 5 converted
    assert summary["written"] == N_REAL + 7
    assert sum(summary["splits"].values()) == summary["written"]
    on_disk = json.loads((ds_dir / "build_summary.json").read_text())
    assert on_disk["skipped_by_reason"] == summary["skipped_by_reason"]
    skipped_csv = (ds_dir / "build_skipped.csv").read_text().splitlines()
    assert len(skipped_csv) == 1 + summary["skipped"]


def test_skip_messages_name_the_row_and_file(messy):
    summary, _, _ = messy
    ex = summary["skipped_examples"]
    assert "resized/7001.jpg not found" in ex["missing_image"][0]["message"]
    unreadable = {e["image_id"]: e["message"] for e in ex["unreadable_image"]}
    assert "truncated" in unreadable["planted/truncated.jpg"]
    assert "not an image" in unreadable["planted/not_an_image.jpg"]
    assert "age='100+' is not one of ['15-25'" in ex["bad_label"][0]["message"]
    dup = [e for e in ex["duplicate_id"] if e["image_id"] == "resized/4.jpg"][0]
    assert "already used by row 4" in dup["message"]


def test_png_grayscale_cmyk_16bit_and_sideways_are_converted_and_reported(messy):
    summary, ds_dir, _ = messy
    assert summary["converted"] == {"png": 1, "grayscale": 1, "cmyk": 1, "rotated": 1, "png_16bit": 1}
    assert summary["converted_images"] == 5
    assert "turned upright by its EXIF orientation: 1" in format_summary(summary)
    builder = tfds.builder_from_directory(str(ds_dir))
    ds = builder.as_dataset("train").concatenate(builder.as_dataset("validation"))
    ds = ds.concatenate(builder.as_dataset("test"))
    images = {ex["id"].numpy().decode(): ex["image"].numpy() for ex in ds}
    for name in ("planted/png.png", "planted/gray.jpg", "planted/cmyk.jpg", "planted/gray16.png"):
        assert images[name].shape == (96, 64, 3)
    # Stored as a viewer shows them: the phone photo upright (as the image it was made from), the 16-bit ramp
    # scaled to 8 bits; mean errors on 0..255, within one or two JPEG encodes.
    source = ds_dir.parents[3] / "manual"
    upright = np.asarray(Image.open(source / "resized" / "10.jpg").convert("RGB"), np.float64)
    assert np.abs(images["planted/phone.jpg"] - upright).mean() < 3.0
    ramp = np.asarray(Image.open(io.BytesIO(_png_16bit())), np.float64) / 257.0
    assert np.abs(images["planted/gray16.png"][..., 0] - ramp).mean() < 3.0


def test_valid_jpegs_are_stored_as_read_and_others_as_new_jpegs(messy):
    _, ds_dir, _ = messy
    source = ds_dir.parents[3] / "manual"
    builder = tfds.builder_from_directory(str(ds_dir))
    stored = {}
    for split in ("train", "validation", "test"):
        for ex in builder.as_dataset(split, decoders={"image": tfds.decode.SkipDecoding()}):
            stored[ex["id"].numpy().decode()] = ex["image"].numpy()
    assert len(stored) == N_REAL + 7
    converted = {"planted/png.png", "planted/gray.jpg", "planted/cmyk.jpg", "planted/phone.jpg", "planted/gray16.png"}
    for image_id, data in stored.items():
        original = (source / image_id).read_bytes()
        if image_id in converted:
            assert data != original and data[:2] == b"\xff\xd8", image_id  # re-encoded as JPEG
        else:
            assert data == original, image_id  # the file's own bytes, not a re-encode


def test_near_duplicates_share_a_group_and_a_split(messy):
    summary, ds_dir, _ = messy
    builder = tfds.builder_from_directory(str(ds_dir))
    where = {}
    for split in ("train", "validation", "test"):
        for ex in builder.as_dataset(split, decoders={"image": tfds.decode.SkipDecoding()}):
            where[ex["id"].numpy().decode()] = (split, ex["group"].numpy().decode())
    assert where["planted/reencoded_of_5.jpg"] == where["resized/5.jpg"]
    assert where["planted/shifted_of_10.jpg"] == where["resized/10.jpg"]
    assert where["resized/5.jpg"][1] == "planted/reencoded_of_5.jpg"  # the group is named by its smallest id
    assert summary["groups"]["multi_image_groups"] >= 2


def test_an_image_changed_during_the_build_is_a_one_line_error(monkeypatch, capsys):
    """How Beam hands a worker's ImageChangedError to the launcher: wrapped, with its own stack in the text."""
    wrapped = RuntimeError("Traceback ...\ntfds_person_attrs.build_errors.ImageChangedError: row 3: resized/3.jpg "
                           "has other bytes since this build checked it; the source x.zip changed during the build: "
                           "rebuild once it is stable [while running 'Examples_train']\nmore lines")
    monkeypatch.setattr(preprocess, "run", lambda argv: (_ for _ in ()).throw(wrapped))
    assert preprocess.main(["--manual_dir", "x.zip", "--data_dir", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: row 3: resized/3.jpg has other bytes since this build checked it;")
    assert len(err.strip().splitlines()) == 1


def test_class_counts_are_in_the_metadata(messy):
    summary, ds_dir, _ = messy
    builder = tfds.builder_from_directory(str(ds_dir))
    counts = builder.info.metadata["class_counts"]
    for split, info in builder.info.splits.items():
        assert sum(counts[split]["gender"]) == info.num_examples
        assert len(counts[split]["age"]) == 5
    assert builder.info.metadata["schema"]["name"] == "hvc"


def test_strict_fails_naming_the_first_bad_row(tmp_path, capsys):
    src = fx.write_real_slice(tmp_path / "manual", 30, num_missing=1)
    code = preprocess.main(["--manual_dir", str(src), "--data_dir", str(tmp_path / "data"), "--strict"])
    err = capsys.readouterr().err
    assert code == 3
    assert "--strict: row 31 (resized/7001.jpg) was skipped: missing_image" in err
    assert not (tmp_path / "data" / "person_attrs" / "hvc" / "1.0.0" / "dataset_info.json").exists()


@pytest.mark.parametrize("case, expected", [
    ("missing_column", "hvc_annotations.csv lacks column(s) ['carryingbag']"),
    ("empty_csv", "is empty: it needs a header row"),
    ("not_utf8", "is not UTF-8 (bad byte at line 3"),
    ("no_manual_dir", "does not exist; pass --manual_dir"),
    ("no_csv", "no hvc_annotations.csv in"),
])
def test_unusable_manual_data_fails_fast_with_advice(tmp_path, capsys, case, expected):
    src = fx.write_real_slice(tmp_path / "manual", 3)
    csv_path = src / fx.CSV_NAME
    if case == "missing_column":
        csv_path.write_text(csv_path.read_text().replace(",carryingbag,", ",bag_column,"))
    elif case == "empty_csv":
        csv_path.write_bytes(b"")
    elif case == "not_utf8":
        lines = csv_path.read_bytes().splitlines(keepends=True)
        csv_path.write_bytes(lines[0] + lines[1] + lines[2].replace(b"images", "imágenes".encode("latin-1")))
    elif case == "no_manual_dir":
        src = tmp_path / "nowhere"
    elif case == "no_csv":
        csv_path.unlink()
    code = preprocess.main(["--manual_dir", str(src), "--data_dir", str(tmp_path / "data")])
    assert code == 2
    assert expected in capsys.readouterr().err


@fx.needs_real_data
def test_reads_the_real_zip_directly(tmp_path):
    """The manual dir may hold the distribution zip itself; only the CSV is parsed here (fast)."""
    data = ManualData(str(fx.REAL_ZIP.parent), HVC)
    kept, skipped = parse_annotations(data.read_csv_bytes(), HVC)
    assert len(kept) + len(skipped) == 13573
    # The fingerprint the README's example summary shows: the zip's directory and CSV, as parsed.
    readme = (fx.REPO / "README.md").read_text()
    assert f"source       ../shared/data/hvc_data.zip (sha256 {data.fingerprint()['sha256']})" in readme
    assert data.read_image("resized/7000.jpg")[:2] == b"\xff\xd8"
    assert data.read_image("resized/7001.jpg") is None


def test_row_order_split_puts_the_first_rows_in_train(tmp_path):
    """--split_by row: the naive split of earlier work, kept apart from the leak-proof default config."""
    src = fx.write_real_slice(tmp_path / "manual", 20, num_missing=3)
    summary = preprocess.run(["--manual_dir", str(src), "--data_dir", str(tmp_path / "data"),
                              "--split_by", "row", "--split", "50,25,25", "--num_shards", "2"])
    built = tmp_path / "data" / "person_attrs" / "hvc_byrow_split0p5-0p25-0p25" / "1.0.0"
    assert len(list(built.glob("*-train.tfrecord-*-of-00002"))) == 2  # --num_shards files per split
    builder = tfds.builder_from_directory(str(built))
    assert builder.info.metadata["split_by"] == "row" and summary["config"]["split_by"] == "row"
    ids = {s: [ex["id"].decode() for ex in tfds.as_numpy(builder.as_dataset(split=s))]
           for s in ("train", "validation", "test")}
    rows = [r["image_path"] for r in fx.real_rows()[1][:20]]
    assert sorted(ids["train"], key=rows.index) == rows[:10]
    assert sorted(ids["validation"], key=rows.index) == rows[10:15]
    assert sorted(ids["test"], key=rows.index) == rows[15:20]
