"""The exported SavedModel: same probabilities as the in-memory model, and loadable without the project.

    python -m pytest -q tests/test_export.py
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tfds_person_attrs.schema import Attribute, Schema

SCHEMA = Schema("t", (Attribute("gender", ("female", "male"), column="g"),
                      Attribute("age", ("young", "mid", "old"), column="a"),
                      Attribute("tags", ("hat", "bag", "coat"), kind="multi", column="t")))


def letterboxed_jpeg(seed: int, size=(96, 96), band=(30, 66)) -> bytes:
    """A random picture in a vertical band between black bars, like the real data (exercises the crop)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:, band[0]:band[1]] = rng.integers(40, 255, (size[1], band[1] - band[0], 3))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from trainer.config_loader import load_config
    from trainer.model.network import build_model
    from trainer.serving.saved_model import export_model

    config = load_config(["--config", "smoke"])
    model = build_model(SCHEMA, config)
    out = str(tmp_path_factory.mktemp("export") / "model")
    export_model(model, config, SCHEMA, out)
    return model, config, out


def test_files_beside_the_saved_model(exported):
    _, config, out = exported
    assert os.path.exists(os.path.join(out, "saved_model.pb"))
    labels = json.load(open(os.path.join(out, "labels.json")))
    assert labels["attributes"]["age"]["classes"] == ["young", "mid", "old"]
    assert labels["input"] == "image_bytes" and labels["flip_tta"] is False
    from trainer.config_loader import config_from_yaml

    assert config_from_yaml(os.path.join(out, "config.yaml")) == config


def test_exported_matches_in_memory_model(exported):
    assert_serves_like(*exported)


def assert_serves_like(model, config, out):
    """The SavedModel at `out` gives the in-memory model's probabilities, labels and decisions on JPEGs."""
    import tensorflow as tf

    from trainer.input.preprocess_ops import image_decoder

    jpegs = [letterboxed_jpeg(i) for i in range(3)] + [letterboxed_jpeg(9, size=(50, 120), band=(0, 50))]
    decode = image_decoder(config.data)
    images = tf.stack([decode(tf.constant(b)) for b in jpegs])
    expected = {k: np.asarray(v) for k, v in model(images, training=False).items()}
    serve = tf.saved_model.load(out).signatures["serving_default"]
    got = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(jpegs)).items()}
    for a in SCHEMA.attributes:
        np.testing.assert_allclose(got[f"{a.name}_probs"], expected[a.name], atol=1e-5)
    labels = [s.decode() for s in got["age_label"]]
    assert labels == [SCHEMA["age"].classes[i] for i in expected["age"].argmax(1)]
    active = expected["tags"] >= 0.5
    np.testing.assert_array_equal(got["tags_active"], active.astype(np.int32))
    assert [s.decode() for s in got["tags_label"]] == [
        "|".join(c for c, on in zip(SCHEMA["tags"].classes, row) if on) for row in active]


def test_flip_tta_export_serves_the_mean_with_the_mirror(exported, tmp_path):
    import tensorflow as tf

    from trainer.input.preprocess_ops import image_decoder
    from trainer.serving.saved_model import export_model

    model, config, _ = exported
    out = export_model(model, config, SCHEMA, str(tmp_path / "model_tta"), flip_tta=True)
    jpegs = [letterboxed_jpeg(i) for i in range(2)]
    decode = image_decoder(config.data)
    x = tf.stack([decode(tf.constant(b)) for b in jpegs])
    expected = (model(x, training=False)["age"] + model(tf.reverse(x, [2]), training=False)["age"]) / 2
    got = tf.saved_model.load(out).signatures["serving_default"](image_bytes=tf.constant(jpegs))["age_probs"]
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), atol=1e-5)
    assert json.load(open(os.path.join(out, "labels.json")))["flip_tta"] is True


_CLEAN_LOAD = textwrap.dedent("""
    import sys

    class Block:  # the project is installed editable in the venv: refuse its packages outright
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('trainer', 'tfds_person_attrs', 'pipeline'):
                raise ImportError('project not importable here: ' + name)
    sys.meta_path.insert(0, Block())
    try:
        import trainer
        sys.exit('trainer is importable')
    except ImportError:
        pass
    import tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
    out = serve(image_bytes=tf.constant([open(sys.argv[2], 'rb').read()]))
    print('OK', sorted(out), out['gender_probs'].numpy().tolist())
    assert not [m for m in sys.modules if m.split('.')[0] in ('trainer', 'tfds_person_attrs')]
""")


def test_exported_loads_without_the_project(exported, tmp_path):
    serve_without_the_project(exported[2], tmp_path)


def serve_without_the_project(out, tmp_path):
    jpg = tmp_path / "x.jpg"
    jpg.write_bytes(letterboxed_jpeg(5))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    res = subprocess.run([sys.executable, "-I", "-c", _CLEAN_LOAD, out, str(jpg)], cwd="/tmp", env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout and "gender_label" in res.stdout and "tags_active" in res.stdout


def test_another_backbone_exports_the_same_signature(tmp_path):
    """A keras.applications backbone (its own normalisation inside) behind the same heads and serving signature."""
    from trainer.config_loader import load_config
    from trainer.model.network import build_model
    from trainer.serving.saved_model import export_model

    config = load_config(["--config", "smoke", "--model.backbone=mobilenetv3small", "--data.height=64",
                          "--data.width=32"])
    import keras

    build_model(SCHEMA, config).save(tmp_path / "model.keras")  # as trainer.export gets it: from the job's file
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    out = export_model(model, config, SCHEMA, str(tmp_path / "model"))
    assert_serves_like(model, config, out)
    serve_without_the_project(out, tmp_path)
