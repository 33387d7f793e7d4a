"""The schema (one definition of the attributes), near-duplicate grouping and split assignment,
and the image-checking Beam step under Beam's own TestPipeline."""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests import data_fixtures as fx
from tfds_person_attrs import grouping
from tfds_person_attrs.annotation_rows import Annotation, parse_annotations
from tfds_person_attrs.beam_transforms import SKIPPED_TAG, CheckedBatch, CheckedImage, ClassCounts, ReadAndCheckImages
from tfds_person_attrs.images import inspect_image, mirrored, trim_letterbox
from tfds_person_attrs.manual_data import ManualData
from tfds_person_attrs.schema import HVC, SchemaError, load_schema, schema_from_dict


def test_hvc_schema_maps_csv_columns_to_heads():
    assert HVC.names == ("gender", "image_quality", "age", "weight", "bag", "footwear", "emotion", "pose")
    assert HVC["bag"].column == "carryingbag" and HVC["pose"].column == "bodypose"
    assert HVC["age"].classes == ("15-25", "25-35", "35-45", "45-55", "55+")
    assert schema_from_dict(json.loads(HVC.to_json())) == HVC


def test_user_schema_file_with_multi_label(tmp_path):
    path = tmp_path / "voc.json"
    path.write_text(json.dumps({"name": "voc", "csv_name": "voc.csv", "attributes": [
        {"name": "objects", "kind": "multi", "columns": ["cat", "dog"], "classes": ["cat", "dog"]}]}))
    s = load_schema(str(path))
    assert s["objects"].is_multi_label and s.required_columns == ("image_path", "cat", "dog")


def test_the_hvc_multi_label_example_reads_every_hvc_row_as_one_hot_labels():
    """docs/examples/hvc_multi_label.yaml: the hvc CSV as 27 binary labels, with no conversion and no row lost."""

    schema = load_schema(str(fx.REPO / "docs" / "examples" / "hvc_multi_label.yaml"))
    assert all(a.is_multi_label for a in schema.attributes) and sum(a.num_classes for a in schema.attributes) == 27
    assert [(a.name, a.classes) for a in schema.attributes] == [(a.name, a.classes) for a in HVC.attributes]
    with zipfile.ZipFile(fx.hvc_zip()) as z:
        kept, skipped = parse_annotations(z.read(fx.CSV_NAME), schema)
    _, rows = fx.real_rows()
    assert len(kept) == len(rows) and not skipped
    first, row = kept[0], rows[0]
    for a, h in zip(schema.attributes, HVC.attributes):
        assert sum(first.labels[a.name]) == 1 and a.classes[first.labels[a.name].index(1)] == row[h.column]


