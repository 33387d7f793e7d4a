"""The label audit: out-of-fold probabilities by group folds, cleanlab per head, its CSV/JSON/HTML outputs, and
training without the flagged examples (data.exclude_ids).

    python -m pytest -q tests/test_label_audit.py

Two folds of one training step each on the 80-image demo fixture: the fold models learn nothing in that time,
so whether a flipped label is ranked near the top is measured by benchmarks/label_audit.py (docs/results.md);
here cleanlab's ranking is checked on probabilities that know the true labels.
"""

import csv
import json
import os
import re

import numpy as np
import pytest

from tests import trainer_fixtures as fx
from tests.browser_fixtures import CHROMIUM, render
from tfds_person_attrs import cli
from tfds_person_attrs.schema import MULTI, Attribute
from trainer import label_audit
from trainer.config import ConfigError
from trainer.evaluation.label_issues import head_issues
from trainer.evaluation.label_issues_page import write_page
from trainer.input import data as data_lib

TINY = ["--config", "smoke", "--data.height=32", "--data.width=16", "--train.epochs=1", "--train.steps_per_epoch=1",
        "--train.validation_steps=1", "--data.dataset=hvc"]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    data_dir = fx.fixture_data_dir("hvc")
    job = tmp_path_factory.mktemp("audit")
    rc = cli.run(label_audit.main, [*TINY, "--data_dir", data_dir, "--job_dir", str(job), "--folds", "2",
                                    "--show", "3"])
    assert rc == 0
    return data_dir, job


def test_outputs_are_consistent_with_the_train_split_and_its_labels(audited):
    data_dir, job = audited
    cfg = fx.smoke_config(data_dir)
    train_ids = {i for i, _ in data_lib.split_ids(cfg.data, "train")}
    summary = json.loads((job / "label_issues.json").read_text())
    rows = _read_csv(job / "label_issues.csv")
    schema = data_lib.dataset_info(cfg.data).schema
    assert summary["examples_audited"] == len(train_ids) == fx.num_examples("hvc", "train")
    assert summary["folds"] == 2 and summary["folds_by"] == "group"
    assert set(summary["heads"]) == set(schema.names)
    given = {r["image_path"]: r for r in _read_csv(os.path.join(os.path.dirname(data_dir), "manual",
                                                                "hvc_annotations.csv"))}
    for a in schema.attributes:
        head_rows = [r for r in rows if r["head"] == a.name]
        assert len(head_rows) == summary["heads"][a.name]["issues_found"]
        assert [int(r["rank"]) for r in head_rows] == list(range(1, len(head_rows) + 1))
        quality = [float(r["quality"]) for r in head_rows]
        assert quality == sorted(quality) and all(0 <= q <= 1 for q in quality)
        for r in head_rows:
            assert r["id"] in train_ids
            assert r["given"] == given[r["id"]][a.column]  # the label of the annotations CSV, not another row's
            assert r["predicted"] in a.classes
    assert rows, "an untrained model disagrees with some labels: the audit must flag some"


def test_folds_split_the_train_split_by_group_and_each_trained_without_its_part(audited):
    data_dir, job = audited
    groups = dict(data_lib.split_ids(fx.smoke_config(data_dir).data, "train"))
    held = [{r["id"] for r in _read_csv(job / "folds" / str(k) / "held_out.csv")} for k in range(2)]
    assert held[0] and held[1] and not held[0] & held[1] and held[0] | held[1] == set(groups)
    assert not {groups[i] for i in held[0]} & {groups[i] for i in held[1]}  # no group on both sides
    for k in range(2):
        fold_config = (job / "folds" / str(k) / "config.yaml").read_text()
        assert f"exclude_ids: {job / 'folds' / str(k) / 'held_out.csv'}" in fold_config
        assert (job / "folds" / str(k) / "model.keras").exists()
        assert not (job / "folds" / str(k) / "model").exists()  # a fold model is not exported


