"""`trainer.predict` on a folder with good, converted, corrupt and truncated files.

    python -m pytest -q tests/test_predict.py
"""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.test_export import SCHEMA, exported, letterboxed_jpeg  # noqa: F401 - `exported` is a fixture
from trainer import predict


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    (d / "a_good.jpg").write_bytes(letterboxed_jpeg(1))
    (d / "b_good.jpg").write_bytes(letterboxed_jpeg(2))
    buf = io.BytesIO()
    Image.fromarray(np.full((80, 60, 3), 128, np.uint8)).save(buf, "PNG")
    (d / "c_picture.png").write_bytes(buf.getvalue())
    (d / "d_corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
    jpeg = letterboxed_jpeg(3)
    (d / "e_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # PIL opens the header; the scan data is cut
    (d / "f_empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image, ignored with a note")
    return d


def test_folder_with_bad_files(exported, folder, capsys):  # noqa: F811
    _, _, model_dir = exported
    rc = predict.main(["--model", model_dir, str(folder), "--batch_size", "8"])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["a_good.jpg", "b_good.jpg", "c_picture.png"]
    assert rc == 1
    assert "notes.txt" in err
    # each unreadable file with the reason, not just "could not decode"
    assert "d_corrupt.jpg: unreadable image (not an image: no format Pillow recognises)" in err
    assert "e_truncated.jpg: unreadable image (truncated: the file ends before its image data does" in err
    from tfds_person_attrs.images import BadImageError, inspect_image

    with pytest.raises(BadImageError) as build:
        inspect_image(b"")
    assert f"f_empty.jpg: unreadable image ({build.value})" in err and "the file is empty" in err  # as the build
    assert "predicted 3 image(s); 3 problem(s)" in err
    r = rows[0]
    assert r["age"] in SCHEMA["age"].classes and 0 <= r["age_prob"] <= 1
    assert set(r["tags_probs"]) == {"hat", "bag", "coat"}
    # the row's probability is the model's probability of the printed label
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    p = serve(image_bytes=tf.constant([letterboxed_jpeg(1)]))["age_probs"].numpy()[0]
    assert r["age_prob"] == pytest.approx(float(p.max()), abs=1e-6)
    assert r["age"] == SCHEMA["age"].classes[int(p.argmax())]


def test_csv_output_and_missing_input(exported, folder, tmp_path, capsys):  # noqa: F811
    _, _, model_dir = exported
    out = tmp_path / "p.csv"
    rc = predict.main(["--model", model_dir, str(folder / "a_good.jpg"), str(folder / "*.png"),
                       str(tmp_path / "missing.jpg"), "--format", "csv", "--out", str(out)])
    err = capsys.readouterr().err
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2 and rc == 1 and "missing.jpg: no such file" in err
    assert {"path", "gender", "gender_prob", "age", "tags", "tags_prob_hat", "tags_prob_coat"} <= set(rows[0])


def test_all_good_exits_zero_and_nothing_readable_exits_two(exported, folder, capsys):  # noqa: F811
    _, _, model_dir = exported
    assert predict.main(["--model", model_dir, str(folder / "a_good.jpg")]) == 0
    assert predict.main(["--model", model_dir, str(folder / "d_corrupt.jpg")]) == 2
    capsys.readouterr()


def test_an_empty_folder_is_nothing_to_predict(exported, tmp_path, capsys):  # noqa: F811
    _, _, model_dir = exported
    (tmp_path / "empty").mkdir()
    assert predict.main(["--model", model_dir, str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert f"error: nothing to predict: {tmp_path / 'empty'} hold(s) no image file" in err
    assert "predicted 0" not in err


def test_tensorflows_decode_error_is_given_with_its_cause():
    """A JPEG that only TensorFlow's decoder rejects is reported with TensorFlow's reason, not its preamble."""
    import tensorflow as tf

    from tests.test_export import letterboxed_jpeg

    decode = tf.function(lambda b: tf.map_fn(lambda x: tf.io.decode_jpeg(x, channels=3), b,
                                             fn_output_signature=tf.uint8))
    jpeg = letterboxed_jpeg(4)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        decode(tf.constant([jpeg[: len(jpeg) // 3]]))
    cause = predict.decode_error_cause(raised.value.message)
    assert "Invalid JPEG data" in cause and not any(s in cause for s in ("Graph execution", "[[", "{{", "\n"))
    assert predict.decode_error_cause('Graph execution error:\n\nDetected at node x defined at (most recent call '
                                      'last):\n  File "p.py", line 6, in f\n\nInvalid PNG. Failed to initialize '
                                      'decoder.\n\t [[{{node x}}]] [Op:__inference_f_162]') == \
        "Invalid PNG. Failed to initialize decoder."


def test_csv_cells_that_look_like_formulas_are_written_as_text(exported, folder, tmp_path, monkeypatch, capsys):  # noqa: F811
    """An image named like a formula is a quoted cell, not a live HYPERLINK, when the CSV opens in a spreadsheet."""
    _, _, model_dir = exported
    name = '=HYPERLINK("http:evil.example")-1.jpg'
    (tmp_path / name).write_bytes(letterboxed_jpeg(1))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.csv"
    assert predict.main(["--model", model_dir, name, "--format", "csv", "--out", str(out)]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(out, newline="")))
    assert rows[0]["path"] == "'" + name
    from tfds_person_attrs.csv_cells import original

    assert original(rows[0]["path"]) == name


def test_a_16_bit_png_is_read_as_its_picture_not_a_white_block(tmp_path):
    """predict re-encodes non-JPEG files as the build stores them: 16-bit grey scaled to 8 bits, not clipped."""
    grey16 = (np.linspace(0, 65535, 64 * 32).reshape(64, 32)).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(path)
    decoded = np.asarray(Image.open(io.BytesIO(predict.read_as_jpeg(str(path)))).convert("L"), dtype=np.float64)
    assert np.abs(decoded - grey16 / 257.0).mean() < 3  # a clipped conversion is off by ~70 on this ramp
