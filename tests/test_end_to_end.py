"""The main command's chain on a slice of the hvc data: build -> train (smoke) -> evaluate -> predict.

Runs `pipeline.demo` exactly as `make demo DATA=...` does (each step a subprocess, as users run them) and
checks that every output the README promises exists and holds what it should, and that the transcript ends
with the per-head table and the report's path. On a clone without ../shared the slice comes from the generated
stand-in of the real data (tests/data_fixtures.py).
"""

from __future__ import annotations

import csv
import json
import pathlib

import yaml

from pipeline import demo
from tests import data_fixtures as fx


def test_real_slice_build_train_evaluate_predict(tmp_path, capfd):
    manual = fx.write_real_slice(tmp_path / "manual", 120, num_missing=6)
    out = tmp_path / "out"
    assert demo.main(["--out", str(out), "--data", str(manual), "--preset", "smoke"]) == 0
    printed = capfd.readouterr().out

    ds = out / "data" / "person_attrs" / "hvc" / "1.0.0"
    summary = json.loads((ds / "build_summary.json").read_text())
    assert summary["csv_rows"] == 126 and summary["written"] == 120
    assert summary["skipped_by_reason"] == {"missing_image": 6}

    job = out / "run"
    for name in ("config.yaml", "checkpoints/best.keras", "history.csv", "metrics.json", "model.keras",
                 "model/saved_model.pb", "model/labels.json", "model/config.yaml"):
        assert (job / name).is_file(), name
    assert any((job / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event files"
    config = yaml.safe_load((job / "config.yaml").read_text())
    assert config["data"]["data_dir"] == str(out / "data")
    with open(job / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == config["train"]["epochs"]
    assert {"lr", "momentum", "val_mean_accuracy", "val_gender_accuracy"} <= set(history[0])

    table = printed[printed.index("=== demo done in"):].splitlines()
    assert table[1].split() == ["head", "accuracy", "baseline"]
    assert [line.split()[0] for line in table[2:10]] == ["gender", "image_quality", "age", "weight", "bag",
                                                        "footwear", "emotion", "pose"]
    assert f"Report:      {job / 'eval' / 'index.html'}" in printed

    metrics = json.loads((job / "eval" / "metrics.json").read_text())
    test_n = summary["splits"]["test"]
    assert metrics["num_examples"] == test_n
    assert set(metrics["heads"]) == {"gender", "image_quality", "age", "weight", "bag", "footwear", "emotion", "pose"}
    assert (job / "eval" / "index.html").read_text().count("<img") >= 8
    for name in ("curves_loss.png", "curves_accuracy.png", "curves_balanced.png", "schedule.png"):
        assert (job / "eval" / name).is_file(), name  # the report finds the columns under the trainer's names
    for line in table[2:10]:  # the table shows the evaluation's numbers, and marks exactly the heads not beaten
        name, acc, base = line.split()[:3]
        h = metrics["heads"][name]
        assert (float(acc), float(base)) == (round(h["accuracy"], 3), round(h["majority_baseline"], 3))
        assert ("not better than the baseline" in line) == (h["accuracy"] <= h["majority_baseline"])

    with open(job / "predictions.jsonl") as f:
        predictions = [json.loads(line) for line in f]
    assert len(predictions) == 8
    assert all(p["pose"] in ("Back", "Front-Frontish", "Side") and 0 <= p["pose_prob"] <= 1 for p in predictions)


def test_the_demo_generates_the_set_of_its_seed(tmp_path, monkeypatch):
    from tfds_person_attrs.demo.generate import write_demo_data

    run_step = demo.step

    def generate_only(title, command):  # the real generate step; every later step stops the demo
        if command.module != "tfds_person_attrs.demo.generate":
            raise demo.StepFailed(title, 3)
        run_step(title, command)

    monkeypatch.setattr(demo, "step", generate_only)
    assert demo.main(["--out", str(tmp_path / "out"), "--num_images", "4", "--seed", "7"]) == 3
    made = (tmp_path / "out" / "demo_data" / "hvc_annotations.csv").read_text()
    for seed, same in ((7, True), (0, False)):
        expected = write_demo_data(str(tmp_path / f"seed{seed}"), num_images=4, seed=seed)
        assert (made == (pathlib.Path(expected) / "hvc_annotations.csv").read_text()) == same, seed
