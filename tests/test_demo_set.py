"""Tests for the synthetic demo data (tfds_person_attrs/demo/: generate.py, draw.py, make_dummy_data.py).

    python -m pytest -q -x tests/test_demo_set.py
"""

from __future__ import annotations

import csv
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from tfds_person_attrs.demo import generate as demo_data
from tfds_person_attrs.person_attrs import make_dummy_data
from tfds_person_attrs.schema import HVC

HEADER = ["filename", "gender", "imagequality", "age", "weight", "carryingbag", "footwear", "emotion",
          "bodypose", "image_path"]  # the real hvc_annotations.csv header, spelled out on purpose


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return demo_data.write_demo_data(str(tmp_path_factory.mktemp("small")), num_images=30, seed=3, num_missing=4)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    # 600 images: enough for the learnability test.
    return demo_data.write_demo_data(str(tmp_path_factory.mktemp("big")), num_images=600, seed=0, num_missing=0)


def _rows(root):
    with open(os.path.join(root, HVC.csv_name), newline="") as f:
        return list(csv.DictReader(f))


def test_csv_layout_and_labels(small):
    with open(os.path.join(small, HVC.csv_name), newline="") as f:
        assert next(csv.reader(f)) == HEADER
    rows = _rows(small)
    assert len(rows) == 34
    for i, r in enumerate(rows, start=1):
        assert r["image_path"] == f"resized/{i}.jpg"
        assert r["filename"].startswith("images/Set1/") and r["filename"].endswith(".jpg")
        for a in HVC.attributes:
            assert r[a.column] in a.classes, (a.name, r[a.column])
    assert len({r["filename"] for r in rows}) == len(rows)


def test_every_class_appears(small):
    rows = _rows(small)
    for a in HVC.attributes:
        assert {r[a.column] for r in rows} == set(a.classes), a.name


def test_missing_rows_at_end(small):
    rows = _rows(small)
    exists = [os.path.exists(os.path.join(small, r["image_path"])) for r in rows]
    assert exists == [True] * 30 + [False] * 4
    assert sorted(os.listdir(os.path.join(small, "resized")), key=lambda n: int(n[:-4])) == [
        f"{i}.jpg" for i in range(1, 31)]


def test_images_are_letterboxed_224_rgb_jpegs(small):
    for i in range(1, 31):
        path = os.path.join(small, "resized", f"{i}.jpg")
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (224, 224)
            a = np.asarray(im).astype(int)
        # Bars: the band is at most columns 48..176, and JPEG chroma smoothing may tint a column or two
        # next to it, so the outer 40 columns on each side must be black.
        assert a[:, :40].max() <= 8 and a[:, -40:].max() <= 8, i
        band = a[:, 64:160]
        assert band.mean() > 20 and band.std() > 10, i


def test_deterministic_by_seed(tmp_path):
    a = demo_data.write_demo_data(str(tmp_path / "a"), num_images=5, seed=7, num_missing=2)
    b = demo_data.write_demo_data(str(tmp_path / "b"), num_images=5, seed=7, num_missing=2)
    c = demo_data.write_demo_data(str(tmp_path / "c"), num_images=5, seed=8, num_missing=2)
    read = lambda root, name: open(os.path.join(root, name), "rb").read()  # noqa: E731
    for name in [HVC.csv_name] + [f"resized/{i}.jpg" for i in range(1, 6)]:
        assert read(a, name) == read(b, name), name
    assert read(a, HVC.csv_name) != read(c, HVC.csv_name)
    assert read(a, "resized/1.jpg") != read(c, "resized/1.jpg")


def test_zip_layout(tmp_path):
    path = demo_data.write_demo_data(str(tmp_path), num_images=4, seed=1, num_missing=2, zip=True)
    assert path == str(tmp_path / "hvc_data.zip")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert names[:2] == [HVC.csv_name, "resized/"]
        assert sorted(names[2:]) == sorted(f"resized/{i}.jpg" for i in range(1, 5))
        rows = list(csv.DictReader(io.StringIO(z.read(HVC.csv_name).decode())))
        assert len(rows) == 6 and rows[-1]["image_path"] == "resized/6.jpg"
        assert Image.open(io.BytesIO(z.read("resized/1.jpg"))).size == (224, 224)
    # The zip is the only output, as with the real data.
    assert os.listdir(tmp_path) == ["hvc_data.zip"]


def test_class_imbalance_roughly_like_real_data(big):
    rows = _rows(big)
    for a in HVC.attributes:
        counts = np.array([sum(r[a.column] == c for r in rows) for c in a.classes]) / len(rows)
        np.testing.assert_allclose(counts, np.array(demo_data.CLASS_FREQ[a.name]), atol=0.06, err_msg=a.name)


def test_cli(tmp_path):
    demo_data.main(["--out", str(tmp_path), "--num_images", "3", "--num_missing", "1"])
    assert len(_rows(str(tmp_path))) == 4
    assert os.path.exists(tmp_path / "resized" / "3.jpg")


def _thumbs(imgs, flip=False):
    # The band's central 128 columns, downscaled to 16x32: a crude, position-sensitive view.
    out = []
    for a in imgs:
        crop = a[:, 48:176][:, ::-1] if flip else a[:, 48:176]
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((16, 32), Image.BILINEAR),
                              np.float32).ravel() / 255.0)
    return np.stack(out)


@pytest.fixture(scope="module")
def thumbs(big):
    rows, imgs = demo_data.load_demo_arrays(big)
    return rows, _thumbs(imgs), _thumbs(imgs, flip=True)


@pytest.mark.parametrize("attr_name", ["gender", "pose", "bag"])
def test_attributes_are_visible(thumbs, attr_name):
    """A linear model on tiny thumbnails beats the majority class clearly on held-out images."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows, x, x_flip = thumbs
    attr = HVC[attr_name]
    y = np.array([attr.classes.index(r[attr.column]) for r in rows])
    n = 400
    # Mirrored copies teach left/right invariance (bags and profiles face either way). A ridge
    # classifier is as accurate here as logistic regression and ~10x faster on the shared CPUs.
    clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0))
    clf.fit(np.concatenate([x[:n], x_flip[:n]]), np.concatenate([y[:n], y[:n]]))
    acc = float((clf.predict(x[n:]) == y[n:]).mean())
    baseline = float((y[n:] == np.bincount(y[:n]).argmax()).mean())
    print(f"{attr_name}: accuracy {acc:.3f} vs majority baseline {baseline:.3f}")
    assert acc >= baseline + 0.10, (acc, baseline)


def test_checked_in_dummy_data_matches_generator(tmp_path):
    fresh = make_dummy_data.make_dummy_data(str(tmp_path))
    checked_in = make_dummy_data.DUMMY_DIR
    rows = _rows(checked_in)
    assert len(rows) == make_dummy_data.NUM_IMAGES + make_dummy_data.NUM_MISSING
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(checked_in) for f in fs)
    assert size < 150 * 1024
    # Regenerating gives the same bytes; if this fails, rerun make_dummy_data and commit dummy_data/.
    for name in [HVC.csv_name] + [f"resized/{i}.jpg" for i in range(1, make_dummy_data.NUM_IMAGES + 1)]:
        with open(os.path.join(fresh, name), "rb") as f1, open(os.path.join(checked_in, name), "rb") as f2:
            assert f1.read() == f2.read(), name