def test_a_rerun_reuses_the_finished_folds_of_the_same_config(audited, capsys):
    data_dir, job = audited
    model = job / "folds" / "0" / "model.keras"
    before = model.stat().st_mtime_ns
    capsys.readouterr()
    assert cli.run(label_audit.main, [*TINY, "--data_dir", data_dir, "--job_dir", str(job), "--folds", "2",
                                                "--show", "3"]) == 0
    assert model.stat().st_mtime_ns == before
    out, err = capsys.readouterr()  # the result on stdout, one line; progress on stderr
    assert re.fullmatch(rf"{fx.num_examples('hvc', 'train')} examples audited; issues per head: gender \d+, .*; "
                        rf"see {re.escape(str(job / 'label_issues.html'))}\n", out), out
    assert "examples audited" not in err
    assert cli.run(label_audit.main, [*TINY, "--data_dir", data_dir, "--job_dir", str(job), "--folds", "2",
                                      "--show", "3", "--optim.max_lr=0.02"]) == 0
    assert model.stat().st_mtime_ns != before  # another config: the folds train again


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install -y chromium")
def test_the_page_shows_the_most_suspicious_images_in_chromium(audited, tmp_path):
    _, job = audited
    rows = _read_csv(job / "label_issues.csv")
    shown = [r for r in rows if int(r["rank"]) <= 3]
    loaded, total, table = render(str(job / "label_issues.html"), tmp_path, table_id="summary")
    assert table and total == len(shown) > 0 and loaded == total


def test_multi_label_heads_are_audited_as_label_sets(tmp_path):
    data_dir = fx.fixture_data_dir(fx.MULTI_SCHEMA.name)
    argv = [*TINY[:-1], f"--data.dataset={fx.MULTI_SCHEMA.name}", "--data_dir", data_dir, "--job_dir", str(tmp_path),
            "--folds", "2"]
    assert cli.run(label_audit.main, argv) == 0
    heads = json.loads((tmp_path / "label_issues.json").read_text())["heads"]
    assert heads["clothes"]["kind"] == "multi" and heads["gender"]["kind"] == "single"
    assert heads["clothes"]["examples_audited"] == fx.num_examples(fx.MULTI_SCHEMA.name, "train")
    rows = [r for r in _read_csv(tmp_path / "label_issues.csv") if r["head"] == "clothes"]
    assert len(rows) == heads["clothes"]["issues_found"] > 0
    classes = set(fx.MULTI_SCHEMA.attributes[1].classes)
    for r in rows:
        for labels in (r["given"], r["predicted"]):
            assert labels == "(none)" or set(labels.split("|")) <= classes


def test_the_page_escapes_ids_and_class_names(tmp_path):
    evil = "<script>alert(1)</script>"
    row = {"id": evil, "head": "gender", "rank": 1, "given": evil, "predicted": "male", "quality": 0.01}
    summary = {"dataset": "d", "examples_audited": 1, "folds": 2, "folds_by": "group",
               "heads": {"gender": {"kind": "single", "examples_audited": 1, "issues_found": 1}}}
    write_page(str(tmp_path / "p.html"), [row], summary, {})
    html = (tmp_path / "p.html").read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def _confident(true, num_classes, rng):
    """Probabilities that favour the true class (0.8 on average), as a model that learned the task gives."""
    p = rng.dirichlet(np.ones(num_classes), size=len(true)) * 0.3
    p[np.arange(len(true)), true] += 0.7
    return p / p.sum(axis=1, keepdims=True)


def test_cleanlab_ranks_flipped_labels_first_on_both_kinds_of_head():
    rng = np.random.default_rng(0)
    n, flipped = 200, np.arange(0, 200, 20)
    single = Attribute("footwear", ("CantSee", "Fancy", "Normal"), column="footwear")
    true = rng.integers(0, 3, n)
    given = true.copy()
    given[flipped] = (true[flipped] + 1) % 3
    found = head_issues(single, given, _confident(true, 3, rng))
    assert set(np.argsort(found["quality"])[:len(flipped)]) == set(flipped)
    flagged = set(np.flatnonzero(found["flagged"]))
    assert flagged <= set(flipped) and len(flagged) >= 0.8 * len(flipped)  # cleanlab's pruning is conservative
    assert [found["given"][i] for i in flipped[:2]] == [single.classes[given[i]] for i in flipped[:2]]

    multi = Attribute("items", ("bag", "heels", "back"), column="items", kind=MULTI)
    true_on = rng.integers(0, 2, (n, 3))
    given_on = true_on.copy()
    given_on[flipped, 1] = 1 - given_on[flipped, 1]
    probs = np.where(true_on == 1, rng.uniform(0.75, 0.95, (n, 3)), rng.uniform(0.05, 0.25, (n, 3)))
    found = head_issues(multi, given_on.astype(np.float32), probs)
    assert set(np.argsort(found["quality"])[:len(flipped)]) == set(flipped)
    flagged = set(np.flatnonzero(found["flagged"]))
    assert flagged and flagged <= set(flipped)
    assert found["predicted"][flipped[0]] == "|".join(c for c, o in zip(multi.classes, true_on[flipped[0]]) if o) \
        or "(none)"


