"""A Vertex AI job spec run on this machine, as the service runs it: `python -m trainer.vertex --local`.

    python -m trainer.vertex --local --data_dir out/data --job_dir file://$PWD/out/vjob --replica_count 2 \\
        -- --config smoke
    python -c "from trainer import vertex, vertex_local; \\
vertex_local.run_local(vertex.custom_job_spec('local', 'out/data', 'out/vjob', ['--config', 'smoke']))"

`run_local(job)` takes the very resource `trainer.vertex` submits (a CustomJob, a HyperparameterTuningJob, or a
bare CustomJobSpec) and starts every replica of every worker pool as a process of `python -m ...` from this
checkout, with the environment Vertex AI gives a replica: the container's env, CLUSTER_SPEC (pools named
workerpool0..3) on every replica, TF_CONFIG (chief / worker) when the job has more than one replica, and
AIP_MODEL_DIR / AIP_CHECKPOINT_DIR / AIP_TENSORBOARD_LOG_DIR derived from baseOutputDirectory
(`trainer.jobdir.paths.service_dirs`). Each line a replica prints is prefixed with its name; when one fails the
others are stopped (`trainer.launch.run_tasks`, the launcher's own runner).

A tuning job runs maxTrialCount trials one after another: trial i gets CLOUD_ML_TRIAL_ID=i, its parameters
appended as `--NAME=VALUE` (a Latin-hypercube sample of the study's parameters, where the service runs its
own search), its per-trial AIP_* directories (base/<i>/...), and its own CLOUD_ML_HP_METRIC_FILE, read back
afterwards (`trainer.training.hypertune.read_reported_metric`) to report every trial and the best one. What
only the service shows is listed in docs/cloud.md ("Run the cloud path on your own machine").
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile

from trainer.jobdir.paths import service_dirs, trial_job_dir
from trainer.launch import free_ports, run_tasks
from trainer.training.hypertune import read_reported_metric

# The TF_CONFIG task type Vertex AI gives the replicas of each worker pool, in pool order.
POOL_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
LABEL = "vertex --local"


def replica_tasks(job_spec: dict, trial_id: str | None = None, trial_args=(), ports: list[int] | None = None,
                  metric_file: str | None = None) -> list[dict]:
    """One {'name', 'argv', 'env'} per replica of `job_spec` (a CustomJobSpec), as `trainer.launch.run_tasks`
    starts them: the replicas' addresses are free ports of this machine instead of the service's hosts."""
    pools = job_spec["workerPoolSpecs"]
    counts = [int(pool.get("replicaCount", 1)) if pool else 0 for pool in pools]
    ports = list(ports or free_ports(sum(counts)))
    by_pool: list[list[str]] = []
    for count in counts:
        by_pool.append([f"localhost:{ports.pop(0)}" for _ in range(count)])
    pool_cluster = {f"workerpool{i}": addresses for i, addresses in enumerate(by_pool) if addresses}
    tf_cluster = {POOL_TASK_TYPES[i]: addresses for i, addresses in enumerate(by_pool) if addresses}
    base = (job_spec.get("baseOutputDirectory") or {}).get("outputUriPrefix")
    aip = service_dirs(base, trial_id) if base else {}
    trial = {"trial": trial_id} if trial_id else {}
    tasks = []
    for i, pool in enumerate(pools):
        if not counts[i]:
            continue
        container = pool.get("containerSpec")
        if not container or not container.get("command"):
            raise ValueError(f"worker pool {i} has no containerSpec.command: --local runs `command + args` of "
                             "this checkout, not an image's entry point or a pythonPackageSpec")
        container_env = {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}
        for index in range(counts[i]):
            cluster_spec = {"cluster": pool_cluster, "environment": "cloud",
                            "task": {"type": f"workerpool{i}", "index": index, **trial}, "job": job_spec}
            env = {**container_env, **aip, "CLUSTER_SPEC": json.dumps(cluster_spec)}
            if sum(counts) > 1:  # the service writes TF_CONFIG for distributed jobs
                env["TF_CONFIG"] = json.dumps({"cluster": tf_cluster, "environment": "cloud", "job": job_spec,
                                               "task": {"type": POOL_TASK_TYPES[i], "index": index, **trial}})
            if trial_id:
                env["CLOUD_ML_TRIAL_ID"] = trial_id
            if metric_file:
                env["CLOUD_ML_HP_METRIC_FILE"] = metric_file
            name = f"{POOL_TASK_TYPES[i]}:{index}"
            tasks.append({"name": f"trial {trial_id} {name}" if trial_id else name,
                          "argv": [*container["command"], *container.get("args", []), *trial_args], "env": env})
    return tasks


def sample_trials(study_spec: dict, count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` parameter sets as the `--NAME=VALUE` strings a trial gets: a Latin-hypercube sample (every
    parameter's range cut into `count` strata, one value from each, strata shuffled per parameter)."""
    rng = random.Random(seed)
    trials: list[dict[str, str]] = [{} for _ in range(count)]
    for spec in study_spec["parameters"]:
        strata = list(range(count))
        rng.shuffle(strata)
        for trial, stratum in zip(trials, strata):
            trial[spec["parameterId"]] = _value(spec, (stratum + rng.random()) / count)
    return trials