def test_schema_loss_weights_must_name_attributes(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: s\nattributes: [{name: a, classes: [x, y]}]\nloss_weights: {a: 2, b: 3}\n")
    with pytest.raises(SchemaError, match=r"loss_weights names unknown attribute\(s\) \['b'\]"):
        load_schema(str(path))
    path.write_text("name: s\nattributes: [{name: a, classes: [x, y]}]\nloss_weights: {a: 2}\n")
    assert load_schema(str(path)).loss_weights == {"a": 2.0}
    assert HVC.loss_weights["emotion"] == 4 and schema_from_dict(HVC.to_dict()) == HVC


@pytest.mark.parametrize("bad, message", [
    ({"attributes": [{"name": "a", "classes": ["x", "y"]}]}, "missing required field 'name'"),
    ({"name": "s", "attributes": []}, "'attributes' must be a non-empty list"),
    ({"name": "s", "attributes": [{"name": "Gender", "classes": ["x", "y"]}]}, "must be lower_snake_case"),
    ({"name": "s", "attributes": [{"name": "a", "classes": ["x"]}]}, "needs at least 2 classes"),
    ({"name": "s", "attributes": [{"name": "a", "classes": ["x", "x"]}]}, "class names repeat"),
    ({"name": "s", "attributes": [{"name": "image", "classes": ["x", "y"]}]}, "duplicated or reserved"),
    ({"name": "s", "attributes": [{"name": "a", "classes": ["x", "y"], "colour": 1}]}, "unknown field(s) ['colour']"),
    ({"name": "s", "attributes": [{"name": "a", "kind": "multi", "columns": ["c"], "classes": ["x", "y"]}]},
     "1 columns for 2 classes"),
])
def test_bad_schemas_name_the_field(tmp_path, bad, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SchemaError) as e:
        load_schema(str(path))
    assert message in str(e.value) and str(path) in str(e.value)


def test_near_duplicates_join_transitively_mirrored_too_and_name_the_group_by_its_smallest_id():
    a = np.zeros(63, np.float32)
    a[[0, 1]] = 1.0  # (0,1) has an odd horizontal frequency: mirroring negates it
    b = a.copy()
    b[2] = 0.75  # cos(a, b) = 0.88
    c = b.copy()
    c[3] = 0.9  # cos(b, c) = 0.87, cos(a, c) = 0.77: joined only through b
    far = np.zeros(63, np.float32)
    far[10] = 1.0
    sigs = [v / np.linalg.norm(v) for v in (a, b, c, far, mirrored(a))]
    groups = grouping.near_duplicate_groups(["z", "y", "x", "w", "m"], sigs, threshold=0.85)
    assert groups == {"z": "m", "y": "m", "x": "m", "w": "w", "m": "m"}
    assert grouping.near_duplicate_groups(["z", "x"], [sigs[0], sigs[2]], threshold=0.85) == {"z": "z", "x": "x"}


def test_all_pairs_in_any_tiles_are_the_pairs_of_the_whole_similarity_matrix_once():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 63))
    sigs = np.concatenate([base, base[:25] + 0.3 * rng.standard_normal((25, 63))])
    sigs[::7] = [mirrored(s) for s in sigs[::7]]
    halves = grouping.mirror_halves(sigs / np.linalg.norm(sigs, axis=1, keepdims=True))
    rows, cols = grouping.similar_halves(halves, halves, 0.86)
    want = sorted((i, j) for i, j in zip(rows.tolist(), cols.tolist()) if i < j)
    assert len(want) >= 20
    for tile in ((3, 5), (8, 8), (256, 1024)):
        i, j = grouping.all_pairs(halves, 0.86, *tile)
        assert sorted(zip(i.tolist(), j.tolist())) == want and len(i) == len(want)


def test_split_of_is_stable_and_follows_the_fractions():
    names = [f"g{i}" for i in range(20000)]
    splits = [grouping.split_of(n, seed=3) for n in names]
    assert splits == [grouping.split_of(n, seed=3) for n in names]
    share = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["test"] - 0.1) < 0.01
    assert [grouping.split_of(n, seed=4) for n in names[:200]] != splits[:200]
    assert grouping.parse_fractions("70,20,10")[1] == ("validation", 0.2)
    with pytest.raises(ValueError, match="three non-negative numbers"):
        grouping.parse_fractions("80,20")



def test_a_split_recipe_records_itself_and_names_its_own_config():
    default = grouping.SplitRecipe()
    assert default.record() == {"split_seed": 0, "split_fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
                                "dedup_threshold": grouping.DEFAULT_THRESHOLD, "split_by": "group"}
    seeded = grouping.SplitRecipe(split_seed=3, split_fractions=grouping.parse_fractions("50,25,25"),
                                  dedup_threshold=0.9)
    assert seeded.config_name("hvc") == "hvc_seed3_dedup0p9_split0p5-0p25-0p25"
    by_row = grouping.SplitRecipe(split_fractions=grouping.parse_fractions("50,25,25"), split_by="row")
    assert by_row.config_name("hvc") == "hvc_byrow_split0p5-0p25-0p25"


