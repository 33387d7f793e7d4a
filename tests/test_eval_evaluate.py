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
    from trainer.config_loader import load_config
    from trainer.input.data import dataset_info
    from trainer.model.network import build_model

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
    from trainer.config_loader import config_from_yaml
    from trainer.input.data import make_eval_dataset

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
    from trainer import evaluate
    from trainer.config_loader import config_from_yaml
    from trainer.evaluation import eval_metrics, eval_model
    from trainer.input.data import dataset_info

    job, _, model = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    schema = dataset_info(config.data).schema
    pred = evaluate.predict_split(eval_model.from_keras(model, config), schema, "test", batch=3, keep_worst=5)
    losses = eval_metrics.sample_losses(schema, pred["labels"], pred["probs"])
    expected = [pred["ids"][i] for i in np.argsort(-losses, kind="stable")[:5]]
    assert list(pred["worst"].ids) == expected
    assert pred["worst"].losses == pytest.approx(np.sort(losses)[::-1][:5], rel=1e-6)  # carried to the report
    assert pred["worst"].images.shape[0] == 5 and pred["worst"].images.dtype == np.uint8
    n_test = trainer_fixtures.num_examples(trainer_fixtures.MULTI_SCHEMA.name, "test")
    assert len(pred["ids"]) == len(set(pred["ids"])) == n_test


def test_flip_tta_averages_each_image_with_its_mirror(job_dir):
    """--flip_tta: every probability is the mean of the model's outputs on the image and on its mirror."""
    import tensorflow as tf

    from trainer import evaluate
    from trainer.config_loader import config_from_yaml
    from trainer.evaluation import eval_model
    from trainer.input.data import dataset_info, make_eval_dataset

    job, data_dir, model = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    schema = dataset_info(config.data).schema
    plain = evaluate.predict_split(eval_model.from_keras(model, config), schema, "test")["probs"]["gender"]
    tta = evaluate.predict_split(eval_model.from_keras(model, config, flip_tta=True), schema,
                                 "test")["probs"]["gender"]
    expected = np.concatenate([
        ((model(x, training=False)["gender"] + model(tf.reverse(x, [2]), training=False)["gender"]) / 2).numpy()
        for x, _ in make_eval_dataset(config, split="test")])
    np.testing.assert_allclose(tta, expected, atol=1e-5)
    assert not np.allclose(tta, plain, atol=1e-4)  # the mirror changed something: the test can tell
    metrics = evaluate.evaluate(job, data_dir, "test", max_images=3, flip_tta=True)
    saved = json.load(open(os.path.join(job, "eval_test_flip", "metrics.json")))
    assert saved["flip_tta"] is True and metrics["flip_tta"] is True


def _heads_numbers(metrics: dict) -> dict:
    """Every per-head number of a metrics dict, by 'head/metric' (confusion matrices flattened)."""
    out = {}
    for head, values in metrics["heads"].items():
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{head}/{key}"] = value
            elif key == "confusion_matrix":
                out[f"{head}/{key}"] = np.asarray(value).ravel().tolist()
    return out


def test_the_export_and_the_job_dir_give_the_same_metrics(job_dir, tmp_path):
    """`--model JOB_DIR/model` (the SavedModel: JPEG bytes in, its own decode) scores like the Keras model."""
    from trainer import evaluate
    from trainer.config_loader import config_from_yaml
    from trainer.input.data import dataset_info
    from trainer.serving.saved_model import export_model

    job, data_dir, model = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    export_model(model, config, dataset_info(config.data).schema, os.path.join(job, "model"))
    from_keras = evaluate.evaluate(job, data_dir, "test", out_dir=str(tmp_path / "keras"))
    from_export = evaluate.evaluate(os.path.join(job, "model"), data_dir, "test", out_dir=str(tmp_path / "export"))
    assert from_export["num_examples"] == from_keras["num_examples"] > 0
    keras_numbers, export_numbers = _heads_numbers(from_keras), _heads_numbers(from_export)
    assert set(keras_numbers) == set(export_numbers) and len(keras_numbers) > 10
    for key, value in keras_numbers.items():
        np.testing.assert_allclose(export_numbers[key], value, atol=1e-5, err_msg=key)
    assert from_export["summary"]["mean_accuracy"] == pytest.approx(from_keras["summary"]["mean_accuracy"])
    assert os.path.exists(tmp_path / "export" / "index.html")


