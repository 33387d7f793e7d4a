"""The report renders in a real headless browser: every image loads and the metrics table is there.

Needs Debian's chromium (CI: `apt-get install -y chromium`); the browser test skips, saying so, only when it
is missing.

    python -m pytest -q tests/test_report.py
"""

import csv
import os
import re

import numpy as np
import pytest

from tests.browser_fixtures import CHROMIUM, render
from tfds_person_attrs.schema import Attribute, Schema
from trainer import report
from trainer.evaluation import eval_metrics, report_figures

SCHEMA = Schema("t", (Attribute("gender", ("female", "male"), column="g"),
                      Attribute("age", ("young", "mid", "old"), column="a"),
                      Attribute("tags", ("hat", "bag", "coat"), kind="multi", column="t")))


def _fake_run(tmp_path, with_schedule=True):
    rng = np.random.default_rng(0)
    n = 12
    labels = {"gender": rng.integers(0, 2, n), "age": rng.integers(0, 3, n), "tags": rng.integers(0, 2, (n, 3))}
    probs = {"gender": rng.dirichlet([1, 1], n), "age": rng.dirichlet([1, 1, 1], n), "tags": rng.random((n, 3))}
    metrics = eval_metrics.evaluate_arrays(SCHEMA, labels, probs,
                                           {"gender": [10, 3], "age": [1, 5, 2], "tags": [3, 4, 1]})
    hist = tmp_path / "history.csv"
    cols = ["epoch", "loss", "val_loss", "gender_accuracy", "val_gender_accuracy", "age_accuracy", "val_age_accuracy",
            "val_gender_balanced_accuracy", "val_age_balanced_accuracy", "tags_mA", "val_tags_mA",
            "val_mean_balanced_accuracy"]
    cols += ["lr", "momentum"] if with_schedule else []
    with open(hist, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e in range(4):
            w.writerow([e] + [float(v) for v in rng.random(len(cols) - 1)])
    images = rng.integers(0, 255, (n, 32, 16, 3), dtype=np.uint8)
    losses = eval_metrics.sample_losses(SCHEMA, labels, probs)
    return metrics, str(hist), report.Samples(images, labels, probs, losses, [f"resized/{i}.jpg" for i in range(n)])


def test_report_files_and_order(tmp_path):
    metrics, hist, samples = _fake_run(tmp_path)
    path = report.write_report(str(tmp_path / "r"), SCHEMA, metrics, hist, samples, max_images=5)
    text = open(path).read()
    for name in ("curves_loss.png", "curves_accuracy.png", "curves_balanced.png", "schedule.png",
                 "confusion_gender.png", "confusion_age.png", "labels_tags.png", "samples/000.png", "samples/004.png"):
        assert os.path.getsize(tmp_path / "r" / name) > 100, name
        assert f'src="{name}"' in text  # referenced relatively, so the folder is the report
    assert not os.path.exists(tmp_path / "r" / "samples/005.png")
    shown = [float(x) for x in re.findall(r"loss ([0-9.]+)</div>", text)]
    # the losses the samples carry (evaluate's), worst mistakes first
    assert shown == pytest.approx(sorted(samples.losses, reverse=True)[:5], abs=0.005)
    assert 'id="metrics"' in text and "majority baseline" in text
    prior = metrics["heads"]["age"]["prior_log_loss"]
    assert "prior's log loss" in text
    assert f"<td>{prior:.3f}</td>" in text  # the age row shows its prior's log loss


def test_multi_label_heads_get_chance_levels_a_per_label_table_and_their_own_section(tmp_path):
    metrics, hist, samples = _fake_run(tmp_path)
    tags = metrics["heads"]["tags"]
    # the coat label answered the same for every image: mA exactly 0.5
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.3], [0.1, 0.8, 0.3], [0.7, 0.6, 0.3], [0.2, 0.1, 0.3]])
    metrics = {**metrics, "heads": {**metrics["heads"], "tags": eval_metrics.multi_label_metrics(
        labels, probs, ("hat", "bag", "coat"), train_counts=tags["train_positive_counts"])}}
    text = open(report.write_report(str(tmp_path / "r"), SCHEMA, metrics, hist, samples, max_images=3)).read()
    multi_row = re.search(r'<table id="metrics-multi">.*?</table>', text, re.S).group(0)
    assert "chance mA" in multi_row and "<td>0.500</td>" in multi_row  # chance beside the head's mA
    assert "1 of 3" in multi_row  # labels at chance
    table = re.search(r'<table id="labels-tags">.*?</table>', text, re.S).group(0)
    for column in ("train positives", "positives here", "mA (chance 0.5)", "AP", "F1", "threshold"):
        assert column in table
    rows = re.findall(r'<tr class="(\w*)"><td>(\w+)</td>', table)
    assert rows == [("", "hat"), ("", "bag"), ("below", "coat")]  # the label at chance is marked
    section = text.index("<h2>Multi-label heads, per label</h2>")
    assert text.index("<h2>Confusion matrices</h2>") < text.index('src="confusion_age.png"') < section
    assert section < text.index('src="labels_tags.png"')  # the chart sits under its own heading


def test_missing_schedule_columns_are_noted(tmp_path):
    metrics, hist, _ = _fake_run(tmp_path, with_schedule=False)
    text = open(report.write_report(str(tmp_path / "r"), SCHEMA, metrics, hist)).read()
    assert "no lr and momentum columns" in text
    assert not os.path.exists(tmp_path / "r" / "schedule.png")


