"""The Kubeflow Pipelines steps: Python components in the project image, each running the project's own command.

Every step is a lightweight Python component (base image = the project image, kfp already installed there), whose
body runs the command pipeline/chain.py defines for it, as a subprocess with the image's Python. So the same
compiled pipeline runs on Vertex AI Pipelines and, through kfp.local's SubprocessRunner (which runs Python
components only, not container components), on this machine:

    python -m pipeline.kubeflow compile pipeline.yaml --image us-central1-docker.pkg.dev/P/person-attrs/person-attrs:v1
    python -m pipeline.kubeflow local --manual_dir my_data/ --out out/kfp --param train_config=smoke

Parameters reach the commands as values, never through a shell: `train_overrides` is a list, one trainer flag per
item, so `--loss.weights={age: 4}` arrives as one argument. The train step builds the Vertex AI CustomJob of
`trainer.vertex.custom_job_spec` (machines, GPUs, `replica_count` for multi-worker) and submits it and waits, or
with `executor="local"` runs that same spec on this machine. Artifacts hand over `.uri` (gs:// on Vertex AI)
where Dataflow or TensorFlow reads or writes them, since neither sees the step's /gcs mount; the evaluation report
uses the local `.path`, which KFP uploads.
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.
import math
import sys
import types

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from pipeline import chain

# The image's WORKDIR (see Dockerfile): Dataflow builds the workers' package from this setup.py.
SETUP_FILE = "/app/setup.py"
EXECUTORS = ("vertex", "local")  # where the train step's custom job runs
# trainer.training.callbacks.MONITOR (what picks the best checkpoint), spelled out so that the train step, which
# only submits a job, imports no Keras; tests/test_cloud_kfp.py checks that they agree.
MONITOR = "val_mean_balanced_accuracy"


# ----------------------------------------------------------------- what the steps do (imported by their bodies)

def preprocess_step(manual_dir: str, data_dir: str, dataset_config: str, runner: str, project: str, region: str,
                    temp_location: str) -> chain.Step:
    """The build command; Google Cloud options only where given (the DirectRunner needs none)."""
    options = {"--runner": runner, "--project": project, "--region": region, "--temp_location": temp_location,
               "--setup_file": SETUP_FILE if runner == "DataflowRunner" else ""}
    beam_args = [item for flag, value in options.items() if value for item in (flag, value)]
    return chain.preprocess(manual_dir, data_dir, dataset_config, beam_args=beam_args)


def train_job_spec(image: str, data_dir: str, job_dir: str, config: str, overrides=(), replica_count: int = 1,
                   machine_type: str = "", accelerator_type: str = "", accelerator_count: int = 0,
                   display_name: str | None = None) -> dict:
    """The Vertex AI CustomJob that trains `config` with `overrides` (trainer.vertex's, the one definition)."""
    from trainer import vertex

    return vertex.custom_job_spec(
        image, data_dir, job_dir, ["--config", config, *overrides], display_name=display_name or None,
        machine_type=machine_type or None, accelerator_type=accelerator_type or None,
        accelerator_count=accelerator_count if accelerator_type else 0, replica_count=replica_count)


def run_training(executor: str, spec: dict, project: str, region: str) -> None:
    """Runs the training job on Vertex AI (submits it and waits; a failed job fails the step) or here, every
    replica a process with the environment the service gives it (trainer.vertex.run_local)."""
    from trainer import vertex

    if executor == "vertex":
        vertex.submit(spec, "custom", project, region, wait=True)
    elif executor == "local":
        status = vertex.run_local(spec)
        if status:
            print(f"error: the training job failed (exit status {status}); its replicas' output is above",
                  file=sys.stderr, flush=True)
            raise SystemExit(status)
    else:
        raise ValueError(f"executor {executor!r}: expected one of {EXECUTORS}")


def best_epoch_metrics(history: dict, monitor: str) -> dict[str, float]:
    """The validation columns (`val_*`: per-head accuracy and balanced accuracy, losses, means) of the epoch whose
    `monitor` is highest, the first of equals as for the trainer's best checkpoint, with its `epoch`.
    `history`: history.csv as trainer.report.read_history gives it, {column: array over epochs}."""
    scores = [v if math.isfinite(v) else -math.inf for v in map(float, history.get(monitor, ()))]
    if not scores or max(scores) == -math.inf:
        raise ValueError(f"history.csv has no epoch with a finite {monitor}")
    best = scores.index(max(scores))
    row = {k: float(v[best]) for k, v in history.items() if k == "epoch" or k.startswith("val_")}
    return {k: v for k, v in row.items() if math.isfinite(v)}


def trained_job_metrics(job_dir: str) -> dict[str, float]:
    """The best epoch's validation metrics of a trained job dir (its history.csv)."""
    from trainer.jobdir.paths import job_paths
    from trainer.report import read_history

    return best_epoch_metrics(read_history(job_paths(job_dir, environ={}).history_csv), MONITOR)


def summarize_eval_metrics(metrics: dict) -> tuple:
    """Splits trainer.evaluate's metrics.json into (scalars, confusion matrices) for KFP artifacts.

    Scalars: every finite numeric leaf, named by its path without the grouping keys `heads`/`summary`
    (`gender.accuracy`, `mean_accuracy`); the echoed `schema` is skipped. Confusion matrices: every object
    holding `confusion_matrix` (rows = true class) with its `classes`, keyed by head name.
    """
    scalars, confusions = {}, {}

    def walk(node, path):
        if isinstance(node, dict):
            if isinstance(node.get("confusion_matrix"), list):
                matrix = [[int(v) for v in row] for row in node["confusion_matrix"]]
                names = [str(n) for n in node.get("classes") or range(len(matrix))]
                confusions[".".join(path)] = (names, matrix)
            for key, value in node.items():
                if key != "schema":
                    walk(value, path if key in ("heads", "summary") else path + [str(key)])
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and path and math.isfinite(node):
            scalars[".".join(path)] = float(node)

    walk(metrics, [])
    return scalars, confusions


# ----------------------------------------------------------------- the components (bodies run in the image)

def preprocess(manual_dir: str, dataset_config: str, runner: str, project: str, region: str, temp_location: str,
               data: Output[Dataset]):
    """Builds the TFDS dataset with Beam (Dataflow, or the DirectRunner inside the step) into `data`."""
    from pipeline.kfp_components import preprocess_step

    preprocess_step(manual_dir, data.uri, dataset_config, runner, project, region, temp_location).run()


def train(data: Input[Dataset], config: str, overrides: list, image: str, executor: str, replica_count: int,
                machine_type: str, accelerator_type: str, accelerator_count: int, project: str, region: str,
                job_name: str, model: Output[Model], metrics: Output[Metrics]):
    """Trains as a Vertex AI custom job into `model` (the job dir); `metrics`: the best epoch's validation scores."""
    from pipeline import kfp_components as steps

    spec = steps.train_job_spec(image, data.uri, model.uri, config, overrides, replica_count, machine_type,
                                accelerator_type, accelerator_count, display_name=f"{job_name}-train")
    steps.run_training(executor, spec, project, region)
    for name, value in sorted(steps.trained_job_metrics(model.uri).items()):
        metrics.log_metric(name, value)


def evaluate(model: Input[Model], data: Input[Dataset], split: str, report: Output[Artifact]):
    """Scores the job dir's best model on `split`; metrics.json and the self-contained page go to `report`."""
    from pipeline import chain

    chain.evaluate(model.uri, data.uri, split, report.path, embed=True).run()


def log_eval_metrics(report: Input[Artifact], confusion_head: str, metrics: Output[Metrics],
                     confusion: Output[ClassificationMetrics], html: Output[HTML]):
    """Turns the evaluate step's metrics.json and index.html into artifacts the Vertex AI console shows."""
    import json
    import os
    import shutil

    from pipeline.kfp_components import summarize_eval_metrics

    with open(os.path.join(report.path, "metrics.json")) as f:
        scalars, confusions = summarize_eval_metrics(json.load(f))
    for name, value in sorted(scalars.items()):
        metrics.log_metric(name, value)
    # A ClassificationMetrics artifact holds one matrix: the head asked for, else the first one found.
    if confusion_head and confusion_head not in confusions:
        raise ValueError(f"no confusion matrix for head {confusion_head!r}; metrics.json has {sorted(confusions)}")
    head = confusion_head or next(iter(confusions), "")
    if head:
        names, matrix = confusions[head]
        confusion.log_confusion_matrix(names, matrix)
        confusion.metadata["head"] = head
    # The evaluate step wrote the page with its images inlined (--embed): an HTML artifact is one file.
    shutil.copyfile(os.path.join(report.path, "index.html"), html.path)


def upload_model(model: Input[Model], project: str, region: str, display_name: str, serving_image: str,
                 vertex_model: Output[Artifact]):
    """Registers the exported SavedModel (JOB_DIR/model) in the Vertex AI Model Registry."""
    from google.cloud import aiplatform  # the gcp extra, present in the project image

    aiplatform.init(project=project, location=region)
    uploaded = aiplatform.Model.upload(display_name=display_name, artifact_uri=model.uri.rstrip("/") + "/model",
                                       serving_container_image_uri=serving_image)
    vertex_model.metadata["resourceName"] = uploaded.resource_name


def make_components(image: str) -> types.SimpleNamespace:
    """The pipeline's steps, all running in `image`. KFP fixes a component's image when it is defined, and the
    image (registry, project, tag) is only known when the pipeline is compiled."""
    # The project image already has kfp and this package (requirements.txt), so nothing is pip-installed when a
    # step starts, and the bodies import their helpers from this module.
    def component(func):
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return types.SimpleNamespace(**{f.__name__: component(f) for f in (
        preprocess, train, evaluate, log_eval_metrics, upload_model)})
