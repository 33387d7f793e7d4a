"""Bad input to the dataset build: nothing outside the manual data is read, nothing is lost, nothing is reused
stale, and every refusal is one line that names the file and says what to do.

Generated demo data only (no ../shared needed). One folder build holds most row-level cases, since each Beam
build costs seconds; the refusals that stop before Beam are checked on their own.

    python -m pytest -q tests/test_build_bad_input.py
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pathlib
import zipfile

import pytest
from PIL import Image

from pipeline import preprocess
from tfds_person_attrs.annotation_rows import parse_annotations
from tfds_person_attrs.build_errors import ImageRefusedError, ManualDataError
from tfds_person_attrs.demo.generate import write_demo_data
from tfds_person_attrs.images import BadImageError, inspect_image
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.schema import HVC

CSV = HVC.csv_name


def _rows(csv_path) -> tuple[list[str], list[dict]]:
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def _write_rows(csv_path, header, rows) -> None:
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def _csv_bytes(rows: list[dict]) -> bytes:
    """An hvc CSV of the given rows (the columns each row leaves out take the first class)."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(HVC.required_columns))
    w.writeheader()
    w.writerows({**{a.column: a.classes[0] for a in HVC.attributes}, **row} for row in rows)
    return out.getvalue().encode()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose header says width x height: what PIL sees of a huge photo before decoding it."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    src = pathlib.Path(write_demo_data(str(root / "manual"), num_images=30, seed=5, num_missing=0))
    outside = root / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes((src / "resized" / "1.jpg").read_bytes())
    (src / "resized" / "link_out.jpg").symlink_to(secret)
    (src / "resized" / "link_in.jpg").symlink_to(src / "resized" / "2.jpg")
    (src / "resized" / "huge.jpg").write_bytes(_jpeg_claiming(15000, 15000))
    (src / "resized" / "a:").mkdir()  # a folder named "a:": resized/a://b.jpg is a relative path
    (src / "resized" / "a:" / "b.jpg").write_bytes((src / "resized" / "3.jpg").read_bytes())
    header, rows = _rows(src / CSV)
    for name in (str(secret), "../outside/secret.jpg", "resized/../../outside/secret.jpg", "resized/link_out.jpg",
                 "resized/link_in.jpg", "resized/huge.jpg", "resized/a://b.jpg", "resized//2.jpg"):
        rows.append({**rows[0], "image_path": name})
    rows.append({**rows[0], "image_path": "resized/9.jpg", "gender": "unknown", "age": "100+"})
    _write_rows(src / CSV, header, rows)
    data_dir = root / "data"
    abandoned = data_dir / "person_attrs" / "hvc" / "incomplete.KILLED_1.0.0"  # what a killed build leaves
    abandoned.mkdir(parents=True)
    (abandoned / "dataset_info.json").write_text("{}")
    summary = preprocess.run(["--manual_dir", str(src), "--data_dir", str(data_dir)])
    return summary, src, data_dir, len(rows)


def test_paths_outside_the_manual_dir_are_skipped_and_never_written(messy):
    summary, _, _, n_rows = messy
    assert summary["accounted"] and summary["csv_rows"] == n_rows
    assert summary["skipped_by_reason"]["path_outside_manual_dir"] == 4
    messages = {e["image_id"]: e["message"] for e in summary["skipped_examples"]["path_outside_manual_dir"]}
    assert "is absolute" in next(m for i, m in messages.items() if i.startswith("/"))
    assert "climbs out with '..'" in messages["../outside/secret.jpg"]
    assert "outside" in messages["resized/link_out.jpg"] and "was not read" in messages["resized/link_out.jpg"]
    # A link that stays inside is an ordinary image, and so is resized/a://b.jpg (a folder "a:").
    assert summary["written"] == 30 + 2


def test_a_doubled_slash_names_the_same_file_and_is_a_duplicate(messy):
    summary, *_ = messy
    assert summary["skipped_by_reason"]["duplicate_id"] == 2  # resized//2.jpg, and resized/9.jpg below
    dup = next(e for e in summary["skipped_examples"]["duplicate_id"] if e["image_id"] == "resized/2.jpg")
    assert "image resized//2.jpg (the same file as resized/2.jpg) already used by row 2" in dup["message"]


def test_a_row_is_reported_with_every_problem_it_has(messy):
    summary, *_ = messy
    dup = next(e for e in summary["skipped_examples"]["duplicate_id"] if e["image_id"] == "resized/9.jpg")
    assert "already used by row 9" in dup["message"]
    assert "also gender='unknown' is not one of" in dup["message"] and "age='100+' is not one of" in dup["message"]
    _, skipped = parse_annotations(_csv_bytes([{"image_path": "resized/1.jpg", "gender": "x", "age": "y"}]), HVC)
    assert [s.reason for s in skipped] == ["bad_label"]
    assert "gender='x' is not one of" in skipped[0].message and "age='y' is not one of" in skipped[0].message


