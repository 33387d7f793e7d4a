"""The Kubeflow Pipelines steps: each runs the project's own CLI (or a few lines of Python) in the project image.

Components are made by `make_components(image)` because KFP fixes a component's image when it is defined, and
the image (its registry, project and tag) is only known when the pipeline is compiled. The graph that wires
them together is pipeline/chain.py's, run as KFP tasks by pipeline/kubeflow.py:

    python -m pipeline.kubeflow compile pipeline.yaml --image us-central1-docker.pkg.dev/P/person-attrs/person-attrs:v1

Artifacts hand over `gs://` URIs (`.uri`) where a Dataflow job or TensorFlow reads or writes them, since Dataflow
workers do not see the step's /gcs mount; the evaluation report uses the local `.path`, which KFP uploads.
"""

import types

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from pipeline import chain

# The image's WORKDIR (see Dockerfile): Dataflow builds the workers' package from this setup.py.
SETUP_FILE = "/app/setup.py"


def summarize_eval_metrics(metrics: dict) -> tuple:
    """Splits trainer.evaluate's metrics.json into (scalars, confusion matrices) for KFP artifacts.

    Scalars: every finite numeric leaf, named by its path without the grouping keys `heads`/`summary`
    (`gender.accuracy`, `mean_accuracy`); the echoed `schema` is skipped. Confusion matrices: every object
    holding `confusion_matrix` (rows = true class) with its `classes`, keyed by head name.
    """
    import math

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


def log_eval_metrics(report: Input[Artifact], confusion_head: str, metrics: Output[Metrics],
                     confusion: Output[ClassificationMetrics], html: Output[HTML]):
    """Turns the evaluate step's metrics.json and index.html into artifacts the Vertex AI console shows."""
    import json
    import os
    import shutil

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
    """The pipeline's steps, all running in `image`."""

    def _container(step: chain.Step) -> dsl.ContainerSpec:
        return dsl.ContainerSpec(image=image, command=["python", "-m", step.module], args=step.args)

    @dsl.container_component
    def preprocess(manual_dir: str, dataset_config: str, runner: str, project: str, region: str,
                   temp_location: str, data: Output[Dataset]):
        # DirectRunner ignores the Google Cloud options, so one command line serves both runners.
        return _container(chain.preprocess(manual_dir, data.uri, dataset_config, beam_args=[
            "--runner", runner, "--project", project, "--region", region,
            "--temp_location", temp_location, "--setup_file", SETUP_FILE]))

    @dsl.container_component
    def train(data: Input[Dataset], config: str, overrides: str, model: Output[Model]):
        # `sh -c` only to split the space-separated dotted overrides ("--train.epochs=30 --model.width=8")
        # into arguments: a KFP parameter is one string. "$3" is left unquoted on purpose.
        script = " ".join(["exec python", *chain.train('"$0"', '"$1"', '"$2"').argv, "$3"])
        return dsl.ContainerSpec(image=image, command=["sh", "-c", script], args=[data.uri, model.uri, config,
                                                                                 overrides])

    @dsl.container_component
    def evaluate(model: Input[Model], data: Input[Dataset], split: str, report: Output[Artifact]):
        return _container(chain.evaluate(model.uri, data.uri, split, report.path, embed=True))

    # The project image already has kfp (requirements.txt), so nothing is pip-installed when a step starts.
    light = dict(base_image=image, install_kfp_package=False)
    return types.SimpleNamespace(
        preprocess=preprocess, train=train, evaluate=evaluate,
        log_eval_metrics=dsl.component(log_eval_metrics, additional_funcs=[summarize_eval_metrics],
                                       **light),
        upload_model=dsl.component(upload_model, **light),
    )
