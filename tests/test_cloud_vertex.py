"""trainer.vertex: CustomJob / HyperparameterTuningJob specs and the environment `--local` gives their replicas;
trainer.jobdir.paths under Vertex AI's AIP_* variables; trainer.training.hypertune: the tuning-metric file format.

    python -m pytest -q tests/test_cloud_vertex.py
"""

import importlib.util
import json

import pytest

from trainer import vertex, vertex_local
from trainer.jobdir import paths
from trainer.jobdir.paths import job_paths
from trainer.objective.log_keys import MONITOR
from trainer.training import cluster, hypertune

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


# ---- the job-dir layout under Vertex AI's AIP_* variables ----

def test_service_dirs_are_derived_as_the_api_reference_gives_them():
    # CustomJobSpec.baseOutputDirectory: <base>/model/, <base>/checkpoints/, <base>/logs/; a trial's under <base>/<id>/
    assert paths.service_dirs("gs://b/j") == {"AIP_MODEL_DIR": "gs://b/j/model/",
                                              "AIP_CHECKPOINT_DIR": "gs://b/j/checkpoints/",
                                              "AIP_TENSORBOARD_LOG_DIR": "gs://b/j/logs/"}
    assert paths.service_dirs("gs://b/j/", "3")["AIP_CHECKPOINT_DIR"] == "gs://b/j/3/checkpoints/"


def test_service_dirs_of_the_job_dir_are_its_own_folders():
    """trainer.vertex makes --job_dir the base output directory: the best checkpoint lands where it does locally
    (JOB/checkpoints/best.keras, not JOB/checkpoints/checkpoints/best.keras)."""
    on_vertex, local = job_paths("gs://b/j", paths.service_dirs("gs://b/j")), job_paths("gs://b/j", {})
    assert on_vertex == local and on_vertex.best_keras == "gs://b/j/checkpoints/best.keras"
    # A tuning trial: our trial dir is the folder the service makes the trial's base output directory.
    env = {**paths.service_dirs("gs://b/j", "3"), "CLOUD_ML_TRIAL_ID": "3"}
    assert job_paths("gs://b/j", env) == job_paths("gs://b/j/3", {})


def test_service_dirs_elsewhere_win_but_not_for_a_job_dir_nested_in_the_base():
    env = paths.service_dirs("gs://b/pipeline-root/task1")
    elsewhere = job_paths("gs://b/artifacts/model", env)
    assert (elsewhere.best_keras, elsewhere.model_dir, elsewhere.logs_dir) == (
        "gs://b/pipeline-root/task1/checkpoints/best.keras", "gs://b/pipeline-root/task1/model",
        "gs://b/pipeline-root/task1/logs")
    assert elsewhere.backup_dir == "gs://b/artifacts/model/backup"  # beside the job dir's lock
    record = json.loads(paths.layout_record(elsewhere))
    assert record["checkpoints_dir"] == "gs://b/pipeline-root/task1/checkpoints"
    assert json.loads(paths.layout_record(job_paths("gs://b/j", {}))) == {
        "model_dir": "model", "checkpoints_dir": "checkpoints", "logs_dir": "logs"}  # relative: the dir can move
    # The label audit's folds inside a Vertex job's base would otherwise all share the service's folders.
    fold = job_paths("gs://b/j/folds/0", paths.service_dirs("gs://b/j"))
    assert fold == job_paths("gs://b/j/folds/0", {})


# ---- trainer.vertex --local: the replicas and their environment ----

