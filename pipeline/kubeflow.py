"""The whole chain as one Kubeflow Pipelines v2 pipeline: preprocess -> train -> evaluate -> (upload model).

    python -m pipeline.kubeflow compile pipeline.yaml --image us-central1-docker.pkg.dev/P/person-attrs/person-attrs:v1
    python -m pipeline.kubeflow run --project P --region us-central1 --pipeline_root gs://B/pipeline-root \\
        --image us-central1-docker.pkg.dev/P/person-attrs/person-attrs:v1 \\
        --param manual_dir=gs://B/raw/hvc_data.zip --param accelerator_count=2 --param replica_count=2 --wait
    python -m pipeline.kubeflow local --manual_dir my_data/ --out out/kfp --param train_config=smoke \\
        --param "train_overrides=--train.epochs=3 '--loss.weights={age: 4}'"

`compile` needs only kfp; `run` submits to Vertex AI Pipelines with google-cloud-aiplatform (the gcp extra);
`local` runs the same compiled pipeline here through kfp.local (each step a subprocess of this Python, the
train step's custom job run on this machine instead of submitted, `beam_runner` DirectRunner, no model upload).
"""

import contextlib
import glob
import json
import os
import shlex
import sys
import tempfile
import warnings

import yaml
from kfp import compiler, dsl

from pipeline import chain
from pipeline.kfp_components import EXECUTORS, make_components
from tfds_person_attrs import cli

PIPELINE_NAME = "person-attrs"
DEFAULT_IMAGE = os.environ.get("PERSON_ATTRS_IMAGE",
                               "us-central1-docker.pkg.dev/PROJECT/person-attrs/person-attrs:latest")
# Vertex AI's prebuilt TensorFlow serving image; use the newest tf2 tag it offers.
DEFAULT_SERVING_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"


class KubeflowSteps:
    """The chain's steps (pipeline/chain.py) as KFP tasks, each with its retries and resources."""

    def __init__(self, components, image, train_executor, beam_runner, project, region, temp_location,
                 training):
        self.components, self.image, self.train_executor = components, image, train_executor
        self.beam_runner, self.project, self.region, self.temp_location = beam_runner, project, region, temp_location
        self.training = training  # the custom job's machines: replica_count, machine_type, accelerator_*
        # Retries are for the cloud's transient failures (quota, preemption); kfp.local honours them too, and
        # a failure on this machine is not transient.
        self.retries = train_executor == "vertex"

    def preprocess(self, manual_dir, dataset_config):
        prep = self.components.preprocess(manual_dir=manual_dir, dataset_config=dataset_config,
                                          runner=self.beam_runner, project=self.project, region=self.region,
                                          temp_location=self.temp_location)
        # A Dataflow job is idempotent over its output dir, and a transient quota or zone error is common.
        prep.set_display_name("preprocess")
        if self.retries:
            prep.set_retry(2, backoff_duration="60s", backoff_factor=2)
        prep.set_cpu_limit("4").set_memory_limit("16G")  # the launcher (or DirectRunner itself) runs here
        return prep.outputs["data"]

    def train(self, data, config, overrides):
        train = self.components.train(data=data, config=config, overrides=overrides, image=self.image,
                                      executor=self.train_executor, project=self.project, region=self.region,
                                      job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **self.training)
        # The step only submits the custom job and waits (the GPUs are the job's). A retry submits it again
        # into the same job dir, so it resumes from the job dir's backup instead of restarting.
        train.set_display_name("train")
        if self.retries:
            train.set_retry(2, backoff_duration="120s")
        train.set_cpu_limit("2").set_memory_limit("8G")
        return train.outputs["model"]

    def evaluate(self, model, data, split):
        evaluate = self.components.evaluate(model=model, data=data, split=split)
        evaluate.set_display_name("evaluate").set_cpu_limit("4").set_memory_limit("16G")
        if self.retries:
            evaluate.set_retry(1)
        return evaluate.outputs["report"]


def build_pipeline(image: str = DEFAULT_IMAGE, train_executor: str = "vertex"):
    """The pipeline function, every step in `image`; `train_executor`: where the train step's custom job runs
    (`vertex`: submitted to Vertex AI; `local`: on the machine that runs the step, for `kfp.local`)."""
    if train_executor not in EXECUTORS:
        raise ValueError(f"train_executor {train_executor!r}: expected one of {EXECUTORS}")
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
        train_overrides: list = [],  # noqa: B006 (the parameter's declared default, never mutated)
        replica_count: int = 1,
        machine_type: str = "",
        accelerator_type: str = "NVIDIA_TESLA_T4",
        accelerator_count: int = 1,
        eval_split: str = "test",
        confusion_head: str = "",
        upload_model: bool = False,
        model_display_name: str = PIPELINE_NAME,
        serving_image: str = DEFAULT_SERVING_IMAGE,
    ):
        training = dict(replica_count=replica_count, machine_type=machine_type, accelerator_type=accelerator_type,
                        accelerator_count=accelerator_count)
        on_kubeflow = KubeflowSteps(steps, image, train_executor, beam_runner, project, region, temp_location,
                                    training)
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


