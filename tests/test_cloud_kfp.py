"""The Kubeflow pipeline: it compiles, its spec holds the expected steps, images and parameters, and its
Python step runs locally under kfp.local.

    python -m pytest -q tests/test_cloud_kfp.py
"""

import csv
import importlib
import importlib.util
import json
import pathlib
import re
import sys
import types

import pytest
import yaml
from kfp import dsl, local
from kfp.dsl import Artifact, Output

from pipeline import chain, kfp_components, kubeflow
from pipeline.kfp_components import make_components, summarize_eval_metrics
from trainer import vertex

IMAGE = "us-central1-docker.pkg.dev/p/person-attrs/person-attrs:test"


def eval_metrics_json() -> dict:
    """metrics.json as trainer.evaluate writes it, from the real metric code on 8 made-up predictions."""
    import numpy as np

    from tfds_person_attrs.schema import HVC
    from trainer.evaluation import eval_metrics

    rng = np.random.default_rng(0)
    labels = {a.name: rng.integers(0, len(a.classes), 8) for a in HVC.attributes}
    probs = {a.name: rng.dirichlet(np.ones(len(a.classes)), 8) for a in HVC.attributes}
    metrics = eval_metrics.evaluate_arrays(HVC, labels, probs)
    metrics.update(split="test", num_examples=8, schema=HVC.to_dict())
    return json.loads(json.dumps(metrics))


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    assert kubeflow.main(["compile", str(path), "--image", IMAGE]) == 0
    return yaml.safe_load(path.read_text())


def test_steps_images_and_dependencies(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"preprocess", "train", "evaluate", "log-eval-metrics", "condition-1"}
    assert tasks["train"]["dependentTasks"] == ["preprocess"]
    assert set(tasks["evaluate"]["dependentTasks"]) == {"preprocess", "train"}
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    for executor in executors.values():  # Python components that kfp.local can run, installing nothing at start
        command = " ".join(executor["container"]["command"])
        assert "kfp.dsl.executor_main" in command and "pip install" not in command
    # Artifacts reach the commands as KFP hands them over: URIs where Dataflow or TensorFlow reads or writes.
    assert "preprocess_step(manual_dir, data.uri," in _source(executors["exec-preprocess"])
    assert "chain.evaluate(model.uri, data.uri, split, report.path, embed=True)" in _source(executors["exec-evaluate"])


def _source(executor) -> str:
    return " ".join(executor["container"]["command"])


def test_every_helper_the_steps_import_exists(spec):
    """Read from the compiled spec, so a renamed entry point breaks this test and not a cluster run."""
    imported = set()
    for executor in spec["deploymentSpec"]["executors"].values():
        imported |= set(re.findall(r"from (pipeline[\w.]*) import (\w+)", _source(executor)))
    assert ("pipeline", "kfp_components") in imported and ("pipeline", "chain") in imported
    for module, name in sorted(imported):
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    # and the commands the helpers run are modules of this repo
    steps = [kfp_components.preprocess_step("m", "d", "hvc", "DataflowRunner", "p", "r", "gs://t"),
             chain.evaluate("j", "d", "test", "o", embed=True)]
    job = kfp_components.train_job_spec(IMAGE, "d", "j", "hvc")["jobSpec"]
    modules = [s.module for s in steps] + [t["argv"][2] for t in vertex.cluster_tasks(job)]
    assert modules == ["pipeline.preprocess", "trainer.evaluate", "trainer.task"]
    assert [m for m in modules if importlib.util.find_spec(m) is None] == []


