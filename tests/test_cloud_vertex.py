"""trainer.vertex: CustomJob / HyperparameterTuningJob specs; trainer.training.hypertune: the tuning-metric file format.

    python -m pytest -q tests/test_cloud_vertex.py
"""

import importlib.util
import json

import pytest

from trainer import vertex
from trainer.jobdir.paths import job_paths
from trainer.training import hypertune
from trainer.training.callbacks import MONITOR

IMAGE = "us-central1-docker.pkg.dev/p/person-attrs/person-attrs:v1"
BASE = ["--image", IMAGE, "--data_dir", "gs://b/data", "--job_dir", "gs://b/jobs/r1", "--display_name", "t"]
# The REST resource's field names (google.cloud.aiplatform.v1.CustomJob), for a check without the SDK.
POOL_KEYS = {"machineSpec", "replicaCount", "containerSpec", "diskSpec"}
MACHINE_KEYS = {"machineType", "acceleratorType", "acceleratorCount"}
CONTAINER_KEYS = {"imageUri", "command", "args", "env"}


def dry_run(capsys, *flags, trainer=("--config", "hvc", "--train.epochs=3")):
    assert vertex.main([*BASE, *flags, "--dry_run", "--", *trainer]) == 0
    return json.loads(capsys.readouterr().out)


def check_against_api(spec, kind="custom"):
    """Field names and enums as the API defines them: by the SDK's parser when it is installed."""
    if importlib.util.find_spec("google.cloud.aiplatform_v1") is not None:
        vertex.to_proto(spec, kind)  # raises on any unknown field or enum value


@pytest.mark.parametrize("gpus, replicas, machine", [(1, 1, "n1-standard-8"), (4, 1, "n1-standard-32"),
                                                     (4, 2, "n1-standard-32")])
def test_custom_job_spec(capsys, gpus, replicas, machine):
    spec = dry_run(capsys, "--accelerator_type", "NVIDIA_TESLA_T4", "--accelerator_count", str(gpus),
                   "--replica_count", str(replicas))
    check_against_api(spec)
    assert set(spec) == {"displayName", "jobSpec"} and spec["displayName"] == "t"
    job = spec["jobSpec"]
    assert job["baseOutputDirectory"] == {"outputUriPrefix": "gs://b/jobs/r1"}
    pools = job["workerPoolSpecs"]
    # Chief pool of one, plus one worker pool of the remaining machines; the same container everywhere.
    assert [p["replicaCount"] for p in pools] == ["1"] + ([str(replicas - 1)] if replicas > 1 else [])
    for pool in pools:
        assert set(pool) == POOL_KEYS and set(pool["machineSpec"]) == MACHINE_KEYS
        assert pool["machineSpec"] == {"machineType": machine, "acceleratorType": "NVIDIA_TESLA_T4",
                                       "acceleratorCount": gpus}
        container = pool["containerSpec"]
        assert set(container) <= CONTAINER_KEYS and container["imageUri"] == IMAGE
        assert container["command"] == ["python", "-m", "trainer.task"]
        assert container["args"] == ["--data_dir", "gs://b/data", "--job_dir", "gs://b/jobs/r1",
                                     "--config", "hvc", "--train.epochs=3"]
    assert job.get("scheduling", {}).get("restartJobOnWorkerRestart", False) == (replicas > 1)


def test_machine_defaults_follow_the_gpu():
    assert vertex.default_machine_type("NVIDIA_TESLA_A100", 8) == "a2-highgpu-8g"
    assert vertex.default_machine_type("NVIDIA_L4", 4) == "g2-standard-48"
    assert vertex.default_machine_type(None, 0) == "n1-standard-8"


def test_bad_flags_fail_with_a_message(capsys):
    with pytest.raises(SystemExit):
        vertex.main([*BASE, "--accelerator_count", "2", "--dry_run"])
    assert "needs --accelerator_type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vertex.main([*BASE])  # submitting needs a project
    assert "--project is required" in capsys.readouterr().err
    with pytest.raises(ValueError, match="kind must be"):
        vertex.parse_param("train.max_lr=float:0:1")


def test_tuning_job_spec(capsys):
    spec = dry_run(capsys, "--accelerator_type", "NVIDIA_L4", "--accelerator_count", "1", "--tuning",
                   "--param", "train.max_lr=double:0.05:1:log", "--param", "model.width=discrete:4,8",
                   "--param", "train.optimizer=categorical:sgd,adam", "--param", "train.epochs=int:5:30",
                   "--max_trials", "12", "--parallel_trials", "3")
    check_against_api(spec, "tuning")
    study = spec["studySpec"]
    assert study["metrics"] == [{"metricId": MONITOR, "goal": "MAXIMIZE"}]  # the tag the trainer reports
    assert study["parameters"] == [
        {"parameterId": "train.max_lr", "doubleValueSpec": {"minValue": 0.05, "maxValue": 1.0},
         "scaleType": "UNIT_LOG_SCALE"},
        {"parameterId": "model.width", "discreteValueSpec": {"values": [4.0, 8.0]}},
        {"parameterId": "train.optimizer", "categoricalValueSpec": {"values": ["sgd", "adam"]}},
        {"parameterId": "train.epochs", "integerValueSpec": {"minValue": "5", "maxValue": "30"},
         "scaleType": "UNIT_LINEAR_SCALE"}]
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (12, 3, 3)
    assert spec["trialJobSpec"]["workerPoolSpecs"][0]["machineSpec"]["machineType"] == "g2-standard-8"


def test_hypertune_metric_file(tmp_path, monkeypatch):
    path = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(path))
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    for step in range(105):
        hypertune.report_hyperparameter_tuning_metric("val_mean_accuracy", 0.5 + step / 1000, step=step)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # The cloudml-hypertune package's format: strings for everything but the timestamp, last 100 kept.
    assert len(lines) == 100
    assert set(lines[-1]) == {"timestamp", "trial", "val_mean_accuracy", "global_step"}
    assert (lines[-1]["trial"], lines[-1]["val_mean_accuracy"], lines[-1]["global_step"]) == ("7", "0.604", "104")
    assert lines[0]["global_step"] == "5" and isinstance(lines[0]["timestamp"], float)
    assert job_paths("gs://b/jobs/hp/").config_yaml == "gs://b/jobs/hp/7/config.yaml"  # the service's trial dir
    monkeypatch.delenv("CLOUD_ML_TRIAL_ID")
    assert job_paths("gs://b/jobs/r1").job_dir == "gs://b/jobs/r1"