def _job_with(tmp_path, config, model, labels: dict | None = None) -> str:
    """A job dir holding `model` as checkpoints/best.keras, and optionally the export's labels.json."""
    job = tmp_path / "other_job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "config.yaml").write_text(config.to_yaml())
    model.save(job / "checkpoints" / "best.keras")
    if labels is not None:
        (job / "model").mkdir()
        (job / "model" / "labels.json").write_text(json.dumps(labels))
    return str(job)


def test_a_model_with_other_heads_is_refused_naming_them(job_dir, tmp_path):
    from tfds_person_attrs import cli
    from tfds_person_attrs.schema import Attribute, Schema
    from trainer import evaluate
    from trainer.config_loader import config_from_yaml
    from trainer.model.network import build_model

    job, data_dir, _ = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    other = Schema(trainer_fixtures.MULTI_SCHEMA.name, (Attribute("gender", ("female", "male"), column="g"),
                                                        Attribute("hat", ("no", "yes"), column="h")))
    other_job = _job_with(tmp_path, config, build_model(other, config))
    with pytest.raises(cli.UserError, match=r"no head for \['clothes'\].*no attribute \['hat'\]"):
        evaluate.evaluate(other_job, data_dir, "test")


def test_a_model_with_other_class_names_is_refused_naming_them(job_dir, tmp_path):
    from tfds_person_attrs import cli
    from trainer import evaluate
    from trainer.config_loader import config_from_yaml
    from trainer.serving.saved_model import labels_dict

    job, data_dir, model = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    labels = labels_dict(trainer_fixtures.MULTI_SCHEMA)
    labels["attributes"]["gender"]["classes"] = ["man", "woman"]  # same head, same count, other names
    other_job = _job_with(tmp_path, config, model, labels)
    with pytest.raises(cli.UserError, match=r"gender classes differ: model \['man', 'woman'\], dataset "
                                            r"\['female', 'male'\]"):
        evaluate.evaluate(other_job, data_dir, "test")


def test_an_unknown_split_names_the_splits_there(job_dir):
    from tfds_person_attrs import cli
    from trainer import evaluate

    job, data_dir, _ = job_dir
    with pytest.raises(cli.UserError, match=r"--split 'tset'.*\['test', 'train', 'validation'\]"):
        evaluate.evaluate(job, data_dir, "tset")


def test_thresholds_chosen_on_validation_carry_into_evaluation_export_and_predict(job_dir, tmp_path, capsys):
    import tensorflow as tf

    from tfds_person_attrs import cli
    from trainer import evaluate, export, predict
    from trainer.config_loader import config_from_yaml
    from trainer.evaluation import eval_model
    from trainer.input.data import dataset_info
    from trainer.objective import thresholds

    job, data_dir, model = job_dir
    config = config_from_yaml(os.path.join(job, "config.yaml"))
    own = _job_with(tmp_path, config, model)  # a job dir of its own: the shared one stays at the default
    with pytest.raises(cli.UserError, match="choose them on the validation split"):
        evaluate.evaluate(own, data_dir, "test", choose_thresholds=True)
    on_val = evaluate.evaluate(own, data_dir, "validation", choose_thresholds=True)
    saved = json.load(open(os.path.join(own, thresholds.FILE_NAME)))
    schema = dataset_info(config.data).schema
    pred = evaluate.predict_split(eval_model.from_keras(model, config), schema, "validation")
    assert saved["thresholds"] == thresholds.choose(schema, pred["labels"], pred["probs"])
    assert saved["split"] == "validation"
    assert on_val["heads"]["clothes"]["threshold"] == saved["thresholds"]["clothes"]
    # each chosen threshold is at least as good on validation as the default, by the label's balanced accuracy
    at_default = evaluate.evaluate(job, data_dir, "validation", out_dir=str(tmp_path / "default"))
    assert at_default["heads"]["clothes"]["threshold"] == [0.5] * 3
    for chosen, default in zip(on_val["heads"]["clothes"]["per_label_mA"],
                               at_default["heads"]["clothes"]["per_label_mA"]):
        assert chosen >= default - 1e-12
    capsys.readouterr()
    on_test = evaluate.evaluate(own, data_dir, "test")  # later evaluations of the job use them, and say so
    assert on_test["heads"]["clothes"]["threshold"] == saved["thresholds"]["clothes"]
    said = f"multi-label thresholds: {os.path.join(own, thresholds.FILE_NAME)}, chosen on the validation split"
    assert on_test["thresholds_from"] == said.split(": ", 1)[1]
    out = capsys.readouterr().out
    assert "(chance 0.500)" in out and said in out.splitlines()
    assert said in open(os.path.join(own, "eval_test", "index.html")).read()  # the report's header
    assert "multi-label thresholds: the default 0.5 for every label" in open(
        os.path.join(tmp_path / "default", "index.html")).read()

    assert export.main(["--job_dir", own]) == 0  # the export serves them ...
    served = json.load(open(os.path.join(own, "model", "labels.json")))
    assert served["thresholds"] == saved["thresholds"]
    jpeg = tf.io.encode_jpeg(tf.cast(tf.random.uniform((64, 48, 3), 0, 255, seed=1), tf.uint8)).numpy()
    out = tf.saved_model.load(os.path.join(own, "model")).signatures["serving_default"](image_bytes=tf.constant([jpeg]))
    active = out["clothes_probs"].numpy()[0] >= np.array(saved["thresholds"]["clothes"])
    np.testing.assert_array_equal(out["clothes_active"].numpy()[0], active.astype(np.int32))
    # ... and so does predict, which reads the export's decisions
    row = next(predict.Predictor(os.path.join(own, "model")).rows(["x.jpg"], {
        k: v.numpy() for k, v in out.items()}))
    assert row["clothes"] == "|".join(c for c, on in zip(schema["clothes"].classes, active) if on)
    # and evaluating the export scores at its own thresholds
    from_export = evaluate.evaluate(os.path.join(own, "model"), data_dir, "test", out_dir=str(tmp_path / "e"))
    assert from_export["heads"]["clothes"]["threshold"] == saved["thresholds"]["clothes"]


