"""Metric functions against hand-computed values and scikit-learn.

    python -m pytest -q tests/test_eval_metrics.py
"""

import numpy as np
import pytest
from sklearn import metrics as skm

from tfds_person_attrs.schema import Attribute, Schema
from trainer.evaluation import eval_metrics as em

# 3 classes; true support 2/3/1. Hand values below.
Y_TRUE = np.array([0, 0, 1, 1, 1, 2])
Y_PRED = np.array([0, 1, 1, 1, 0, 1])


def test_confusion_matrix_by_hand():
    cm = em.confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(cm, skm.confusion_matrix(Y_TRUE, Y_PRED, labels=[0, 1, 2]))


def test_single_label_by_hand():
    m = em.single_label_metrics(Y_TRUE, np.eye(3)[Y_PRED], class_names=["a", "b", "c"], train_counts=[1, 10, 2])
    assert m["accuracy"] == pytest.approx(3 / 6)
    # recalls: 1/2, 2/3, 0/1 -> mean 7/18
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    # F1: class a: P=1/2 R=1/2 -> 1/2; class b: P=2/4 R=2/3 -> 4/7; class c: 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 7 + 0) / 3)
    # train majority is "b"; on these labels always-"b" is right 3/6 times
    assert m["majority_class"] == "b"
    assert m["majority_baseline"] == pytest.approx(0.5)
    assert m["majority_train_fraction"] == pytest.approx(10 / 13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_label_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 200)
    probs = rng.random((200, 4))
    pred = probs.argmax(1)
    m = em.single_label_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))


@pytest.mark.parametrize("seed", [0, 1])
def test_log_loss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 200)
    probs = rng.random((200, 4))
    probs /= probs.sum(1, keepdims=True)
    assert em.single_label_metrics(y, probs)["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(4)))


def test_prior_log_loss_is_what_answering_the_training_frequencies_scores():
    y = np.array([0, 0, 1])
    # train counts 3/1, add-one smoothed -> frequencies 4/6 and 2/6
    by_hand = -(2 * np.log(4 / 6) + np.log(2 / 6)) / 3
    assert em.prior_log_loss([3, 1], y) == pytest.approx(by_hand)
    # a class never seen in training costs a finite amount
    assert np.isfinite(em.prior_log_loss([5, 0], np.array([1, 1])))
    prior_only = em.single_label_metrics(y, np.tile([4 / 6, 2 / 6], (3, 1)), train_counts=[3, 1])
    assert prior_only["log_loss"] == pytest.approx(prior_only["prior_log_loss"])
    informed = em.single_label_metrics(y, np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]]), train_counts=[3, 1])
    assert informed["log_loss"] < informed["prior_log_loss"]
    # hard predictions carry no probabilities, so no log loss
    assert "log_loss" not in em.single_label_metrics(y, np.array([0, 0, 0]), class_names=["a", "b"])


def test_class_missing_from_labels_is_left_out_like_sklearn():
    y, pred = np.array([0, 0, 1]), np.array([0, 2, 1])  # class 2 predicted, never true
    cm = em.confusion_matrix(y, pred, 3)
    assert em.per_class_recall(cm)[2] != em.per_class_recall(cm)[2]  # NaN
    assert em.balanced_accuracy(cm) == pytest.approx(0.75)
    with pytest.warns(UserWarning):
        assert em.balanced_accuracy(cm) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert em.macro_f1(cm) == pytest.approx(skm.f1_score(y, pred, average="macro"))


# Multi-label: 4 samples x 3 labels.
ML_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
ML_PROB = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.1], [0.8, 0.15, 0.2], [0.1, 0.1, 0.3]])
# predictions at 0.5: [[1,0,0],[1,1,0],[1,0,0],[0,0,0]]


def test_mA_by_hand():
    ma, per = em.label_based_mA(ML_TRUE, ML_PROB >= 0.5)
    # label0: pos 2/2, neg 1/2 -> .75; label1: pos 1/2, neg 2/2 -> .75; label2: pos 0/1, neg 3/3 -> .5
    np.testing.assert_allclose(per, [0.75, 0.75, 0.5])
    assert ma == pytest.approx(2 / 3)


def test_mA_label_without_positives_uses_negative_recall_only():
    _, per = em.label_based_mA(np.array([[0], [0]]), np.array([[1], [0]]))
    np.testing.assert_allclose(per, [0.5])


def test_instance_metrics_by_hand():
    m = em.instance_metrics(ML_TRUE, ML_PROB >= 0.5)
    # per-sample |Y&P|,|Y|P|,|P|,|Y|: s0 1,2,1,2  s1 1,2,2,1  s2 1,2,1,2  s3 empty/empty -> 1
    assert m["instance_accuracy"] == pytest.approx((0.5 + 0.5 + 0.5 + 1) / 4)
    assert m["instance_precision"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert m["instance_recall"] == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)
    p, r = 3.5 / 4, 3 / 4
    assert m["instance_f1"] == pytest.approx(2 * p * r / (p + r))


def test_instance_metrics_match_sklearn_without_empty_rows():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (50, 5))
    y[:, 0] = 1  # no empty label sets, so the 0/0 convention cannot matter
    p = rng.integers(0, 2, (50, 5))
    p[:, 1] = 1
    m = em.instance_metrics(y, p)
    assert m["instance_accuracy"] == pytest.approx(skm.jaccard_score(y, p, average="samples"))
    assert m["instance_precision"] == pytest.approx(skm.precision_score(y, p, average="samples"))
    assert m["instance_recall"] == pytest.approx(skm.recall_score(y, p, average="samples"))