def test_exclude_ids_drops_the_listed_examples_from_the_train_split_only(tmp_path, caplog):
    data_dir = fx.fixture_data_dir("hvc")
    cfg = fx.smoke_config(data_dir, **{"data.shuffle_buffer": 0})
    index = data_lib.split_ids(cfg.data, "train")
    kept = [i for i, _ in index[:8]]
    listed = tmp_path / "issues.csv"
    listed.write_text("id,head\n" + "".join(f"{i},gender\n" for i, _ in index[8:]) + "resized/none.jpg,age\n")
    cfg = cfg.replace(**{"data.exclude_ids": str(listed)})
    with caplog.at_level("INFO", logger="trainer.input.data"):
        assert data_lib.train_examples(cfg.data) == 8
    assert f"{len(index) - 8} of {len(index)} train examples left out" in caplog.text
    assert "1 of them are not in split 'train'" in caplog.text
    labels = {r["id"]: r for r in _labels_by_id(cfg)}
    kept_labels = {labels[i]["sig"] for i in kept}
    batches = data_lib.make_train_dataset(cfg, 8).take(3)
    seen = {tuple(int(y[name][j]) for name in sorted(y)) for _, y in batches for j in range(8)}
    assert seen <= kept_labels and len(seen) > 1
    assert data_lib.split_examples(cfg.data, "validation") == fx.num_examples("hvc", "validation")


def _labels_by_id(cfg):
    for ex in data_lib.eval_examples(cfg, "train").as_numpy_iterator():
        yield {"id": ex["id"].decode(), "sig": tuple(int(ex["labels"][name]) for name in sorted(ex["labels"]))}


@pytest.mark.parametrize("content, says", [("image_path\nresized/1.jpg\n", "has no 'id' column"),
                                           ("id,head\n,age\n", "line 2: the id is empty")])
def test_a_bad_exclude_file_is_one_clear_error(tmp_path, content, says):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    cfg = fx.smoke_config(fx.fixture_data_dir("hvc"), **{"data.exclude_ids": str(path)})
    with pytest.raises(ConfigError, match=says):
        data_lib.train_examples(cfg.data)


# Ids as a hostile or unlucky annotations CSV may hold them: formulas, signs, a quote, a tab.
FORMULA_IDS = ['=HYPERLINK("http://evil.example", "x").jpg', "+1.jpg", "-2.jpg", "@SUM(A1).jpg", "\tt.jpg",
               "'=already quoted.jpg", "'plain quote.jpg", "resized/1.jpg"]


def test_label_issues_csv_shows_formulas_as_text_and_exclude_ids_reads_the_ids_back(tmp_path):
    from trainer.evaluation.label_issues import write_csv

    path = tmp_path / "label_issues.csv"
    write_csv(str(path), [{"id": i, "head": "gender", "rank": 1, "given": "=cmd|' /C calc'!A0", "predicted": "-x",
                           "quality": 0.5} for i in FORMULA_IDS])
    rows = list(csv.reader(open(path, newline="")))[1:]
    cells = [c for row in rows for c in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t"))]  # no cell a spreadsheet would run
    assert [r[0] for r in rows][:2] == ["'" + FORMULA_IDS[0], "'+1.jpg"] and rows[0][3] == "'=cmd|' /C calc'!A0"
    assert data_lib.read_excluded_ids(str(path)) == frozenset(FORMULA_IDS)  # the ids exactly as written


def test_the_builds_skipped_rows_csv_shows_formulas_as_text():
    from tfds_person_attrs.annotation_rows import Skipped
    from tfds_person_attrs.beam_transforms import skipped_rows_csv

    text = skipped_rows_csv([Skipped(2, '=HYPERLINK("http://x")', "missing_image", "-no such file")], [])
    assert list(csv.reader(text.splitlines()))[1] == ["2", "'=HYPERLINK(\"http://x\")", "missing_image",
                                                      "'-no such file"]