def test_read_and_check_images_step_under_test_pipeline(tmp_path):
    src = fx.write_real_slice(tmp_path / "manual", 3, num_missing=1)
    data = ManualData(str(src), HVC)
    anns = [Annotation(i + 1, f"resized/{n}.jpg", {}) for i, n in enumerate((1, 2, 3, 7001))]
    with TestPipeline() as p:
        out = (p | beam.Create([anns[:2], anns[2:]])
               | beam.ParDo(ReadAndCheckImages(data, strict=False)).with_outputs(SKIPPED_TAG, main="checked"))
        checked = out.checked | "Ids" >> beam.FlatMap(lambda b: [(c.annotation.image_id, c.converted_from) for c in b])
        skipped = out[SKIPPED_TAG] | "Reasons" >> beam.Map(lambda s: (s.row, s.reason))
        assert_that(checked, equal_to([("resized/1.jpg", None), ("resized/2.jpg", None), ("resized/3.jpg", None)]))
        assert_that(skipped, equal_to([(4, "missing_image")]), label="skipped")


def test_checked_batches_travel_as_columns_and_come_back_whole():
    items = [CheckedImage(Annotation(1, "a.jpg", {"gender": 1}, "g"), np.ones(63, np.float16), 5, 700, "png", b"jpeg"),
             CheckedImage(Annotation(2, "b.jpg", {"clothes": [0, 1]}), np.arange(63, dtype=np.float16), 6, 800)]
    back = pickle.loads(pickle.dumps(CheckedBatch(items)))
    assert type(back) is CheckedBatch and len(back) == 2
    for a, b in zip(items, back):
        assert dataclasses.replace(a, signature=None) == dataclasses.replace(b, signature=None)
        np.testing.assert_array_equal(a.signature, b.signature)
    assert pickle.loads(pickle.dumps(CheckedBatch())) == []


def test_letterbox_trim_drops_dark_flat_bars_only():
    rng = np.random.default_rng(0)
    picture = rng.integers(60, 200, (40, 30)).astype(np.uint8)
    framed = np.zeros((50, 44), np.uint8)
    framed[6:46, 9:39] = picture
    framed[:, 42] = rng.integers(0, 25, 50)  # dark but textured (std > 6): a column of the picture, not a bar
    out = trim_letterbox(framed)
    np.testing.assert_array_equal(out, framed[6:46, 9:43])
    dark = np.full((20, 20), 5, np.uint8)
    assert trim_letterbox(dark) is dark


def test_inspect_image_keeps_original_jpeg_bytes():
    with zipfile.ZipFile(fx.hvc_zip()) as z:
        jpeg = z.read("resized/1.jpg")
    checked = inspect_image(jpeg)
    assert checked.jpeg is jpeg and checked.converted_from is None and (checked.width, checked.height) == (224, 224)


def test_manual_data_pickles_without_the_zip_directory():
    data = ManualData(str(fx.hvc_zip()), HVC)
    data.read_csv_bytes()  # opens the zip and reads its directory, as the launcher does
    copy = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < 4000  # the directory of a 7,000-image zip would be ~1 MB
    assert copy.read_image("resized/1.jpg") == data.read_image("resized/1.jpg")


def test_group_sizes_count_shared_groups_by_name_and_the_rest_as_groups_of_one():
    counts = ClassCounts(HVC)
    labels = {a.name: [0] * a.num_classes if a.is_multi_label else 0 for a in HVC.attributes}

    def image(image_id, csv_group=None):
        return CheckedImage(Annotation(1, image_id, labels, csv_group), np.zeros(1), 0)

    first = [("train", "p1", image("x/1", "p1"), True), ("train", "a", image("a"), True),
             ("test", "s1", image("s1"), False)]
    second = [("train", "p1", image("x/2", "p1"), True), ("train", "a", image("b"), True),
              ("train", "a", image("c"), True), ("validation", "s2", image("s2"), False)]
    accs = []
    for part in (first, second):
        accs.append(counts.add_input(counts.create_accumulator(), part))  # one batch per accumulator
    out = counts.extract_output(counts.merge_accumulators(accs))
    assert out["group_sizes"] == {2: 1, 3: 1, 1: 2}
    assert sum(out["class_counts"]["train"]["gender"]) == 5