def test_parameters_machines_retries_caching(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"manual_dir", "project", "beam_runner", "replica_count", "machine_type", "accelerator_type",
            "accelerator_count", "train_overrides", "upload_model"} <= set(params)
    assert params["beam_runner"]["defaultValue"] == "DataflowRunner"
    assert params["train_overrides"]["parameterType"] == "LIST" and params["train_overrides"]["defaultValue"] == []
    assert params["replica_count"] == {"defaultValue": 1.0, "isOptional": True, "parameterType": "NUMBER_INTEGER"}
    assert "defaultValue" not in params["manual_dir"]  # required
    tasks = spec["root"]["dag"]["tasks"]
    # The machines are the custom job's, set per run: the train task passes them on, its own pod has no GPU.
    train_inputs = tasks["train"]["inputs"]["parameters"]
    for name in ("replica_count", "machine_type", "accelerator_type", "accelerator_count", "project", "region"):
        assert train_inputs[name] == {"componentInputParameter": name}
    assert train_inputs["overrides"] == {"componentInputParameter": "train_overrides"}
    assert train_inputs["executor"] == {"runtimeValue": {"constant": "vertex"}}
    assert train_inputs["image"] == {"runtimeValue": {"constant": IMAGE}}
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-train"]["container"].get("resources", {})
    assert tasks["preprocess"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert all(tasks[t]["cachingOptions"]["enableCache"] for t in ("preprocess", "train", "evaluate"))
    condition = tasks["condition-1"]
    assert "upload_model" in condition["triggerPolicy"]["condition"]
    upload = spec["components"]["comp-condition-1"]["dag"]["tasks"]["upload-model"]
    assert upload["cachingOptions"] == {}  # caching off: a cache hit would register no model
    outputs = spec["components"]["comp-log-eval-metrics"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "metrics": "system.Metrics", "confusion": "system.ClassificationMetrics", "html": "system.HTML"}
    train_outputs = spec["components"]["comp-train"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in train_outputs.items()} == {
        "model": "system.Model", "metrics": "system.Metrics"}


OVERRIDES = ["--loss.weights={age: 4}", "--augment.erasing_scale=[0.1,0.3]", "--loss.weights.gender=2"]


def test_train_job_is_trainer_vertex_s_custom_job():
    """One definition: the spec trainer.vertex submits, whose every replica runs the chain's train command with
    each override as one argument."""
    spec = kfp_components.train_job_spec(IMAGE, "gs://b/data", "gs://b/job", "hvc", OVERRIDES, replica_count=2,
                                         accelerator_type="NVIDIA_L4", accelerator_count=2, display_name="run-train")
    assert spec == vertex.custom_job_spec(IMAGE, "gs://b/data", "gs://b/job", ["--config", "hvc", *OVERRIDES],
                                          display_name="run-train", accelerator_type="NVIDIA_L4",
                                          accelerator_count=2, replica_count=2)
    tasks = vertex.cluster_tasks(spec["jobSpec"])
    assert [t["name"] for t in tasks] == ["chief:0", "worker:0"]
    command = ["python", *chain.train("gs://b/data", "gs://b/job", "hvc", *OVERRIDES).argv]
    assert all(t["argv"] == command for t in tasks)
    machines = [pool["machineSpec"] for pool in spec["jobSpec"]["workerPoolSpecs"]]
    assert machines == 2 * [{"machineType": "g2-standard-24", "acceleratorType": "NVIDIA_L4", "acceleratorCount": 2}]
    assert spec["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://b/job"}
    # No accelerator type (a CPU machine): the pipeline's default count of 1 is dropped, not an error.
    cpu = kfp_components.train_job_spec(IMAGE, "d", "j", "hvc", accelerator_type="", accelerator_count=1)
    assert cpu["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "n1-standard-8"}


def test_executors_submit_or_run_here_the_same_spec(monkeypatch, capsys):
    """`vertex` submits the spec and waits; `local` runs that spec here, every replica (trainer.vertex.run_local,
    tested with 2 replicas in tests/test_cloud_vertex.py), and fails the step with the job's status."""
    sent, ran = [], []
    monkeypatch.setattr(vertex, "submit", lambda *args, **kwargs: sent.append((args, kwargs)))
    monkeypatch.setattr(vertex, "run_local", lambda job: ran.append(job) or (3 if len(ran) > 1 else 0))
    spec = kfp_components.train_job_spec(IMAGE, "gs://b/data", "gs://b/job", "hvc", OVERRIDES, replica_count=2)
    kfp_components.run_training("vertex", spec, "p", "europe-west4")
    assert sent == [((spec, "custom", "p", "europe-west4"), {"wait": True})]
    kfp_components.run_training("local", spec, "", "us-central1")
    assert ran == [spec]
    with pytest.raises(SystemExit) as e:
        kfp_components.run_training("local", spec, "", "us-central1")
    assert e.value.code == 3 and "exit status 3" in capsys.readouterr().err
    with pytest.raises(ValueError, match="executor 'gke'"):
        kfp_components.run_training("gke", spec, "p", "r")


def test_best_epoch_metrics_are_the_best_checkpoint_s():
    """The epoch BestCheckpoint keeps: the highest monitored value, the first of equals, non-finite ones never."""
    from trainer.objective.log_keys import MONITOR

    monitor = kfp_components.MONITOR
    assert monitor == MONITOR
    history = {"epoch": [0, 1, 2, 3], monitor: [0.4, 0.7, float("nan"), 0.7],
               "val_gender_accuracy": [0.6, 0.8, 0.9, 0.5], "gender_accuracy": [0.5, 0.6, 0.7, 0.8]}
    assert kfp_components.best_epoch_metrics(history, monitor) == {
        "epoch": 1.0, monitor: 0.7, "val_gender_accuracy": 0.8}
    with pytest.raises(ValueError, match="no epoch with a finite"):
        kfp_components.best_epoch_metrics({"epoch": [0], monitor: [float("nan")]}, monitor)


def test_list_parameter_takes_every_form_the_readme_shows(spec):
    shell = "train_overrides=--train.epochs=3 '--loss.weights={age: 4}' --augment.erasing_scale=[0.1,0.3]"
    expected = ["--train.epochs=3", "--loss.weights={age: 4}", "--augment.erasing_scale=[0.1,0.3]"]
    assert kubeflow.parameter_values(spec, [shell]) == {"train_overrides": expected}
    assert kubeflow.parameter_values(spec, ["train_overrides=" + json.dumps(expected)]) == {
        "train_overrides": expected}
    assert kubeflow.parameter_values(spec, ["train_overrides="]) == {"train_overrides": []}
    with pytest.raises(ValueError, match="--param train_overrides: .*not a JSON list"):
        kubeflow.parameter_values(spec, ['train_overrides=["--a", '])
    with pytest.raises(ValueError, match="--param train_overrides: .*quote a flag"):
        kubeflow.parameter_values(spec, ["train_overrides=--loss.weights='{age: 4}"])


def test_summarize_eval_metrics():
    metrics = eval_metrics_json()
    scalars, confusions = summarize_eval_metrics(metrics)
    assert scalars["mean_accuracy"] == metrics["summary"]["mean_accuracy"]
    assert scalars["gender.accuracy"] == metrics["heads"]["gender"]["accuracy"]
    assert not any(k.startswith("schema") or "confusion" in k for k in scalars)
    assert list(confusions) == [a["name"] for a in metrics["schema"]["attributes"]]
    assert confusions["pose"] == (metrics["heads"]["pose"]["classes"], metrics["heads"]["pose"]["confusion_matrix"])


def test_metrics_step_runs_locally(tmp_path):
    """The metrics step, fed by a stand-in for the evaluate container, run by kfp.local in this Python."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    steps = make_components("python:3.11")

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def fake_evaluate(metrics_json: str, report: Output[Artifact]):
        """What the evaluate step leaves in its folder: metrics.json and the page as trainer.evaluate --embed
        renders it (without the sample images, which need a model)."""
        import json
        import os

        from tfds_person_attrs.schema import schema_from_dict
        from trainer.report import write_report

        os.makedirs(report.path, exist_ok=True)
        with open(os.path.join(report.path, "metrics.json"), "w") as f:
            f.write(metrics_json)
        metrics = json.loads(metrics_json)
        write_report(report.path, schema_from_dict(metrics["schema"]), metrics, embed=True)

    @dsl.pipeline
    def local_eval(metrics_json: str):
        report = fake_evaluate(metrics_json=metrics_json).outputs["report"]
        steps.log_eval_metrics(report=report, confusion_head="pose")

    metrics = eval_metrics_json()
    with kubeflow.importable_by_subprocesses():
        local_eval(metrics_json=json.dumps(metrics))
    [step_dir] = tmp_path.glob("local-eval-*/log-eval-metrics")
    artifacts = json.loads((step_dir / "executor_output.json").read_text())["artifacts"]
    metadata = {k: v["artifacts"][0]["metadata"] for k, v in artifacts.items()}
    assert metadata["metrics"]["pose.accuracy"] == metrics["heads"]["pose"]["accuracy"]
    matrix = metadata["confusion"]["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == ["Back", "Front-Frontish", "Side"]
    assert [r["row"] for r in matrix["rows"]] == metrics["heads"]["pose"]["confusion_matrix"]
    page = (step_dir / "html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert 'id="metrics"' in page and len(sources) == len(metrics["heads"])  # a confusion matrix per head
    assert all(src.startswith("data:image/png;base64,iVBORw0K") for src in sources)  # one self-contained file


def test_run_submits_typed_parameters(monkeypatch, tmp_path):
    """`run` with a stand-in for google-cloud-aiplatform: what it would send to Vertex AI Pipelines."""
    sent = {}

    class PipelineJob:
        def __init__(self, **kwargs):
            sent.update(kwargs)
            self.resource_name = "projects/p/locations/r/pipelineJobs/x"

        def submit(self, service_account=None):
            sent["submitted"] = True

    fake = types.SimpleNamespace(init=lambda **kw: sent.update(init=kw), PipelineJob=PipelineJob)
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", fake)
    monkeypatch.setattr(importlib.import_module("google.cloud"), "aiplatform", fake, raising=False)
    assert kubeflow.main(["run", "--project", "p", "--region", "europe-west4", "--pipeline_root", "gs://b/root",
                          "--image", IMAGE, "--param", "manual_dir=gs://b/raw/hvc_data.zip",
                          "--param", "accelerator_count=4", "--param", "upload_model=true",
                          "--param", "train_overrides=--train.epochs=3 '--loss.weights={age: 4}'"]) == 0
    assert sent["submitted"] and sent["pipeline_root"] == "gs://b/root" and sent["enable_caching"]
    assert sent["parameter_values"] == {"project": "p", "region": "europe-west4", "accelerator_count": 4,
                                        "temp_location": "gs://b/root/dataflow-tmp", "upload_model": True,
                                        "manual_dir": "gs://b/raw/hvc_data.zip",
                                        "train_overrides": ["--train.epochs=3", "--loss.weights={age: 4}"]}
    assert yaml.safe_load(pathlib.Path(sent["template_path"]).read_text())["pipelineInfo"]["name"] == "person-attrs"
    with pytest.raises(SystemExit):
        kubeflow.main(["run", "--project", "p", "--pipeline_root", "gs://b/root", "--param", "epochs=3"])


def test_run_without_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match="needs google-cloud-aiplatform"):
        kubeflow.main(["run", "--project", "p", "--pipeline_root", "gs://b/root"])


def test_local_runs_every_step_of_the_compiled_pipeline(tmp_path, capsys):
    """`pipeline.kubeflow local` on 48 generated images: kfp.local runs each step of the compiled spec, handing
    artifacts over as KFP does; the overrides reach the trainer's config whole; the train step's metrics are
    its best epoch's."""
    from tfds_person_attrs.demo.generate import write_demo_data

    manual = write_demo_data(str(tmp_path / "manual"), num_images=48, num_missing=0, max_jpeg_quality=60)
    out = tmp_path / "out"
    overrides = ["--loss.weights={age: 4}", "--augment.erasing_scale=[0.1, 0.3]", "--train.epochs=2"]
    assert kubeflow.main(["local", "--manual_dir", manual, "--out", str(out), "--image", IMAGE,
                          "--param", "train_config=smoke", "--param", "train_overrides=" + json.dumps(overrides),
                          "--param", "confusion_head=pose"]) == 0
    printed = capsys.readouterr().out
    [run] = out.glob("person-attrs-*")
    executor_outputs = {d.name: json.loads((d / "executor_output.json").read_text())["artifacts"]
                        for d in run.iterdir() if (d / "executor_output.json").is_file()}
    assert set(executor_outputs) == {"preprocess", "train", "evaluate", "log-eval-metrics"}  # upload_model=false
    uris = {(step, name): a["artifacts"][0]["uri"] for step, arts in executor_outputs.items()
            for name, a in arts.items()}
    assert f"  {'train':<18}{'model':<12}{uris['train', 'model']}" in printed.splitlines()
    # the compiled spec it ran: the train step runs the custom job here, and nothing is retried
    compiled = yaml.safe_load((out / "pipeline.yaml").read_text())
    assert compiled["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["executor"] == {
        "runtimeValue": {"constant": "local"}}
    assert not any("retryPolicy" in t for t in compiled["root"]["dag"]["tasks"].values())

    data, job, report = uris["preprocess", "data"], pathlib.Path(uris["train", "model"]), uris["evaluate", "report"]
    config = yaml.safe_load((job / "config.yaml").read_text())
    assert config["data"]["data_dir"] == data and config["train"]["job_dir"] == str(job)
    assert config["loss"]["weights"] == {"age": 4.0}  # one argument with its space and braces
    assert config["augment"]["erasing_scale"] == [0.1, 0.3] and config["train"]["epochs"] == 2
    assert (job / "checkpoints" / "best.keras").is_file() and (job / "model" / "saved_model.pb").is_file()

    with open(job / "history.csv") as f:
        history = list(csv.DictReader(f))
    monitor = kfp_components.MONITOR
    top = max(float(r[monitor]) for r in history)
    best = next(r for r in history if float(r[monitor]) == top)
    train_metrics = executor_outputs["train"]["metrics"]["artifacts"][0]["metadata"]
    evaluated = json.loads((pathlib.Path(report) / "metrics.json").read_text())
    assert len(evaluated["heads"]) == 8
    for head in evaluated["heads"]:  # the best epoch's, which need not be the last one
        assert train_metrics[f"val_{head}_accuracy"] == pytest.approx(float(best[f"val_{head}_accuracy"]))
    assert train_metrics["epoch"] == float(best["epoch"]) and train_metrics[monitor] == pytest.approx(top)

    summary = json.loads((pathlib.Path(data) / "person_attrs" / "hvc" / "1.0.0" / "build_summary.json").read_text())
    assert evaluated["num_examples"] == summary["splits"]["test"]
    logged = executor_outputs["log-eval-metrics"]
    assert logged["metrics"]["artifacts"][0]["metadata"]["pose.accuracy"] == evaluated["heads"]["pose"]["accuracy"]
    assert logged["confusion"]["artifacts"][0]["metadata"]["head"] == "pose"


def test_local_names_the_step_that_failed(tmp_path, capsys):
    """A folder without the CSV: the build fails with its own one-line error, and `local` names the step."""
    (tmp_path / "manual").mkdir()
    assert kubeflow.main(["local", "--manual_dir", str(tmp_path / "manual"), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "hvc_annotations.csv" in captured.out + captured.err
    assert "Inner task failed" in captured.err and "preprocess" in captured.err.splitlines()[-1]


def test_local_checks_its_manual_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        kubeflow.main(["local", "--manual_dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "--manual_dir" in capsys.readouterr().err