def test_local_replicas_get_the_environment_the_service_gives(capsys):
    spec = dry_run(capsys, "--replica_count", "3", "--env", "A=1")
    tasks = vertex_local.replica_tasks(spec["jobSpec"], ports=[5000, 5001, 5002])
    # The same commands the spec submits, in the order Vertex AI numbers the replicas.
    assert [(t["name"], t["argv"]) for t in tasks] == [(t["name"], t["argv"])
                                                       for t in vertex.cluster_tasks(spec["jobSpec"])]
    specs = [json.loads(t["env"]["CLUSTER_SPEC"]) for t in tasks]
    assert specs[0]["cluster"] == {"workerpool0": ["localhost:5000"],
                                   "workerpool1": ["localhost:5001", "localhost:5002"]}
    assert [s["task"] for s in specs] == [{"type": "workerpool0", "index": 0}, {"type": "workerpool1", "index": 0},
                                          {"type": "workerpool1", "index": 1}]
    assert all(s["environment"] == "cloud" and s["job"] == spec["jobSpec"] for s in specs)
    tf_configs = [cluster.parse(t["env"]["TF_CONFIG"]) for t in tasks]  # the trainer's own reader
    assert [c.name for c in tf_configs] == ["chief:0", "worker:0", "worker:1"] and tf_configs[0].is_chief
    for t in tasks:
        assert {k: t["env"][k] for k in paths.service_dirs("gs://b/jobs/r1")} == paths.service_dirs("gs://b/jobs/r1")
        assert t["env"]["A"] == "1" and t["env"]["PYTHONUNBUFFERED"] == "1"  # the container's env
        assert "CLOUD_ML_TRIAL_ID" not in t["env"]
    single = vertex_local.replica_tasks(dry_run(capsys)["jobSpec"], ports=[5000])
    assert "TF_CONFIG" not in single[0]["env"] and "CLUSTER_SPEC" in single[0]["env"]  # distributed jobs only


def test_local_trials_get_their_id_dirs_and_parameters(capsys):
    spec = dry_run(capsys, "--tuning", "--param", "optim.max_lr=double:0.01:1:log", "--param",
                   "model.width=discrete:4,8", "--param", "train.optimizer=categorical:sgd,adam",
                   "--max_trials", "2")
    trials = vertex_local.sample_trials(spec["studySpec"], 2, seed=0)
    # Two strata per parameter: both discrete values and both categories are tried.
    assert sorted(t["model.width"] for t in trials) == ["4", "8"]
    assert sorted(t["train.optimizer"] for t in trials) == ["adam", "sgd"]
    assert all(0.01 <= float(t["optim.max_lr"]) <= 1 for t in trials)
    args = [f"--{k}={v}" for k, v in trials[1].items()]
    tasks = vertex_local.replica_tasks(spec["trialJobSpec"], "2", args, ports=[5000], metric_file="/tmp/m")
    env = tasks[0]["env"]
    assert (env["CLOUD_ML_TRIAL_ID"], env["CLOUD_ML_HP_METRIC_FILE"]) == ("2", "/tmp/m")
    assert env["AIP_MODEL_DIR"] == "gs://b/jobs/r1/2/model/"
    assert json.loads(env["CLUSTER_SPEC"])["task"]["trial"] == "2"
    assert tasks[0]["argv"][-3:] == args and tasks[0]["name"] == "trial 2 chief:0"
    # ... and the trainer, under that environment, writes the trial's outputs where the service's dirs are.
    assert job_paths("gs://b/jobs/r1", env).model_dir == env["AIP_MODEL_DIR"].rstrip("/")


def test_the_best_trial_is_read_back_from_the_metric_files(tmp_path, monkeypatch):
    results = []
    for trial, value in (("1", 0.4), ("2", 0.7), ("3", 0.5)):
        path = str(tmp_path / trial / "output.metrics")
        monkeypatch.setenv("CLOUD_ML_TRIAL_ID", trial)
        hypertune.report_hyperparameter_tuning_metric(MONITOR, value - 0.1, step=1, path=path)
        hypertune.report_hyperparameter_tuning_metric(MONITOR, value, step=2, path=path)  # the last counts
        results.append(vertex_local.TrialResult(trial, {}, 0, hypertune.read_reported_metric(path, MONITOR), None))
    assert [r.metric for r in results] == [0.4, 0.7, 0.5]
    assert vertex_local.best_trial(results, "MAXIMIZE").trial_id == "2"
    assert vertex_local.best_trial(results, "MINIMIZE").trial_id == "1"
    assert hypertune.read_reported_metric(str(tmp_path / "none"), MONITOR) is None