def test_average_precision_by_hand_and_sklearn():
    # label 0 ranking .9(+) .8(+) .6(-) .1(-) -> AP 1; label 2: .4(+) ranks first -> AP 1
    assert em.average_precision(ML_TRUE[:, 0], ML_PROB[:, 0]) == pytest.approx(1.0)
    # label 1 ranking .7(+) .2(-) .15(+) .1(-): precision 1 at the first positive, 2/3 at the second
    assert em.average_precision(ML_TRUE[:, 1], ML_PROB[:, 1]) == pytest.approx((1 + 2 / 3) / 2)
    m_ap, aps = em.mean_average_precision(ML_TRUE, ML_PROB)
    assert m_ap == pytest.approx((1 + (1 + 2 / 3) / 2 + 1) / 3)
    np.testing.assert_allclose(aps, [skm.average_precision_score(ML_TRUE[:, j], ML_PROB[:, j]) for j in range(3)])


def test_average_precision_ties_match_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 5, 300) / 4.0  # many ties
    assert em.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))
    assert np.isnan(em.average_precision(np.zeros(3), [0.1, 0.2, 0.3]))


def test_evaluate_arrays_and_sample_losses():
    schema = Schema("t", (Attribute("a", ("x", "y", "z"), column="a"),
                          Attribute("tags", ("p", "q", "r"), kind="multi", column="tags")))
    labels = {"a": Y_TRUE[:4], "tags": ML_TRUE}
    probs = {"a": np.eye(3)[Y_PRED[:4]] * 0.9 + 0.1 / 3, "tags": ML_PROB}
    out = em.evaluate_arrays(schema, labels, probs, train_counts={"a": [3, 1, 1], "tags": [5, 2, 1]})
    assert out["heads"]["a"]["accuracy"] == pytest.approx(0.75)
    assert out["summary"]["mean_accuracy"] == pytest.approx(0.75)
    assert out["summary"]["mean_majority_baseline"] == pytest.approx(0.5)
    assert out["summary"]["mean_mA"] == pytest.approx(2 / 3)
    losses = em.sample_losses(schema, labels, probs)
    assert losses.shape == (4,)
    # sample 1 (true 0, predicted 1 with 0.93) is the single-label mistake; it has the largest loss
    assert int(np.argmax(losses)) == 1


def test_per_label_figures_at_per_label_thresholds():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.6, 0.2], [0.4, 0.3], [0.7, 0.25], [0.2, 0.1]])
    at_default = em.multi_label_metrics(y, p, ("a", "b"))
    assert at_default["threshold"] == [0.5, 0.5]
    assert at_default["per_label_mA"] == [1.0, 0.5] and at_default["labels_at_chance"] == ["b"]  # b: never positive
    assert at_default["per_label_positives"] == [2, 2] and at_default["mA_chance"] == 0.5
    chosen = em.multi_label_metrics(y, p, ("a", "b"), threshold=[0.5, 0.25])
    assert chosen["per_label_mA"] == [1.0, 1.0] and chosen["labels_at_chance"] == []
    # F1 of b at 0.25: predicted {1, 2}, true {1, 2} -> 1; at 0.5: nothing predicted -> 0
    assert chosen["per_label_f1"] == [1.0, 1.0] and at_default["per_label_f1"] == [1.0, 0.0]
    np.testing.assert_allclose(skm.f1_score(y, p >= [0.5, 0.25], average=None), chosen["per_label_f1"])


@pytest.mark.parametrize("y,s,expected", [
    ([0, 0, 1, 1], [0.1, 0.3, 0.35, 0.8], (0.35, 1.0)),  # separable: the lowest positive score
    # candidates 0.9: (1/2 + 1)/2 = 0.75; 0.4: (1 + 2/3)/2 = 0.833; 0.2: (1 + 1/3)/2 = 0.667
    ([1, 0, 1, 0, 0], [0.9, 0.6, 0.4, 0.2, 0.1], (0.4, 5 / 6)),
    ([0, 1, 0, 1], [0.1, 0.3, 0.6, 0.9], (0.3, 0.75)),  # 0.9 and 0.3 tie at 0.75: the one nearer 0.5 wins
])
def test_threshold_maximises_balanced_accuracy_by_hand(y, s, expected):
    from trainer.objective.thresholds import best_threshold

    threshold, bal = best_threshold(np.array(y), np.array(s))
    assert (threshold, bal) == pytest.approx(expected)
    assert em.label_based_mA(np.array(y)[:, None], (np.array(s) >= threshold)[:, None])[0] == pytest.approx(bal)


def test_threshold_of_a_label_without_positives_stays_the_default():
    from trainer.objective.thresholds import DEFAULT_THRESHOLD, best_threshold, choose

    assert best_threshold(np.zeros(4), np.linspace(0, 1, 4))[0] == DEFAULT_THRESHOLD
    schema = Schema("s", (Attribute("g", ("f", "m"), column="g"), Attribute("t", ("p", "q"), kind="multi", column="t")))
    chosen = choose(schema, {"t": np.array([[0, 1], [0, 0], [0, 1]])},
                    {"t": np.array([[0.9, 0.3], [0.1, 0.2], [0.5, 0.4]])})
    assert chosen == {"t": [DEFAULT_THRESHOLD, 0.3]}  # single-label heads have no threshold