_THREE = [0.5, 0.5, 0.5]
BAD_THRESHOLDS = [
    ('{"thresholds": {"clothes": [0.5,', "not JSON"),
    ([0.5, 0.5, 0.5], 'expected an object with a "thresholds" object, found a JSON list'),
    ({"clothes": _THREE}, "expected an object with a \"thresholds\" object, found keys ['clothes']"),
    ({"thresholds": {"clothes": ["high", 0.5, 0.5]}}, 'clothes[0] (bag) is "high"; a threshold is a number'),
    ({"thresholds": {"clothes": [0.5, 0.5]}}, "clothes: 2 values for its 3 labels"),
    ({"thresholds": {"clothes": 0.5}}, "clothes: a JSON float for its 3 labels"),
    ({"thresholds": {"clothes": [0.5, 5.0, 0.5]}}, "clothes[1] (heels) is 5.0"),
    ({"thresholds": {"clothes": [0.5, 0.5, -1.0]}}, "clothes[2] (back) is -1.0"),
    ({"thresholds": {"clothes": [float("nan"), 0.5, 0.5]}}, "clothes[0] (bag) is NaN"),
    ({"thresholds": {"clothes": [True, 0.5, 0.5]}}, "clothes[0] (bag) is true"),
    ({"thresholds": {}}, "no thresholds for ['clothes'] (the multi-label heads are ['clothes'])"),
    ({"thresholds": {"clothes": _THREE, "hat": [0.5]}}, "no multi-label head ['hat']"),
    ({"thresholds": {"clothes": _THREE, "gender": [0.5, 0.5]}}, "no multi-label head ['gender']"),
    ({"schema": "hvc", "thresholds": {"clothes": _THREE}}, "chosen for schema 'hvc', this model's dataset is "
                                                             "'multi_demo'"),
]


@pytest.mark.parametrize("content, problem", BAD_THRESHOLDS, ids=[p[:30] for _, p in BAD_THRESHOLDS])
def test_a_thresholds_file_that_does_not_fit_the_schema_is_refused_naming_the_problem(tmp_path, content, problem):
    from trainer.objective import thresholds

    path = tmp_path / thresholds.FILE_NAME
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(thresholds.ThresholdsError) as refused:
        thresholds.read(str(tmp_path), trainer_fixtures.MULTI_SCHEMA)
    assert str(refused.value).startswith(f"{path}: {problem}"), str(refused.value)
    assert "--choose_thresholds" in str(refused.value)