def _value(spec: dict, u: float) -> str:
    """The parameter's value at quantile `u` of its range, as the service writes it into the trial's args."""
    for key in ("discreteValueSpec", "categoricalValueSpec"):
        if key in spec:
            values = spec[key]["values"]
            v = values[min(len(values) - 1, int(u * len(values)))]
            return _number(v) if key == "discreteValueSpec" else str(v)
    bounds = spec.get("doubleValueSpec") or spec.get("integerValueSpec")
    if bounds is None:
        raise ValueError(f"parameter {spec.get('parameterId')!r}: no value spec --local can sample")
    lo, hi = float(bounds["minValue"]), float(bounds["maxValue"])
    scale = spec.get("scaleType", "UNIT_LINEAR_SCALE")
    if scale == "UNIT_LOG_SCALE" and lo > 0:
        x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    elif scale == "UNIT_REVERSE_LOG_SCALE" and lo > 0:
        x = hi + lo - math.exp(math.log(lo) + (1 - u) * (math.log(hi) - math.log(lo)))
    else:
        x = lo + u * (hi - lo)
    return str(int(round(x))) if "integerValueSpec" in spec else repr(min(hi, max(lo, x)))


def _number(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclasses.dataclass
class TrialResult:
    trial_id: str
    params: dict[str, str]
    status: int
    metric: float | None
    job_dir: str | None

    def describe(self, metric_id: str) -> str:
        value = "failed" if self.status else ("no metric reported" if self.metric is None
                                              else f"{metric_id}={self.metric:.4f}")
        args = " ".join(f"--{k}={v}" for k, v in self.params.items())
        return f"trial {self.trial_id}: {value}  {args}" + (f"  (job dir {self.job_dir})" if self.job_dir else "")


def _job_dir_arg(job_spec: dict) -> str | None:
    args = job_spec["workerPoolSpecs"][0]["containerSpec"].get("args", [])
    return args[args.index("--job_dir") + 1] if "--job_dir" in args[:-1] else None


def run_trials(tuning_job: dict, grace: float = 10.0, seed: int = 0) -> list[TrialResult]:
    """Runs a HyperparameterTuningJob's trials one after another; stops early once maxFailedTrialCount failed."""
    job_spec, study = tuning_job["trialJobSpec"], tuning_job["studySpec"]
    metric_id = study["metrics"][0]["metricId"]
    job_dir = _job_dir_arg(job_spec)
    max_failed = _max_failed(tuning_job)
    results: list[TrialResult] = []
    metric_root = tempfile.mkdtemp(prefix="hypertune-")  # each container has its own /tmp on the service
    try:
        for n, params in enumerate(sample_trials(study, int(tuning_job["maxTrialCount"]), seed), start=1):
            trial_id = str(n)
            metric_file = os.path.join(metric_root, trial_id, "output.metrics")
            args = [f"--{k}={v}" for k, v in params.items()]
            _say(f"trial {trial_id} of {tuning_job['maxTrialCount']}: {' '.join(args)}")
            status = run_tasks(replica_tasks(job_spec, trial_id, args, metric_file=metric_file), grace, label=LABEL)
            metric = read_reported_metric(metric_file, metric_id) if status == 0 else None
            results.append(TrialResult(trial_id, params, status, metric,
                                       trial_job_dir(job_dir, trial_id) if job_dir else None))
            _say(results[-1].describe(metric_id))
            if sum(1 for r in results if r.status) >= max_failed:
                _say(f"{max_failed} trial(s) failed (maxFailedTrialCount): the tuning job fails")
                break
    finally:
        shutil.rmtree(metric_root, ignore_errors=True)
    return results


def _max_failed(tuning_job: dict) -> int:
    """Failed trials that fail the tuning job (0 means: the service decides; here, a quarter of the trials)."""
    return int(tuning_job.get("maxFailedTrialCount") or max(1, int(tuning_job["maxTrialCount"]) // 4))


def best_trial(results: list[TrialResult], goal: str) -> TrialResult | None:
    scored = [r for r in results if r.status == 0 and r.metric is not None]
    if not scored:
        return None
    return (max if goal == "MAXIMIZE" else min)(scored, key=lambda r: r.metric)


def run_local(job: dict, grace: float = 10.0, seed: int = 0) -> int:
    """Runs a CustomJob / HyperparameterTuningJob resource (or a bare CustomJobSpec) here; the exit status of the
    job: 0 when every replica (every trial, for tuning) succeeded, else the first failure's status."""
    if "studySpec" in job:
        results = run_trials(job, grace, seed)
        metric = job["studySpec"]["metrics"][0]
        best = best_trial(results, metric.get("goal", "MAXIMIZE"))
        if best is None:
            _say("no trial reported its metric")
            return next((r.status for r in results if r.status), 1)
        _say(f"best {best.describe(metric['metricId'])}")
        failed = [r for r in results if r.status]
        return failed[0].status if len(failed) >= _max_failed(job) else 0
    job_spec = job.get("jobSpec", job)
    return run_tasks(replica_tasks(job_spec), grace, label=LABEL)


def _say(message: str) -> None:
    print(f"[{LABEL}] {message}", file=sys.stdout, flush=True)
