"""The Kubeflow pipeline: it compiles, its spec holds the expected steps, images and parameters, and its
Python step runs locally under kfp.local.

    python -m pytest -q tests/test_cloud_kfp.py
"""

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

from pipeline import kubeflow
from pipeline.kfp_components import make_components, summarize_eval_metrics

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


def test_steps_images_and_commands(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"preprocess", "train", "evaluate", "log-eval-metrics", "condition-1"}
    assert tasks["train"]["dependentTasks"] == ["preprocess"]
    assert set(tasks["evaluate"]["dependentTasks"]) == {"preprocess", "train"}
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    commands = {name: " ".join(e["container"]["command"]) for name, e in executors.items()}
    modules = {"exec-preprocess": "pipeline.preprocess", "exec-train": "trainer.task",
               "exec-evaluate": "trainer.evaluate"}
    for executor, module in modules.items():
        assert f"python -m {module}" in commands[executor]
    # The Python steps run kfp's executor from the image, installing nothing at start.
    assert "pip install" not in commands["exec-log-eval-metrics"] + commands["exec-upload-model"]
    assert "--embed" in executors["exec-evaluate"]["container"]["args"]  # the report page the HTML artifact shows
    preprocess_args = executors["exec-preprocess"]["container"]["args"]
    assert preprocess_args[preprocess_args.index("--data_dir") + 1] == "{{$.outputs.artifacts['data'].uri}}"
    assert "--runner" in preprocess_args and "--setup_file" in preprocess_args


def test_every_module_the_steps_run_is_a_module_of_this_repo(spec):
    """Read from the compiled spec, so a renamed entry point breaks this test and not a cluster run."""
    import re

    commands = " ".join(" ".join(e["container"]["command"] + e["container"].get("args", []))
                        for e in spec["deploymentSpec"]["executors"].values())
    run = set(re.findall(r"python3? -m ([\w.]+)", commands)) - {"kfp.dsl.executor_main"}
    assert {"pipeline.preprocess", "trainer.task", "trainer.evaluate"} <= run
    assert [m for m in sorted(run) if importlib.util.find_spec(m) is None] == []


def test_parameters_accelerators_retries_caching(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"manual_dir", "project", "beam_runner", "accelerator_type", "accelerator_count",
            "train_overrides", "upload_model"} <= set(params)
    assert params["beam_runner"]["defaultValue"] == "DataflowRunner"
    assert params["accelerator_count"]["parameterType"] == "NUMBER_INTEGER"
    assert "defaultValue" not in params["manual_dir"]  # required
    tasks = spec["root"]["dag"]["tasks"]
    accel = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert accel == {"resourceCount": "{{$.inputs.parameters['pipelinechannel--accelerator_count']}}",
                     "resourceType": "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}"}
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
                          "--param", "accelerator_count=4", "--param", "upload_model=true"]) == 0
    assert sent["submitted"] and sent["pipeline_root"] == "gs://b/root" and sent["enable_caching"]
    assert sent["parameter_values"] == {"project": "p", "region": "europe-west4", "accelerator_count": 4,
                                        "temp_location": "gs://b/root/dataflow-tmp", "upload_model": True,
                                        "manual_dir": "gs://b/raw/hvc_data.zip"}
    assert yaml.safe_load(pathlib.Path(sent["template_path"]).read_text())["pipelineInfo"]["name"] == "person-attrs"
    with pytest.raises(SystemExit):
        kubeflow.main(["run", "--project", "p", "--pipeline_root", "gs://b/root", "--param", "epochs=3"])


def test_run_without_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match="needs google-cloud-aiplatform"):
        kubeflow.main(["run", "--project", "p", "--pipeline_root", "gs://b/root"])


def test_train_command_splits_overrides(spec, tmp_path):
    """The train step's `sh -c` line, run with a stand-in `python` that prints the argv it receives."""
    import subprocess

    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    values = ["gs://b/data dir", "gs://b/model", "hvc", "--train.epochs=3 --model.width=2"]
    out = subprocess.run([*container["command"], *values], capture_output=True, text=True, check=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}).stdout.splitlines()
    assert out == ["-m", "trainer.task", "--data_dir", "gs://b/data dir", "--job_dir", "gs://b/model",
                   "--config", "hvc", "--train.epochs=3", "--model.width=2"]