def test_a_good_thresholds_file_reads_back_with_its_split(tmp_path):
    from trainer.objective import thresholds

    schema = trainer_fixtures.MULTI_SCHEMA
    (tmp_path / thresholds.FILE_NAME).write_text(thresholds.to_json({"clothes": [0, 0.25, 1]}, schema, "validation"))
    chosen = thresholds.read(str(tmp_path), schema)
    assert chosen.thresholds == {"clothes": [0.0, 0.25, 1.0]} and chosen.split == "validation"
    assert thresholds.read(str(tmp_path / "none"), schema) is None


def test_evaluate_and_export_refuse_an_out_of_range_threshold_in_one_line(job_dir, tmp_path, capsys):
    """Nothing is scored, and nothing is exported, at a threshold no probability can reach."""
    from tfds_person_attrs import cli
    from trainer import evaluate, export
    from trainer.config_loader import config_from_yaml
    from trainer.objective import thresholds

    job, data_dir, model = job_dir
    own = _job_with(tmp_path, config_from_yaml(os.path.join(job, "config.yaml")), model)
    path = os.path.join(own, thresholds.FILE_NAME)
    with open(path, "w") as f:
        json.dump({"schema": "multi_demo", "split": "validation", "thresholds": {"clothes": [0.5, 5.0, 0.5]}}, f)
    for main, argv in ((evaluate.main, ["--model", own, "--data_dir", data_dir, "--split", "test"]),
                       (export.main, ["--job_dir", own, "--data_dir", data_dir])):
        assert cli.run(main, argv) == 2
        out, err = capsys.readouterr()
        assert not out
        # the model file it checked the thresholds against, then the one error line
        assert [line for line in err.splitlines() if not line.startswith(f"loaded {own}/")] == [
            f"error: {path}: clothes[1] (heels) is 5.0; a threshold is a number from 0 to 1; choose them again with "
            "`python -m trainer.evaluate --model JOB_DIR --split validation --choose_thresholds`, or delete the file "
            "to use 0.5 for every label"]
    assert not os.path.exists(os.path.join(own, "model")) and not os.path.exists(os.path.join(own, "eval_test"))
    # choosing them again is how to fix it: the broken file does not stand in the way
    assert cli.run(evaluate.main, ["--model", own, "--data_dir", data_dir, "--split", "validation",
                                   "--choose_thresholds", "--max_images", "2", "--no-tensorboard"]) == 0
    assert thresholds.read(own, trainer_fixtures.MULTI_SCHEMA).split == "validation"


def test_results_go_to_stdout_diagnostics_to_stderr_for_export_evaluate_and_predict(job_dir, tmp_path, capfd):
    """What a script reads (export's folder, evaluate's table and files, predict's rows) is stdout; notes, the
    summary and errors are stderr, with no library chatter ("INFO:tensorflow:Assets written to ...")."""
    from tests.test_cli import run_command
    from tests.test_export import letterboxed_jpeg
    from tfds_person_attrs import cli
    from trainer import evaluate, predict

    job, data_dir, _ = job_dir
    model = tmp_path / "m"
    # a process of its own: TensorFlow's logger prints its INFO lines through a handler of its own only there
    r = run_command("trainer.export", "--job_dir", job, "--export_dir", str(model), "--data_dir", data_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == [f"exported to {model} (signature 'serving_default', input 'image_bytes')"]
    # the model file it loaded, and why, is a diagnostic: on stderr
    assert [line.split(" ")[0] for line in r.stderr.splitlines()] == ["loaded"]

    assert cli.run(evaluate.main, ["--model", str(model), "--data_dir", data_dir, "--split", "test", "--out",
                                   str(tmp_path / "e"), "--max_images", "2", "--no-tensorboard"]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines()[0].startswith("head ") and "multi-label thresholds: the default 0.5" in out
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'e' / 'metrics.json'} and {tmp_path / 'e' / 'index.html'}"
    assert err == f"loaded {model} (an exported SavedModel)\n"

    (tmp_path / "x.jpg").write_bytes(letterboxed_jpeg(1))
    (tmp_path / "y.jpg").write_bytes(b"")
    assert cli.run(predict.main, ["--model", str(model), str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")]) == 1
    out, err = capfd.readouterr()
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(tmp_path / "x.jpg")]
    assert err.splitlines() == [
        f"loaded {model} (an exported SavedModel)",
        f"ERROR {tmp_path / 'y.jpg'}: unreadable image (the file is empty (0 bytes)) -- skipped",
        "predicted 1 image(s); 1 problem(s)"]
