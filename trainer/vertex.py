"""Vertex AI custom training: one command for 1 GPU, many GPUs, many machines, or a tuning study.

Builds the Vertex AI REST `CustomJob` (or `HyperparameterTuningJob`) resource as a plain dict, so that
`--dry_run` needs no SDK; submitting imports google-cloud-aiplatform (the `gcp` extra) only then.

    python -m trainer.vertex --image IMG --data_dir gs://B/data --job_dir gs://B/jobs/run1 \\
        --accelerator_type NVIDIA_TESLA_T4 --accelerator_count 4 --replica_count 2 --dry_run \\
        -- --config hvc --train.epochs=30

Everything after `--` goes to `python -m trainer.task` unchanged. `--replica_count N` is the number of machines:
pool 0 is the chief, pool 1 holds the other N-1 workers, and Vertex AI writes TF_CONFIG on each so the trainer
picks MultiWorkerMirroredStrategy. `--tuning --param train.max_lr=double:0.05:1:log ...` wraps the same job in
a tuning study whose trials report through `trainer.training.hypertune`.

`--local` runs the same spec on this machine instead of submitting it (`trainer.vertex_local`: every replica a
process with the environment the service gives it; `--tuning` runs the trials and reports the best):

    python -m trainer.vertex --local --data_dir out/data --job_dir file://$PWD/out/vjob --replica_count 2 \
        -- --config smoke
"""

from __future__ import annotations

import copy
import json
import sys
import time

from tfds_person_attrs import cli
from trainer import vertex_local
from trainer.objective.log_keys import MONITOR

TRAINER_COMMAND = ["python", "-m", "trainer.task"]
_JOB_KINDS = {"custom": "CustomJob", "tuning": "HyperparameterTuningJob"}
# Machine families whose GPU count is fixed by the machine type; n1 takes any T4/V100/P100 count.
_DEFAULT_MACHINES = {
    "NVIDIA_TESLA_A100": "a2-highgpu-{n}g",
    "NVIDIA_A100_80GB": "a2-ultragpu-{n}g",
    "NVIDIA_H100_80GB": "a3-highgpu-{n}g",
    "NVIDIA_L4": "g2-standard-{cpus}",
}
_SCALES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE", "reverse_log": "UNIT_REVERSE_LOG_SCALE"}


def default_machine_type(accelerator_type: str | None, accelerator_count: int) -> str:
    """A machine type that can hold `accelerator_count` GPUs of that type."""
    pattern = _DEFAULT_MACHINES.get(accelerator_type or "")
    if pattern:
        return pattern.format(n=accelerator_count, cpus=12 * accelerator_count if accelerator_count > 1 else 8)
    # n1-standard-8 per GPU gives the input pipeline enough cores to keep up with JPEG decoding.
    return f"n1-standard-{min(96, 8 * max(1, accelerator_count))}"


def worker_pool_specs(image, args, machine_type, accelerator_type=None, accelerator_count=0, replica_count=1,
                      env=None, boot_disk_gb=100):
    """The chief pool, plus a worker pool of `replica_count - 1` identical machines when multi-worker."""
    machine = {"machineType": machine_type}
    if accelerator_type and accelerator_count:
        machine.update(acceleratorType=accelerator_type, acceleratorCount=int(accelerator_count))
    container = {"imageUri": image, "command": list(TRAINER_COMMAND), "args": list(args)}
    if env:
        container["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    pool = {"machineSpec": machine, "containerSpec": container,
            "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": boot_disk_gb}}
    # replicaCount is int64, which the REST API's JSON mapping writes as a string.
    pools = [dict(copy.deepcopy(pool), replicaCount="1")]
    if replica_count > 1:
        pools.append(dict(copy.deepcopy(pool), replicaCount=str(replica_count - 1)))
    return pools


def cluster_tasks(job_spec: dict) -> list[dict]:
    """The tasks a CustomJob spec starts, as TF_CONFIG will name them: [{'name': 'chief:0', 'argv': [...]}, ...]."""
    out = []
    for kind, pool in zip(vertex_local.POOL_TASK_TYPES, job_spec["workerPoolSpecs"]):
        container = pool["containerSpec"]
        out += [{"name": f"{kind}:{i}", "argv": [*container["command"], *container["args"]]}
                for i in range(int(pool["replicaCount"]))]
    return out


