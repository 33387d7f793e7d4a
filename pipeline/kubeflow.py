"""The whole chain as one Kubeflow Pipelines v2 pipeline: preprocess -> train -> evaluate -> (upload model).

    python -m pipeline.kubeflow compile pipeline.yaml --image us-central1-docker.pkg.dev/P/person-attrs/person-attrs:v1
    python -m pipeline.kubeflow run --project P --region us-central1 --pipeline_root gs://B/pipeline-root \\
        --image us-central1-docker.pkg.dev/P/person-attrs/person-attrs:v1 \\
        --param manual_dir=gs://B/raw/hvc_data.zip --param accelerator_count=2 --wait

`compile` needs only kfp; `run` submits to Vertex AI Pipelines with google-cloud-aiplatform (the gcp extra).
"""

import os
import sys
import tempfile

import yaml
from kfp import compiler, dsl

from pipeline import chain
from pipeline.kfp_components import make_components
from trainer import cli

PIPELINE_NAME = "person-attrs"
DEFAULT_IMAGE = os.environ.get("PERSON_ATTRS_IMAGE",
                               "us-central1-docker.pkg.dev/PROJECT/person-attrs/person-attrs:latest")
# Vertex AI's prebuilt TensorFlow serving image; use the newest tf2 tag it offers.
DEFAULT_SERVING_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


class KubeflowSteps:
    """The chain's steps (pipeline/chain.py) as KFP tasks, each with its retries and resources."""

    def __init__(self, components, beam_runner, project, region, temp_location, accelerator_type,
                 accelerator_count):
        self.components, self.beam_runner = components, beam_runner
        self.project, self.region, self.temp_location = project, region, temp_location
        self.accelerator_type, self.accelerator_count = accelerator_type, accelerator_count

    def preprocess(self, manual_dir, dataset_config):
        prep = self.components.preprocess(manual_dir=manual_dir, dataset_config=dataset_config,
                                          runner=self.beam_runner, project=self.project, region=self.region,
                                          temp_location=self.temp_location)
        # A Dataflow job is idempotent over its output dir, and a transient quota or zone error is common.
        prep.set_display_name("preprocess").set_retry(2, backoff_duration="60s", backoff_factor=2)
        prep.set_cpu_limit("4").set_memory_limit("16G")  # the launcher (or DirectRunner itself) runs here
        return prep.outputs["data"]

    def train(self, data, config, overrides):
        train = self.components.train(data=data, config=config, overrides=overrides)
        # A retry reuses the same job dir, so it resumes from JOB_DIR/backup instead of restarting.
        train.set_display_name("train").set_retry(2, backoff_duration="120s")
        train.set_accelerator_type(self.accelerator_type).set_accelerator_limit(self.accelerator_count)
        train.set_cpu_limit("8").set_memory_limit("32G")
        return train.outputs["model"]

    def evaluate(self, model, data, split):
        evaluate = self.components.evaluate(model=model, data=data, split=split)
        evaluate.set_display_name("evaluate").set_retry(1).set_cpu_limit("4").set_memory_limit("16G")
        return evaluate.outputs["report"]


def build_pipeline(image: str = DEFAULT_IMAGE):
    """The pipeline function, every step in `image`."""
    steps = make_components(image)

    @dsl.pipeline(name=PIPELINE_NAME, description="Build person_attrs with Beam, train, evaluate, register.")
    def person_attrs_pipeline(
        manual_dir: str,
        project: str,
        region: str = "us-central1",
        temp_location: str = "",
        dataset_config: str = "hvc",
        beam_runner: str = "DataflowRunner",
        train_config: str = "hvc",
        train_overrides: str = "",
        accelerator_type: str = "NVIDIA_TESLA_T4",
        accelerator_count: int = 1,
        eval_split: str = "test",
        confusion_head: str = "",
        upload_model: bool = False,
        model_display_name: str = PIPELINE_NAME,
        serving_image: str = DEFAULT_SERVING_IMAGE,
    ):
        on_kubeflow = KubeflowSteps(steps, beam_runner, project, region, temp_location, accelerator_type,
                                    accelerator_count)
        outputs = chain.create_pipeline(on_kubeflow, manual_dir, dataset_config, train_config, train_overrides,
                                        eval_split)

        log = steps.log_eval_metrics(report=outputs["report"], confusion_head=confusion_head)
        log.set_display_name("metrics")

        with dsl.If(upload_model == True, name="upload-model"):  # noqa: E712 (a KFP condition, not Python's)
            upload = steps.upload_model(model=outputs["model"], project=project, region=region,
                                        display_name=model_display_name, serving_image=serving_image)
            # Registering a model is a side effect: a cache hit would silently register nothing.
            upload.set_display_name("upload-model").set_caching_options(False)

    return person_attrs_pipeline