def test_a_huge_image_is_a_counted_skip(messy):
    summary, *_ = messy
    assert summary["skipped_by_reason"]["image_too_large"] == 1
    message = summary["skipped_examples"]["image_too_large"][0]["message"]
    assert "225 megapixels" in message and "--max_image_pixels" in message


def test_the_pixel_limit_message_gives_the_real_size_and_the_limit_that_holds():
    """A limit above PIL's own (which refuses twice its ~89 megapixels inside Image.open) is the one that holds."""
    assert inspect_image(_jpeg_claiming(15000, 15000), max_pixels=300_000_000).width == 15000
    with pytest.raises(BadImageError) as e:
        inspect_image(_jpeg_claiming(15000, 15000), max_pixels=200_000_000)
    assert "= 225 megapixels, more than the 200 megapixels allowed" in str(e.value)
    with pytest.raises(BadImageError) as e:
        inspect_image(_jpeg_claiming(15000, 15000))
    assert "the image is 225 megapixels, more than the 89 megapixels allowed" in str(e.value)


def test_huge_image_limit_is_configurable():
    with pytest.raises(BadImageError) as e:
        inspect_image(_jpeg_claiming(300, 200), max_pixels=50_000)
    assert e.value.reason == "image_too_large"
    assert inspect_image(_jpeg_claiming(16, 16), max_pixels=50_000).width == 16


def test_summary_names_the_file_read_and_its_sha256(messy):
    summary, src, _, _ = messy
    assert summary["source"]["file"] == str(src / CSV)
    import hashlib

    assert summary["source"]["sha256"] == hashlib.sha256((src / CSV).read_bytes()).hexdigest()


def test_a_killed_builds_folder_is_removed_by_the_next_build(messy):
    _, _, data_dir, _ = messy
    config_dir = data_dir / "person_attrs" / "hvc"
    assert sorted(p.name for p in config_dir.iterdir()) == ["1.0.0"]


def test_reuse_says_so_and_a_changed_source_is_refused(tmp_path, capsys):
    src = pathlib.Path(write_demo_data(str(tmp_path / "manual"), num_images=20, seed=2, num_missing=1))
    argv = ["--manual_dir", str(src), "--data_dir", str(tmp_path / "data")]
    built = preprocess.run(argv)
    capsys.readouterr()
    assert preprocess.main(argv) == 0
    out = capsys.readouterr().out
    assert f"reused the dataset built from {src / CSV} at {built['built_at']}" in out

    header, rows = _rows(src / CSV)
    _write_rows(src / CSV, header, rows[:-1])  # the CSV changed since the build
    assert preprocess.main(argv) == 2
    err = capsys.readouterr().err
    assert "is not that data any more: pass --overwrite to rebuild it" in err
    assert err.count("\n") == 1
    rebuilt = preprocess.run(argv + ["--overwrite"])
    assert rebuilt["csv_rows"] == len(rows) - 1


def test_the_named_zip_is_read_even_beside_a_loose_csv(tmp_path):
    demo_zip = write_demo_data(str(tmp_path / "demo"), num_images=12, seed=4, num_missing=0, zip=True)
    folder = tmp_path / "F"
    write_demo_data(str(folder), num_images=3, seed=9, num_missing=0)  # a loose CSV with other rows
    named = folder / "data.zip"
    with zipfile.ZipFile(demo_zip) as old, zipfile.ZipFile(named, "w") as new:
        for info in old.infolist():
            if info.filename != CSV:
                new.writestr(info, old.read(info))
        text = old.read(CSV).decode()
        first = text.splitlines()[1].rsplit(",", 1)[0]
        new.writestr(CSV, text + first + ",resized/link.jpg\n" + first + ",resized/bomb.jpg\n")
        link = zipfile.ZipInfo("resized/link.jpg")  # a symlink stored in the zip must not be followed
        link.external_attr = 0o120777 << 16
        new.writestr(link, "../../../etc/hostname")
    _zip_claiming(named, "resized/bomb.jpg", 1_500_000_000)  # refused from its header, with its row counted
    assert ManualData(str(named), HVC).source_file == str(named)
    with pytest.raises(ManualDataError, match="more than one source of hvc_annotations.csv"):
        ManualData(str(folder), HVC)

    summary = preprocess.run(["--manual_dir", str(named), "--data_dir", str(tmp_path / "data")])
    assert summary["source"]["file"] == str(named) and summary["csv_rows"] == 14
    assert summary["skipped_by_reason"] == {"path_outside_manual_dir": 1, "image_too_large": 1}
    assert "symbolic link" in summary["skipped_examples"]["path_outside_manual_dir"][0]["message"]