def test_confusion_to_tensorboard(tmp_path):
    import tensorflow as tf

    metrics, _, _ = _fake_run(tmp_path)
    report_figures.log_confusion_to_tensorboard(str(tmp_path / "tb"), SCHEMA, metrics, step=3)
    values = {}
    for ev in tf.compat.v1.train.summary_iterator(tf.io.gfile.glob(str(tmp_path / "tb" / "events*"))[0]):
        values.update({v.tag: v for v in ev.summary.value})
    assert {"confusion/gender", "confusion/age", "labels/tags"} <= set(values)
    v = values["confusion/age"]
    assert v.metadata.plugin_data.plugin_name == "images"  # what TensorBoard's Images tab looks for
    w, h, png = tf.make_ndarray(v.tensor)
    assert tf.image.decode_png(png).shape[:2] == (int(h), int(w))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install -y chromium")
@pytest.mark.parametrize("embed", [False, True])
def test_report_renders_in_chromium(tmp_path, embed):
    metrics, hist, samples = _fake_run(tmp_path)
    path = report.write_report(str(tmp_path / "r"), SCHEMA, metrics, hist, samples, max_images=6, embed=embed)
    loaded, total, table = render(path, tmp_path)
    assert table
    assert total == 4 + 3 + 6  # curves x3, schedule, confusion x2 and the per-label chart, samples
    assert loaded == total


# Class and file names are user data (the schema file, the CSV): markup in them must reach the reader as text.
SCRIPT = "<script>window.injected = (window.injected || 0) + 1</script>"
ATTRIBUTE = '" onload="window.injected = (window.injected || 0) + 1'  # would break out of an <img alt="...">


def _page_with_hostile_names(tmp_path):
    schema = Schema("t", (Attribute("gender", (f"f&m {SCRIPT}", "male"), column="g"),
                          Attribute("tags", ("hat & cap", SCRIPT), kind="multi", column="t")))
    rng = np.random.default_rng(1)
    n = 4
    labels = {"gender": np.array([0, 1, 0, 1]), "tags": np.array([[1, 1], [0, 1], [1, 0], [0, 0]])}
    probs = {"gender": rng.dirichlet([1, 1], n), "tags": rng.random((n, 2))}
    metrics = eval_metrics.evaluate_arrays(schema, labels, probs, {"gender": [5, 1], "tags": [2, 2]})
    ids = [f"a&b/{SCRIPT}.jpg", f"c/{ATTRIBUTE}.jpg", "d.jpg", "e.jpg"]
    samples = report.Samples(rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), labels, probs,
                             eval_metrics.sample_losses(schema, labels, probs), ids)
    return report.write_report(str(tmp_path / "r"), schema, metrics, samples=samples, notes=[f"model {SCRIPT}"])


def test_names_from_user_data_are_escaped(tmp_path):
    text = open(_page_with_hostile_names(tmp_path)).read()
    assert SCRIPT not in text and ATTRIBUTE not in text  # never raw markup
    assert "&lt;script&gt;window.injected" in text
    assert "<td>f&amp;m &lt;script&gt;" in text  # the majority class in the metrics table
    assert "<td>hat &amp; cap</td>" in text  # a label row of the per-label table
    assert 'alt="c/&#34; onload=&#34;window.injected' in text  # the quote cannot end the attribute
    assert text.count("<script") == 0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install -y chromium")
def test_names_from_user_data_show_as_text_in_chromium(tmp_path):
    dom = []
    loaded, total, table = render(_page_with_hostile_names(tmp_path), tmp_path, dom)
    shown, injected = dom
    assert injected == 0  # no script or handler from the names ran
    assert table and loaded == total == 2 + 4  # confusion matrix, per-label chart and the four samples
    assert "a&amp;b/&lt;script&gt;window.injected" in shown  # the file name is on the page, as text


# Class names as users write them: a currency, TeX-like marks; two `$` in one name is what matplotlib reads as math.
ODD_NAMES = ("$_$", "$^$", "US$ 5", r"$\foo$", "x_1^2")


def test_class_names_with_dollars_and_carets_are_drawn_as_written_and_the_report_is_written(tmp_path):
    odd = Schema("t", (Attribute("price", ODD_NAMES, column="p"),
                       Attribute("marks", ODD_NAMES, kind="multi", column="m")))
    rng = np.random.default_rng(1)
    n = 10
    labels = {"price": rng.integers(0, len(ODD_NAMES), n), "marks": rng.integers(0, 2, (n, len(ODD_NAMES)))}
    probs = {"price": rng.dirichlet([1] * len(ODD_NAMES), n), "marks": rng.random((n, len(ODD_NAMES)))}
    metrics = eval_metrics.evaluate_arrays(odd, labels, probs)
    figures = list(report_figures.confusion_figures(odd, metrics)) + list(report_figures.multi_label_figures(odd,
                                                                                                            metrics))
    for _, fig in figures:
        ax = fig.axes[0]
        shown = [t._preprocess_math(t.get_text()) for t in ax.get_xticklabels()]
        assert shown == [(name, False) for name in ODD_NAMES]  # as written, none of it parsed as mathtext
        report_figures.fig_to_png(fig)
    samples = report.Samples(rng.integers(0, 255, (n, 32, 16, 3), dtype=np.uint8), labels, probs,
                             eval_metrics.sample_losses(odd, labels, probs))
    page = report.write_report(str(tmp_path / "r"), odd, metrics, None, samples, max_images=3)
    for name in ("index.html", "confusion_price.png", "labels_marks.png"):
        assert os.path.getsize(tmp_path / "r" / name) > 100, name
    assert "US$ 5" in open(page).read()
