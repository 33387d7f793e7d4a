"""One job-dir layout with and without Vertex AI's AIP_* variables: training writes where the service says,
and `evaluate` / `export` run later, without those variables, find the best checkpoint and say which file.

    python -m pytest -q tests/test_cloud_jobdir.py
"""

import os

import pytest
import tensorflow as tf

from tests import trainer_fixtures as fx
from trainer import evaluate, export
from trainer.jobdir import paths
from trainer.jobdir.paths import job_paths
from trainer.training.train import run


@pytest.mark.parametrize("base", ["job_dir", "elsewhere"])
def test_a_vertex_job_is_evaluated_and_exported_from_its_best_checkpoint(tmp_path, monkeypatch, capsys, base):
    """`base`: the job's baseOutputDirectory is --job_dir (what trainer.vertex submits), or another folder (a job
    whose base output directory is not its job dir): the AIP_* variables are set as the service sets them."""
    job = str(tmp_path / "job")
    service = paths.service_dirs(job if base == "job_dir" else str(tmp_path / "service"))
    for name, value in service.items():
        monkeypatch.setenv(name, value)
    run(fx.smoke_config(fx.fixture_data_dir(), job, **{"train.epochs": 1, "train.export": True}))
    written = job_paths(job)
    assert written.best_keras == service["AIP_CHECKPOINT_DIR"] + paths.BEST_KERAS  # no checkpoints/checkpoints/
    assert tf.io.gfile.exists(written.best_keras) and tf.io.gfile.exists(written.model_keras)

    for name in service:  # later, on another machine: no AIP_* variables
        monkeypatch.delenv(name)
    capsys.readouterr()
    evaluate.evaluate(job, None, "test", out_dir=str(tmp_path / "eval"))
    loaded = [line for line in capsys.readouterr().err.splitlines() if line.startswith("loaded ")]
    assert loaded == [f"loaded {written.best_keras} (the best epoch's checkpoint, as {job}/layout.json records)"]

    assert export.main(["--job_dir", job, "--flip_tta"]) == 0
    out, err = capsys.readouterr()
    assert f"loaded {written.best_keras} (the best epoch's checkpoint" in err
    assert f"exported to {written.model_dir} " in out  # the run's own export folder, replaced
    assert tf.io.gfile.exists(os.path.join(written.model_dir, "saved_model.pb"))


def test_without_a_best_checkpoint_the_last_epochs_model_is_named_as_such(tmp_path):
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "model.keras").write_bytes(b"")
    choice = paths.find_keras_model(str(job))
    assert (choice.path, choice.job_dir) == (str(job / "model.keras"), str(job))
    assert str(choice) == (f"loaded {job}/model.keras (the last epoch's model: no {job}/checkpoints/best.keras, "
                           "the default job-dir layout (no layout.json))")
    assert paths.find_keras_model(str(tmp_path / "empty")) is None