def custom_job_spec(image, data_dir, job_dir, trainer_args=(), display_name=None, machine_type=None,
                    accelerator_type=None, accelerator_count=0, replica_count=1, env=None, service_account=None,
                    spot=False, timeout_hours=None):
    """The REST `CustomJob` resource running `python -m trainer.task --data_dir D --job_dir J ARGS`."""
    if replica_count < 1:
        raise ValueError("--replica_count must be at least 1")
    if accelerator_count and not accelerator_type:
        raise ValueError("--accelerator_count needs --accelerator_type (e.g. NVIDIA_TESLA_T4)")
    args = ["--data_dir", data_dir, "--job_dir", job_dir, *trainer_args]
    env = {"PYTHONUNBUFFERED": "1", **(env or {})}  # logs reach Cloud Logging as they are printed
    machine_type = machine_type or default_machine_type(accelerator_type, accelerator_count)
    job_spec = {
        "workerPoolSpecs": worker_pool_specs(image, args, machine_type, accelerator_type, accelerator_count,
                                             replica_count, env),
        # Vertex derives AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR from this (per trial
        # when tuning); the trainer lets them win over its defaults.
        "baseOutputDirectory": {"outputUriPrefix": job_dir},
    }
    scheduling = {}
    if replica_count > 1:
        # A lost worker breaks MultiWorkerMirroredStrategy's collectives: restart all, resume from JOB_DIR/backup.
        scheduling["restartJobOnWorkerRestart"] = True
    if spot:
        scheduling["strategy"] = "SPOT"
    if timeout_hours:
        scheduling["timeout"] = f"{int(timeout_hours * 3600)}s"
    if scheduling:
        job_spec["scheduling"] = scheduling
    if service_account:
        job_spec["serviceAccount"] = service_account
    name = display_name or f"person-attrs-train-{time.strftime('%Y%m%d-%H%M%S')}"
    return {"displayName": name, "jobSpec": job_spec}


def parse_param(text: str) -> dict:
    """`NAME=double:MIN:MAX[:log]`, `NAME=int:MIN:MAX[:log]`, `NAME=discrete:1,2,4`, `NAME=categorical:a,b`
    -> a StudySpec ParameterSpec. The trial gets `--NAME=VALUE` appended to its args, so NAME is the trainer's
    own dotted override (`train.max_lr`)."""
    name, sep, rest = text.partition("=")
    kind, _, values = rest.partition(":")
    if not sep or not name or not values:
        raise ValueError(f"bad --param {text!r}: expected NAME=KIND:VALUES, e.g. train.max_lr=double:0.05:1:log")
    spec = {"parameterId": name}
    if kind in ("double", "int"):
        lo, hi, *scale = values.split(":")
        if kind == "double":
            spec["doubleValueSpec"] = {"minValue": float(lo), "maxValue": float(hi)}
        else:  # int64 bounds, strings in the JSON mapping
            spec["integerValueSpec"] = {"minValue": str(int(lo)), "maxValue": str(int(hi))}
        spec["scaleType"] = _SCALES[scale[0] if scale else "linear"]
    elif kind == "discrete":
        spec["discreteValueSpec"] = {"values": [float(v) for v in values.split(",")]}
    elif kind == "categorical":
        spec["categoricalValueSpec"] = {"values": values.split(",")}
    else:
        raise ValueError(f"bad --param {text!r}: kind must be double, int, discrete or categorical")
    return spec