def compile_pipeline(path: str, image: str = DEFAULT_IMAGE, train_executor: str = "vertex") -> str:
    compiler.Compiler().compile(pipeline_func=build_pipeline(image, train_executor), package_path=path)
    return path


def list_value(value) -> list:
    """A LIST parameter from the command line: a JSON list (`["--train.epochs=3", "--loss.weights={age: 4}"]`),
    or words split as a shell splits them (`--train.epochs=3 '--loss.weights={age: 4}'`)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{text!r}: not a JSON list ({e.msg}); or give the flags as a shell would, "
                             "quoting any that hold spaces") from None
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise ValueError(f"{text!r}: expected a JSON list of strings")
        return parsed
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e} (quote a flag holding spaces, e.g. '--loss.weights={{age: 4}}')") from None


def parameter_values(spec: dict, pairs, **given) -> dict:
    """`NAME=VALUE` strings (and keyword values) typed by the compiled spec's declared inputs."""
    declared = spec["root"]["inputDefinitions"]["parameters"]
    casts = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "LIST": list_value,
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
    typed = {}
    for name, value in values.items():
        try:
            typed[name] = casts[declared[name]["parameterType"]](value)
        except ValueError as e:
            raise ValueError(f"--param {name}: {e}") from None
    return typed


def run(args) -> str:
    """Submits the pipeline to Vertex AI Pipelines; returns the job's resource name."""
    path = args.template or compile_pipeline(os.path.join(tempfile.mkdtemp(), "pipeline.yaml"), args.image)
    with open(path) as f:
        spec = yaml.safe_load(f)
    temp = args.pipeline_root.rstrip("/") + "/dataflow-tmp"
    # Parameters are checked before the SDK is needed, so a typo is found without it too.
    params = parameter_values(spec, args.param, project=args.project, region=args.region, temp_location=temp)
    try:
        # optional: the gcp extra (google-cloud-aiplatform), needed only to submit
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


@contextlib.contextmanager
def importable_by_subprocesses():
    """The steps' bodies import this package: the Python processes kfp.local starts must find it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *([before] if before else [])])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before


def run_here(args) -> str:
    """Runs the compiled pipeline on this machine with kfp.local, every step a subprocess of this Python and the
    train step's custom job on this machine too; returns the run's folder (one folder per step inside)."""
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    path = compile_pipeline(os.path.join(out, "pipeline.yaml"), args.image, train_executor="local")
    with open(path) as f:
        spec = yaml.safe_load(f)
    params = parameter_values(spec, args.param, manual_dir=args.manual_dir, project="", beam_runner="DirectRunner")
    # heavy: kfp.local only for `local`
    from kfp import components, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=out)
    before = set(glob.glob(os.path.join(out, f"{PIPELINE_NAME}-*")))
    with importable_by_subprocesses(), warnings.catch_warnings():
        # kfp.local warns that the project image is not a Python image: its steps run in this Python instead.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        # and that it has no CPU, memory or GPU limits to set.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        components.load_component_from_file(path)(**params)
    [run_dir] = sorted(set(glob.glob(os.path.join(out, f"{PIPELINE_NAME}-*"))) - before)
    return run_dir


def step_outputs(run_dir: str) -> dict[str, dict[str, str]]:
    """{step: {output artifact: its URI}} of a kfp.local run, in the order the steps ran."""
    found = {}
    outputs = glob.glob(os.path.join(run_dir, "*", "executor_output.json"))
    for path in sorted(outputs, key=os.path.getmtime):
        with open(path) as f:
            artifacts = json.load(f).get("artifacts", {})
        found[os.path.basename(os.path.dirname(path))] = {name: a["artifacts"][0]["uri"]
                                                          for name, a in sorted(artifacts.items())}
    return found


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
    loc = sub.add_parser("local", help="run the compiled pipeline on this machine (kfp.local, no Docker needed)")
    loc.add_argument("--manual_dir", required=True, help="zip or folder with the CSV and images")
    loc.add_argument("--out", required=True, help="folder for the compiled spec and the run's artifacts")
    loc.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a pipeline parameter, e.g. train_config=smoke (beam_runner defaults to DirectRunner)")
    for p in (c, r, loc):
        p.add_argument("--image", default=DEFAULT_IMAGE, help="the project image (default: $PERSON_ATTRS_IMAGE)")
    args = parser.parse_args(argv)
    if args.cmd == "local":
        if not os.path.exists(args.manual_dir):
            parser.error(f"--manual_dir {args.manual_dir}: no such file or folder; pass the zip or folder with "
                         "the CSV and images")
        try:
            run_dir = run_here(args)
        except ValueError as e:
            parser.error(str(e))
        except RuntimeError as e:  # kfp.local: a step failed; its output is above
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"pipeline run: {run_dir}")
        for step, outputs in step_outputs(run_dir).items():
            for name, uri in outputs.items():
                print(f"  {step:<18}{name:<12}{uri}")
        return 0
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