def test_a_folder_with_two_sources_is_refused_naming_them(tmp_path, capsys):
    folder = tmp_path / "F"
    write_demo_data(str(folder / "a"), num_images=2, seed=1, num_missing=0, zip=True)
    write_demo_data(str(folder / "b"), num_images=2, seed=2, num_missing=0, zip=True)
    os.rename(folder / "a" / "hvc_data.zip", folder / "a.zip")
    os.rename(folder / "b" / "hvc_data.zip", folder / "b.zip")
    assert preprocess.main(["--manual_dir", str(folder), "--data_dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'a.zip'}, {folder / 'b.zip'}" in err and "pass --manual_dir naming the one to read" in err


def test_a_split_left_empty_is_refused_before_beam(tmp_path, capsys):
    src = write_demo_data(str(tmp_path / "manual"), num_images=10, seed=0, num_missing=0)
    code = preprocess.main(["--manual_dir", src, "--data_dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: 10 usable rows split 80,10,10 give train ") and " 0" in line
    assert "every split needs at least one image; add rows, or give the empty split a larger share" in line
    assert "--split_seed" in line
    assert not (tmp_path / "data" / "person_attrs" / "hvc" / "1.0.0").exists()


def test_strict_prints_one_line_naming_the_row(tmp_path, capsys):
    src = pathlib.Path(write_demo_data(str(tmp_path / "manual"), num_images=20, seed=3, num_missing=0))
    image = src / "resized" / "4.jpg"
    image.write_bytes(image.read_bytes()[:2000])  # truncated
    code = preprocess.main(["--manual_dir", str(src), "--data_dir", str(tmp_path / "data"), "--strict"])
    err = capsys.readouterr().err
    assert code == 3
    assert "Traceback" not in err
    assert err.count("--strict: row 4 (resized/4.jpg) was skipped: unreadable_image") == 1


def test_csv_errors_name_the_csv_file(tmp_path, capsys):
    src = pathlib.Path(write_demo_data(str(tmp_path / "manual"), num_images=3, seed=0, num_missing=0))
    (src / CSV).write_text((src / CSV).read_text().replace(",carryingbag,", ",bag_column,"))
    assert preprocess.main(["--manual_dir", str(src), "--data_dir", str(tmp_path / "data")]) == 2
    assert f"error: {src / CSV} lacks column(s) ['carryingbag']" in capsys.readouterr().err


def test_the_summary_file_records_the_source(messy):
    _, src, data_dir, _ = messy
    on_disk = json.loads((data_dir / "person_attrs" / "hvc" / "1.0.0" / "build_summary.json").read_text())
    assert on_disk["source"]["file"] == str(src / CSV) and len(on_disk["source"]["images_sha256"]) == 64


@pytest.fixture(autouse=True)
def _no_log_handler_of_other_tests():
    """These tests call the launcher's main() directly: a log handler an earlier test installed through cli.run
    (its --verbose one included) would add its lines to the one being checked."""
    root = logging.getLogger()
    kept = list(root.handlers)
    for h in kept:
        root.removeHandler(h)
    yield
    for h in kept:
        root.addHandler(h)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _read_once_then(monkeypatch, action) -> None:
    """Runs `action` once, at the build's first image read (from within the build, between its steps)."""
    real_read, done = ManualData.read_image, []

    def read_image(self, image_id):
        if not done:
            done.append(action())
        return real_read(self, image_id)

    monkeypatch.setattr(ManualData, "read_image", read_image)


def test_a_csv_changed_during_the_build_fails_it_and_writes_no_dataset(tmp_path, capsys, monkeypatch):
    src = pathlib.Path(write_demo_data(str(tmp_path / "manual"), num_images=20, seed=2, num_missing=0))
    header, rows = _rows(src / CSV)
    _read_once_then(monkeypatch, lambda: _write_rows(src / CSV, header, rows[:-1]))
    argv = ["--manual_dir", str(src), "--data_dir", str(tmp_path / "data")]
    assert preprocess.main(argv) == 2
    err = _one_line_error(capsys)
    assert f"error: {src / CSV} changed during the build (its CSV differs from what the build parsed)" in err
    assert "no dataset was written from it: rebuild once it is stable" in err
    assert not (tmp_path / "data" / "person_attrs" / "hvc" / "1.0.0").exists()
    monkeypatch.undo()
    assert preprocess.run(argv)["csv_rows"] == len(rows) - 1  # the stable CSV builds (nothing stale reused)


def test_a_zip_replaced_while_images_are_read_fails_the_build(tmp_path, capsys, monkeypatch):
    """The replacement has the same names and CSV, each image moved to the next name: read with the first zip's
    rows, every image would get another picture's labels."""
    zpath = write_demo_data(str(tmp_path / "src"), num_images=20, seed=3, num_missing=0, zip=True)
    shifted = tmp_path / "shifted.zip"
    with zipfile.ZipFile(zpath) as old, zipfile.ZipFile(shifted, "w") as new:
        names = [n for n in old.namelist() if n.endswith(".jpg")]
        for name in old.namelist():
            target = names[(names.index(name) + 1) % len(names)] if name in names else name
            new.writestr(target, old.read(name))
    _read_once_then(monkeypatch, lambda: os.replace(shifted, zpath))
    assert preprocess.main(["--manual_dir", zpath, "--data_dir", str(tmp_path / "data")]) == 2
    err = _one_line_error(capsys)
    assert f"error: {zpath} changed during the build (" in err and "rebuild once it is stable" in err
    assert not (tmp_path / "data" / "person_attrs" / "hvc" / "1.0.0").exists()


def test_images_linked_into_a_store_need_follow_symlinks(tmp_path, capsys):
    """A folder of links into an image store: refused by default (the failed build still writes its summary and
    skipped rows, where its message says), read with --follow_symlinks naming the store."""
    store = pathlib.Path(write_demo_data(str(tmp_path / "store"), num_images=20, seed=6, num_missing=0))
    manual = tmp_path / "manual"
    (manual / "resized").mkdir(parents=True)
    (manual / CSV).write_bytes((store / CSV).read_bytes())
    for image in (store / "resized").iterdir():
        (manual / "resized" / image.name).symlink_to(image)
    argv = ["--manual_dir", str(manual), "--data_dir", str(tmp_path / "data")]
    assert preprocess.main(argv) == 2
    err = _one_line_error(capsys)
    failed = tmp_path / "data" / "person_attrs" / "hvc" / "1.0.0.failed"
    assert "got no examples" in err and f"the summary and every skipped row are in {failed}" in err
    _, skipped = _rows(failed / "build_skipped.csv")
    assert len(skipped) == 20 and {r["reason"] for r in skipped} == {"path_outside_manual_dir"}
    assert "pass --follow_symlinks" in skipped[0]["message"]
    assert json.loads((failed / "build_summary.json").read_text())["skipped_by_reason"] == {
        "path_outside_manual_dir": 20}

    with pytest.raises(ManualDataError, match="--follow_symlinks .*nowhere: not a local folder"):
        preprocess.run(argv + ["--follow_symlinks", str(tmp_path / "nowhere")])
    summary = preprocess.run(argv + ["--follow_symlinks", str(store)])
    assert summary["written"] == 20 and summary["skipped"] == 0
    assert not failed.exists()  # the successful build removes the failed one's report


def test_a_zip_holding_two_csvs_is_refused_naming_both(tmp_path, capsys):
    zpath = write_demo_data(str(tmp_path / "src"), num_images=2, seed=1, num_missing=0, zip=True)
    with zipfile.ZipFile(zpath, "a") as z:
        z.writestr("old/" + CSV, z.read(CSV))
    assert preprocess.main(["--manual_dir", zpath, "--data_dir", str(tmp_path / "data")]) == 2
    err = _one_line_error(capsys)
    assert f"{zpath} holds 2 files named {CSV}: {CSV}, old/{CSV}; keep the one to read" in err


def _zip_claiming(path: pathlib.Path, member: str, claimed: int) -> None:
    """Adds `member` (1 kB, deflated) to the zip with its uncompressed size in the directory set to `claimed`:
    what the header of a zip bomb says; reading it would inflate that much."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, b"\0" * 1000)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the last central-directory entry: the member just added
    assert data[entry + 46 : entry + 46 + len(member)] == member.encode()
    data[entry + 24 : entry + 28] = claimed.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_an_image_too_large_is_refused_unread(tmp_path, monkeypatch):
    zpath = pathlib.Path(write_demo_data(str(tmp_path / "z"), num_images=2, seed=1, num_missing=0, zip=True))
    _zip_claiming(zpath, "resized/bomb.jpg", 1_500_000_000)
    assert zpath.stat().st_size < 2_000_000
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(
        getattr(name, "filename", name)) or real_open(self, name, *a, **k))
    data = ManualData(str(zpath), HVC)
    with pytest.raises(ImageRefusedError) as e:
        data.read_image("resized/bomb.jpg")
    assert e.value.reason == "image_too_large" and "resized/bomb.jpg" not in opened
    assert "the zip member is 1,500.0 MB uncompressed, more than the 268.4 MB allowed" in str(e.value)
    assert data.read_image("resized/1.jpg")[:2] == b"\xff\xd8"  # members within the bound read as before
    folder = pathlib.Path(write_demo_data(str(tmp_path / "f"), num_images=1, seed=1, num_missing=0))
    with pytest.raises(ImageRefusedError, match="larger than the 0.0 MB allowed, so it was not read"):
        ManualData(str(folder), HVC, max_image_bytes=100).read_image("resized/1.jpg")