def tuning_job_spec(custom_job, metric, goal, params, max_trials=8, parallel_trials=2, max_failed_trials=None):
    """The REST `HyperparameterTuningJob` resource wrapping `custom_job`'s jobSpec."""
    if not params:
        raise ValueError("a tuning job needs at least one --param")
    return {
        "displayName": custom_job["displayName"].replace("-train-", "-tune-"),
        "studySpec": {
            "metrics": [{"metricId": metric, "goal": goal}],
            "parameters": [parse_param(p) if isinstance(p, str) else p for p in params],
        },
        "maxTrialCount": max_trials,
        "parallelTrialCount": parallel_trials,
        "maxFailedTrialCount": max_failed_trials if max_failed_trials is not None else max(1, max_trials // 4),
        "trialJobSpec": custom_job["jobSpec"],
    }


def run_local(job: dict, grace: float = 10.0, seed: int = 0) -> int:
    """Runs a spec made here (CustomJob, HyperparameterTuningJob, or a bare CustomJobSpec) on this machine as the
    service would: see trainer.vertex_local. Returns the job's exit status (0: every replica succeeded)."""
    return vertex_local.run_local(job, grace, seed)


def to_proto(spec: dict, kind: str = "custom"):
    """The SDK message for a spec; parsing rejects any field name or enum value the API does not have."""
    try:
        # optional: the gcp extra (google-cloud-aiplatform), needed only to submit
        from google.cloud import aiplatform_v1
    except ImportError as e:
        raise SystemExit("google-cloud-aiplatform is not installed; install the gcp extra: "
                         "pip install -c constraints.txt '.[gcp]'  (or use --dry_run)") from e
    return getattr(aiplatform_v1, _JOB_KINDS[kind]).from_json(json.dumps(spec))


def submit(spec: dict, kind: str, project: str, region: str, wait: bool = False):
    """Creates the job on Vertex AI; with `wait`, polls until it ends and fails unless it succeeded."""
    job = to_proto(spec, kind)
    # optional: the gcp extra (google-cloud-aiplatform), needed only to submit
    from google.cloud import aiplatform_v1

    client = aiplatform_v1.JobServiceClient(client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"})
    parent = f"projects/{project}/locations/{region}"
    if kind == "custom":
        created, get = client.create_custom_job(parent=parent, custom_job=job), client.get_custom_job
    else:
        created = client.create_hyperparameter_tuning_job(parent=parent, hyperparameter_tuning_job=job)
        get = client.get_hyperparameter_tuning_job
    print(f"submitted {created.name}\n  https://console.cloud.google.com/vertex-ai/locations/{region}/training/"
          f"{created.name.rsplit('/', 1)[-1]}?project={project}", flush=True)
    done = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
    while wait and (state := get(name=created.name).state.name) not in done:
        time.sleep(60)
    if wait and state != "JOB_STATE_SUCCEEDED":
        raise SystemExit(f"{created.name} ended in {state}")
    return created.name


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = cli.ArgumentParser(prog="python -m trainer.vertex", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", help="the project image, e.g. REGION-docker.pkg.dev/P/REPO/person-attrs:TAG "
                   "(required unless --local)")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--job_dir", required=True, help="gs:// base output directory of the job")
    p.add_argument("--project")
    p.add_argument("--region", default="us-central1")
    p.add_argument("--display_name")
    p.add_argument("--machine_type", help="default: one that fits the GPUs")
    p.add_argument("--accelerator_type", help="e.g. NVIDIA_TESLA_T4, NVIDIA_L4, NVIDIA_TESLA_A100")
    p.add_argument("--accelerator_count", type=int, default=0, help="GPUs per machine")
    p.add_argument("--replica_count", type=cli.positive_int, default=1, help="machines; > 1 is multi-worker")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--service_account")
    p.add_argument("--spot", action="store_true", help="Spot VMs: cheaper, may be preempted (training resumes)")
    p.add_argument("--timeout_hours", type=float)
    p.add_argument("--dry_run", action="store_true", help="print the job resource as JSON, submit nothing")
    p.add_argument("--wait", action="store_true", help="block until the job ends; non-zero exit unless it succeeded")
    p.add_argument("--local", action="store_true",
                   help="run the job spec on this machine: every replica a process of this checkout, with the "
                   "environment Vertex AI gives it (trainer.vertex_local)")
    t = p.add_argument_group("hyperparameter tuning")
    t.add_argument("--tuning", action="store_true", help="submit (or print) a HyperparameterTuningJob")
    t.add_argument("--metric", default=MONITOR, help="the tag the trainer reports")
    t.add_argument("--goal", default="MAXIMIZE", choices=["MAXIMIZE", "MINIMIZE"])
    t.add_argument("--param", action="append", default=[],
                   help="NAME=double:MIN:MAX[:log] | int:.. | discrete:.. | categorical:..")
    t.add_argument("--max_trials", type=cli.positive_int, default=8)
    t.add_argument("--parallel_trials", type=cli.positive_int, default=2)
    a = p.parse_args(argv)
    if not a.image and not a.local:
        p.error("--image is required (or pass --local to run the job on this machine)")
    bad_env = [e for e in a.env if "=" not in e or e.startswith("=")]
    if bad_env:
        p.error(f"--env {bad_env[0]!r}: expected NAME=VALUE")
    env = dict(e.split("=", 1) for e in a.env)
    try:
        spec = custom_job_spec(a.image or "local", a.data_dir, a.job_dir, trainer_args, a.display_name, a.machine_type,
                               a.accelerator_type, a.accelerator_count, a.replica_count, env, a.service_account,
                               a.spot, a.timeout_hours)
        kind = "tuning" if a.tuning else "custom"
        if a.tuning:
            spec = tuning_job_spec(spec, a.metric, a.goal, a.param, a.max_trials, a.parallel_trials)
    except (ValueError, KeyError) as e:
        p.error(str(e))
    if a.dry_run:
        print(json.dumps(spec, indent=2))
        return 0
    if a.local:
        return run_local(spec)
    if not a.project:
        p.error("--project is required to submit (or pass --dry_run)")
    submit(spec, kind, a.project, a.region, wait=a.wait)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
