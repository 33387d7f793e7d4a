"""`trainer.evaluate` on a tiny built dataset and an untrained smoke model saved like a job dir.

    python -m pytest -q tests/test_eval_evaluate.py
"""

import csv
import json
import os

import numpy as np
import pytest

from tests import trainer_fixtures


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    """A job dir as the trainer leaves it: config.yaml, checkpoints/best.keras, history.csv."""
    from trainer.config import load_config
    from trainer.data import dataset_info
    from trainer.model import build_model

    data_dir = trainer_fixtures.fixture_data_dir(trainer_fixtures.MULTI_SCHEMA.name)
    job = tmp_path_factory.mktemp("job")
    config = load_config(["--config", "smoke", "--data_dir", data_dir, "--job_dir", str(job),
                          "--data.dataset", trainer_fixtures.MULTI_SCHEMA.name])
    (job / "config.yaml").write_text(config.to_yaml())
    model = build_model(dataset_info(config.data).schema, config)
    (job / "checkpoints").mkdir()
    model.save(job / "checkpoints" / "best.keras")
    with open(job / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss", "gender_accuracy", "val_gender_accuracy", "lr", "momentum"])
        w.writerows([[0, 2.0, 0.5, 0.55, 0.01, 0.95], [1, 1.5, 0.6, 0.58, 0.05, 0.85]])
    return str(job), data_dir, model


def test_evaluate_writes_metrics_and_report(job_dir, capsys):
    from trainer import evaluate

    job, data_dir, model = job_dir
    metrics = evaluate.evaluate(job, data_dir, "test", max_images=5, tensorboard=True)
    out = os.path.join(job, "eval_test")
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert saved["num_examples"] == trainer_fixtures.num_examples(trainer_fixtures.MULTI_SCHEMA.name, "test")
    g = saved["heads"]["gender"]
    assert set(g) >= {"accuracy", "balanced_accuracy", "macro_f1", "majority_baseline", "confusion_matrix"}
    assert np.sum(g["confusion_matrix"]) == trainer_fixtures.num_examples(trainer_fixtures.MULTI_SCHEMA.name, "test")
    assert saved["heads"]["clothes"]["kind"] == "multi" and "mAP" in saved["heads"]["clothes"]
    assert saved["summary"]["mean_accuracy"] == pytest.approx(metrics["summary"]["mean_accuracy"])
    assert saved["flip_tta"] is False
    for name in ("index.html", "confusion_gender.png", "curves_loss.png", "schedule.png", "samples/000.png"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(job, "logs", "eval_test"))  # TensorBoard events
    table = capsys.readouterr().out
    assert "baseline" in table and "gender" in table and "mAP" in table


def test_evaluate_uses_the_models_predictions(job_dir):
    """The accuracy in metrics.json is the model's accuracy on the split, recomputed independently."""
    import tensorflow as tf

    from trainer import evaluate
    from trainer.config import config_from_yaml
    from trainer.data import make_eval_dataset

    job, _, model = job_dir
    saved = json.load(open(os.path.join(job, "eval_test", "metrics.json")))
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    right = total = 0
    nll = 0.0
    for x, y in make_eval_dataset(config, split="test"):
        p = model(x, training=False)["gender"]
        right += int(tf.reduce_sum(tf.cast(tf.argmax(p, -1, output_type=tf.int32) == y["gender"], tf.int32)))
        nll -= float(tf.reduce_sum(tf.math.log(tf.gather(p, y["gender"], batch_dims=1))))
        total += int(tf.shape(x)[0])
    assert saved["heads"]["gender"]["accuracy"] == pytest.approx(right / total)
    assert saved["heads"]["gender"]["log_loss"] == pytest.approx(nll / total, rel=1e-4)
    assert saved["heads"]["gender"]["prior_log_loss"] > 0
    assert "bal.acc" in evaluate.format_table(saved) and "logloss" in evaluate.format_table(saved)


def test_worst_examples_kept_across_batches(job_dir):
    """Merging batch by batch keeps exactly the split's highest-loss examples."""
    from trainer import eval_metrics, evaluate
    from trainer.config import config_from_yaml
    from trainer.data import dataset_info

    job, _, model = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    schema = dataset_info(config.data).schema
    pred = evaluate.predict_split(model, config, schema, "test", batch=3, keep_worst=5)
    losses = eval_metrics.sample_losses(schema, pred["labels"], pred["probs"])
    expected = [pred["ids"][i] for i in np.argsort(-losses, kind="stable")[:5]]
    assert list(pred["worst"].ids) == expected
    assert pred["worst"].images.shape[0] == 5 and pred["worst"].images.dtype == np.uint8
    assert len(pred["ids"]) == len(set(pred["ids"])) == trainer_fixtures.num_examples(trainer_fixtures.MULTI_SCHEMA.name, "test")


def test_flip_tta_averages_each_image_with_its_mirror(job_dir):
    """--flip_tta: every probability is the mean of the model's outputs on the image and on its mirror."""
    import tensorflow as tf

    from trainer import evaluate
    from trainer.config import config_from_yaml
    from trainer.data import dataset_info, make_eval_dataset

    job, data_dir, model = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    schema = dataset_info(config.data).schema
    plain = evaluate.predict_split(model, config, schema, "test")["probs"]["gender"]
    tta = evaluate.predict_split(model, config, schema, "test", flip_tta=True)["probs"]["gender"]
    expected = np.concatenate([
        ((model(x, training=False)["gender"] + model(tf.reverse(x, [2]), training=False)["gender"]) / 2).numpy()
        for x, _ in make_eval_dataset(config, split="test")])
    np.testing.assert_allclose(tta, expected, atol=1e-5)
    assert not np.allclose(tta, plain, atol=1e-4)  # the mirror changed something: the test can tell
    metrics = evaluate.evaluate(job, data_dir, "test", max_images=3, flip_tta=True)
    saved = json.load(open(os.path.join(job, "eval_test_flip", "metrics.json")))
    assert saved["flip_tta"] is True and metrics["flip_tta"] is True
