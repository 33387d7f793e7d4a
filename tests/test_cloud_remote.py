"""Data dir and job dir on a remote scheme, end to end in one process: build, train, evaluate, export, predict.

    python -m pytest -q tests/test_cloud_remote.py

`ram://` stands in for gs:// (TensorFlow's GCS filesystem cannot be pointed at an emulator, docs/cloud.md); it
takes the same branches as gs:// in our code ("://" in the path, `tf.io.gfile`), in Keras (remote saving) and,
once `tests.ram_filesystem.register()` adds it where gs:// is, in TFDS and Beam. ram:// is this process's
memory, so every step runs in-process (the two-process run on a shared scheme is tests/test_cloud_local.py).
"""

import glob
import json
import os

import tensorflow as tf

from tests import ram_filesystem
from tests import trainer_fixtures as fx
from trainer import evaluate, export, predict
from trainer.training.train import run


def test_build_train_evaluate_export_predict_on_ram(tmp_path, capsys):
    ram_filesystem.register()
    from pipeline import preprocess
    from tfds_person_attrs.demo.generate import write_demo_data

    root = f"ram://{tmp_path.name}"
    data, job = f"{root}/data", f"{root}/job"
    manual = write_demo_data(str(tmp_path / "manual"), num_images=40, num_missing=0, seed=1)
    preprocess.run(["--manual_dir", manual, "--data_dir", data])
    assert tf.io.gfile.exists(f"{data}/person_attrs/hvc/1.0.0/dataset_info.json")

    run(fx.smoke_config(data, job, **{"train.epochs": 1, "train.backup_every_steps": 1, "train.export": True}))
    written = set(tf.io.gfile.listdir(job))
    assert {"config.yaml", "layout.json", "history.csv", "metrics.json", "model.keras", "checkpoints", "logs",
            "model"} <= written
    assert ".lock" not in written  # the lock released once the run finished (the backup stays, marked finished)
    assert tf.io.gfile.exists(f"{job}/checkpoints/best.keras") and tf.io.gfile.glob(f"{job}/logs/*/events.*")

    capsys.readouterr()
    metrics = evaluate.evaluate(job, None, "test")
    assert f"loaded {job}/checkpoints/best.keras (the best epoch's checkpoint" in capsys.readouterr().err
    assert metrics["num_examples"] > 0 and tf.io.gfile.exists(f"{job}/eval_test/metrics.json")

    assert export.main(["--job_dir", job, "--export_dir", f"{root}/export"]) == 0
    assert tf.io.gfile.exists(f"{root}/export/saved_model.pb")

    tf.io.gfile.makedirs(f"{root}/in")
    for i, path in enumerate(sorted(glob.glob(os.path.join(manual, "**", "*.jpg"), recursive=True))[:3]):
        tf.io.gfile.copy(path, f"{root}/in/{i}.jpg", overwrite=True)
    assert predict.main(["--model", f"{root}/export", f"{root}/in/", "--out", f"{root}/pred.jsonl"]) == 0
    with tf.io.gfile.GFile(f"{root}/pred.jsonl") as f:
        rows = [json.loads(line) for line in f.read().splitlines()]
    assert [r["path"] for r in rows] == [f"{root}/in/{i}.jpg" for i in range(3)] and "gender" in rows[0]
