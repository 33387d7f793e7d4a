"""Decoding and the input pipeline: eagerly, inside Dataset.map, and from a TFDS dataset on disk.

    python -m pytest -q -x tests/test_trainer_data.py
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import trainer_fixtures as fx
from trainer.config import ConfigError, DataConfig
from trainer.config_loader import load_config
from trainer.input.data import (
    builder,
    dataset_info,
    dataset_name,
    make_eval_dataset,
    make_train_dataset,
    shard_split,
    split_examples,
)
from trainer.input.preprocess_ops import decode_jpeg_scaled, image_decoder, person_band

THRESHOLD = DataConfig().letterbox_threshold


def _letterboxed(left=80, right=150, size=224):
    img = np.zeros((size, size, 3), np.uint8)
    img[:, left:right] = (200, 120, 40)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return tf.constant(buf.getvalue())


def test_person_band_finds_the_bars():
    x, w = person_band(tf.io.decode_jpeg(_letterboxed(80, 150)), THRESHOLD)
    # Found on the decoded pixels: JPEG blocks may blur the edges by a pixel or two.
    assert 78 <= int(x) <= 80 and 150 <= int(x + w) <= 152
    all_black = tf.io.decode_jpeg(_letterboxed(0, 0))
    assert [int(v) for v in person_band(all_black, THRESHOLD)] == [0, 224]  # no band: whole image


def test_decode_image_eager_and_in_map_agree():
    jpeg = _letterboxed()
    decode = image_decoder(DataConfig(height=64, width=32, letterbox_crop=True))
    eager = decode(jpeg)
    assert eager.shape == (64, 32, 3) and eager.dtype == tf.float32
    # The band fills the output (at most the last column touches a bar), values stay in 0..255.
    assert float(tf.reduce_min(tf.reduce_mean(eager[:, 1:-1], axis=[0, 2]))) > 60
    assert 0 <= float(tf.reduce_min(eager)) and float(tf.reduce_max(eager)) <= 255
    mapped = next(iter(tf.data.Dataset.from_tensors(jpeg).map(decode)))
    np.testing.assert_allclose(mapped.numpy(), eager.numpy())
    full = image_decoder(DataConfig(height=64, width=32, letterbox_crop=False))(jpeg)
    assert float(tf.reduce_mean(full[:, :4])) < 5  # without the crop the bars remain


@pytest.mark.parametrize("size, decoded", [((128, 64), 224), ((96, 48), 112), ((56, 28), 56), ((16, 16), 28)])
def test_scaled_decode_picks_the_smallest_scale_that_still_covers_the_output(size, decoded):
    jpeg = _letterboxed()
    assert decode_jpeg_scaled(jpeg, *size).shape == (decoded, decoded, 3)
    mapped = next(iter(tf.data.Dataset.from_tensors(jpeg).map(lambda b: decode_jpeg_scaled(b, *size))))
    assert mapped.shape == (decoded, decoded, 3)


def test_scaled_decode_gives_nearly_the_same_image():
    jpeg = _letterboxed()
    full, scaled = (image_decoder(DataConfig(height=96, width=48, letterbox_crop=True, dct_scaling=s))(jpeg).numpy()
                    for s in (False, True))
    assert not np.array_equal(full, scaled)  # it really decoded at another scale
    assert np.abs(full - scaled).mean() < 4  # a flat band: only its edges may differ


@pytest.mark.parametrize("dataset", ["hvc", "multi_demo"])
def test_datasets_from_tfds(dataset):
    cfg = fx.smoke_config(fx.fixture_data_dir(dataset), dataset=dataset)
    info = dataset_info(cfg.data)
    assert info.schema.name == dataset and info.num_examples["train"] == sum(info.class_counts["train"]["gender"])
    assert set(info.class_counts["train"]) == set(info.schema.names)
    images, labels = next(iter(make_train_dataset(cfg, 8)))
    assert images.shape == (8, 32, 16, 3) and images.dtype == tf.float32
    assert set(labels) == set(info.schema.names)
    for a in info.schema.attributes:
        if a.is_multi_label:
            assert labels[a.name].shape == (8, a.num_classes) and labels[a.name].dtype == tf.float32
        else:
            assert labels[a.name].shape == (8,) and labels[a.name].dtype == tf.int32
    n = sum(int(x.shape[0]) for x, _ in make_eval_dataset(cfg, "validation", 5))
    assert n == fx.num_examples(dataset, "validation")  # one full pass, last partial batch kept


def test_cached_train_split_gives_the_same_images_as_decoding_each_time():
    cfg = fx.smoke_config(fx.fixture_data_dir(), **{"data.shuffle_buffer": 0, "data.cycle_length": 1})
    plain = next(iter(make_train_dataset(cfg, 16)))
    cached_ds = make_train_dataset(cfg.replace(**{"data.cache": True}), 16)
    cached = next(iter(cached_ds))
    # The cache stores uint8: the float images differ by rounding only; labels are identical.
    np.testing.assert_allclose(cached[0].numpy(), plain[0].numpy(), atol=0.5)
    assert cached[0].dtype == tf.float32
    for name in plain[1]:
        np.testing.assert_array_equal(cached[1][name].numpy(), plain[1][name].numpy())


def _ids(cfg, split):
    return [x["id"].numpy().decode() for x in builder(cfg.data).as_dataset(split=split)]


@pytest.mark.parametrize("split", ["train", "train[:16]"])
def test_every_example_is_read_by_exactly_one_worker(split):
    cfg = fx.smoke_config(fx.fixture_data_dir())
    everything = _ids(cfg, split)
    assert len(everything) == split_examples(cfg.data, split) and len(set(everything)) == len(everything)
    for workers in (1, 2, 3, 7):
        shards = [_ids(cfg, shard_split(cfg.data, split, workers, i)) for i in range(workers)]
        assert sorted(sum(shards, [])) == sorted(everything)  # each example once: disjoint, and nothing left out
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    images, _ = next(iter(make_train_dataset(cfg, 4, num_shards=3, index=2)))
    assert images.shape == (4, 32, 16, 3)
    with pytest.raises(ValueError, match="fewer than the 17 workers"):
        shard_split(cfg.data, "train[:16]", 17, 0)


def test_the_dataset_is_the_one_the_data_dir_holds_else_a_one_line_error(tmp_path):
    cfg = load_config(["--data_dir", str(tmp_path)]).data
    with pytest.raises(ConfigError, match="holds no built dataset"):
        dataset_name(cfg)
    for name in ("street", "voc"):
        (tmp_path / "person_attrs" / name / "1.0.0").mkdir(parents=True)
        (tmp_path / "person_attrs" / name / "1.0.0" / "dataset_info.json").write_text("{}")
        if name == "street":
            assert dataset_name(cfg) == "street"
    with pytest.raises(ConfigError, match=r"several datasets \['street', 'voc'\]: pick one with --data.dataset=NAME"):
        dataset_name(cfg)
    named = load_config(["--data_dir", str(tmp_path), "--data.dataset=hvc"]).data
    with pytest.raises(ConfigError, match=r"no built dataset at .*hvc/1.0.0.*\['street/1.0.0', 'voc/1.0.0'\]"):
        builder(named)