def compile_pipeline(path: str, image: str = DEFAULT_IMAGE) -> str:
    compiler.Compiler().compile(pipeline_func=build_pipeline(image), package_path=path)
    return path


def parameter_values(spec: dict, pairs, **given) -> dict:
    """`NAME=VALUE` strings (and keyword values) typed by the compiled spec's declared inputs."""
    declared = spec["root"]["inputDefinitions"]["parameters"]
    casts = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float,
             "BOOLEAN": lambda v: v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")}
    values = {k: v for k, v in given.items() if v is not None}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        values[name] = value
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(f"unknown pipeline parameters {unknown}; the pipeline takes {sorted(declared)}")
    return {k: casts[declared[k]["parameterType"]](v) for k, v in values.items()}


def run(args) -> str:
    """Submits the pipeline to Vertex AI Pipelines; returns the job's resource name."""
    path = args.template or compile_pipeline(os.path.join(tempfile.mkdtemp(), "pipeline.yaml"), args.image)
    with open(path) as f:
        spec = yaml.safe_load(f)
    temp = args.pipeline_root.rstrip("/") + "/dataflow-tmp"
    # Parameters are checked before the SDK is needed, so a typo is found without it too.
    params = parameter_values(spec, args.param, project=args.project, region=args.region, temp_location=temp)
    try:
        from google.cloud import aiplatform
    except ImportError:
        raise SystemExit("`run` needs google-cloud-aiplatform: pip install -c constraints.txt '.[gcp]' "
                         "(or compile with `python -m pipeline.kubeflow compile` and upload the YAML)") from None
    aiplatform.init(project=args.project, location=args.region)
    job = aiplatform.PipelineJob(display_name=PIPELINE_NAME, template_path=path, pipeline_root=args.pipeline_root,
                                 parameter_values=params, enable_caching=not args.no_cache)
    job.submit(service_account=args.service_account)
    if args.wait:
        job.wait()
    return job.resource_name


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m pipeline.kubeflow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="write the pipeline spec (YAML)")
    c.add_argument("output")
    r = sub.add_parser("run", help="submit to Vertex AI Pipelines")
    r.add_argument("--project", required=True)
    r.add_argument("--region", default="us-central1")
    r.add_argument("--pipeline_root", required=True, help="gs:// folder for the run's artifacts")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter")
    r.add_argument("--template", help="a compiled spec (default: compile now)")
    r.add_argument("--service_account")
    r.add_argument("--no_cache", action="store_true", help="run every step even if a cached result exists")
    r.add_argument("--wait", action="store_true")
    for p in (c, r):
        p.add_argument("--image", default=DEFAULT_IMAGE, help="the project image (default: $PERSON_ATTRS_IMAGE)")
    args = parser.parse_args(argv)
    if args.cmd == "compile":
        folder = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(folder):
            parser.error(f"cannot write {args.output}: the folder {folder} does not exist")
        print(compile_pipeline(args.output, args.image))
    else:
        if args.template and not os.path.isfile(args.template):
            parser.error(f"--template {args.template}: no such file; compile one with "
                         "`python -m pipeline.kubeflow compile FILE` or leave --template out")
        if not args.pipeline_root.startswith("gs://"):
            parser.error(f"--pipeline_root {args.pipeline_root!r}: Vertex AI Pipelines needs a gs:// folder")
        try:
            print(run(args))
        except ValueError as e:
            parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
