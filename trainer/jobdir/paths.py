"""Where a run writes and where readers find it: the JOB_DIR layout, the one definition of it.

    python -c "from trainer.jobdir.paths import job_paths; print(job_paths('out/job'))"
    python -c "from trainer.jobdir.paths import find_keras_model; print(find_keras_model('out/job'))"

JOB_DIR holds config.yaml, history.csv, metrics.json, model.keras, backup/, checkpoints/best.keras, logs/
(TensorBoard) and model/ (the export). Vertex AI derives AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and
AIP_TENSORBOARD_LOG_DIR from the job's baseOutputDirectory (`service_dirs`): `trainer.vertex` sets that to
--job_dir, so they are JOB_DIR/model/, JOB_DIR/checkpoints/ and JOB_DIR/logs/, the very folders of the layout.
Where they point elsewhere (a job whose base output directory is not its --job_dir) they win, and the run
records in JOB_DIR/layout.json where it wrote, so that `evaluate`, `export` and `predict` find the best
checkpoint and the export later, on any machine, without the AIP_* variables (`recorded_paths`).

A tuning trial (CLOUD_ML_TRIAL_ID set) writes JOB_DIR/<trial id>: the folder Vertex AI gives each trial as
its base output directory, so the trial's AIP_* directories are again that folder's own. A job dir nested
inside the base output directory (the label audit's folds) keeps its own folders: the service's would be
shared by all of them. Readers never look at the environment: a job dir read later is read as it was written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

import tensorflow as tf

LAYOUT_FILE = "layout.json"
# The AIP_* variable of each folder Vertex AI derives from baseOutputDirectory, and the folder's name.
SERVICE_DIRS = {"model_dir": ("AIP_MODEL_DIR", "model"), "checkpoints_dir": ("AIP_CHECKPOINT_DIR", "checkpoints"),
                "logs_dir": ("AIP_TENSORBOARD_LOG_DIR", "logs")}
BEST_KERAS = "best.keras"


@dataclasses.dataclass(frozen=True)
class JobPaths:
    job_dir: str
    config_yaml: str
    history_csv: str
    metrics_json: str
    logs_dir: str  # TensorBoard
    backup_dir: str  # fault-tolerance state (trainer.jobdir.backup), beside the job dir's lock
    checkpoints_dir: str  # best.keras
    model_dir: str  # exported SavedModel
    model_keras: str  # the final Keras model

    @property
    def best_keras(self) -> str:
        return _join(self.checkpoints_dir, BEST_KERAS)

    @property
    def layout_json(self) -> str:
        return _join(self.job_dir, LAYOUT_FILE)


def _join(*parts: str) -> str:
    # os.path.join keeps gs://bucket/x intact; tf.io.gfile and Keras file_utils read both.
    return os.path.join(*parts)


def _norm(path: str) -> str:
    return path.rstrip("/")


def service_dirs(base_output_dir: str, trial_id: str | None = None) -> dict[str, str]:
    """The AIP_* variables Vertex AI sets from a job's baseOutputDirectory (with the trailing slash it writes);
    a tuning trial's are under base/<trial id>/."""
    base = _norm(base_output_dir) + (f"/{trial_id}" if trial_id else "")
    return {var: f"{base}/{name}/" for var, name in SERVICE_DIRS.values()}


def tuning_trial(environ: Mapping[str, str] | None = None) -> str | None:
    """The id of the Vertex AI tuning trial this process runs, or None outside a tuning job."""
    env = os.environ if environ is None else environ
    return env.get("CLOUD_ML_TRIAL_ID") or None


def trial_job_dir(job_dir: str, trial_id: str) -> str:
    """A tuning trial's own job dir: the folder Vertex AI makes the trial's base output directory."""
    return f"{_norm(job_dir)}/{trial_id}"


def _default(job_dir: str) -> JobPaths:
    return JobPaths(
        job_dir=job_dir,
        config_yaml=_join(job_dir, "config.yaml"),
        history_csv=_join(job_dir, "history.csv"),
        metrics_json=_join(job_dir, "metrics.json"),
        logs_dir=_join(job_dir, "logs"),
        backup_dir=_join(job_dir, "backup"),
        checkpoints_dir=_join(job_dir, "checkpoints"),
        model_dir=_join(job_dir, "model"),
        model_keras=_join(job_dir, "model.keras"),
    )


def job_paths(job_dir: str, environ: Mapping[str, str] | None = None) -> JobPaths:
    """Where a run of `job_dir` writes, under `environ` (default: this process's): see the module docstring."""
    if not job_dir:
        raise ValueError("train.job_dir is empty: pass --job_dir DIR (local or gs://)")
    job_dir = _norm(job_dir)
    env = os.environ if environ is None else environ
    trial = tuning_trial(env)
    if trial:
        # A Vertex AI tuning job gives every trial the same args: parallel trials must not share a job dir.
        job_dir = trial_job_dir(job_dir, trial)
    paths = _default(job_dir)
    overrides = {}
    for field, (var, _) in SERVICE_DIRS.items():
        given = _norm(env.get(var) or "")
        if given and given != _norm(getattr(paths, field)) and not _inside(job_dir, os.path.dirname(given)):
            overrides[field] = given
    return dataclasses.replace(paths, **overrides)


def _inside(path: str, folder: str) -> bool:
    """True when `path` lies strictly inside `folder`."""
    return _norm(path).startswith(_norm(folder) + "/")


def layout_record(paths: JobPaths) -> str:
    """JOB_DIR/layout.json's text: each service folder relative to the job dir when inside it (so the job dir can
    be copied elsewhere), else as written."""
    def rel(path: str) -> str:
        return os.path.relpath(path, paths.job_dir) if _inside(path, paths.job_dir) else path

    return json.dumps({field: rel(getattr(paths, field)) for field in SERVICE_DIRS}, indent=2)


def recorded_paths(job_dir: str) -> tuple[JobPaths, str]:
    """(paths, how they were found) of a finished or running job dir, from its layout.json; the default layout for
    job dirs written before layout.json existed. Never reads the environment."""
    job_dir = _norm(job_dir)
    paths, record = _default(job_dir), _join(job_dir, LAYOUT_FILE)
    if not tf.io.gfile.exists(record):
        return paths, "the default job-dir layout (no layout.json)"
    with tf.io.gfile.GFile(record) as f:
        written = json.loads(f.read())
    found = {field: (value if "://" in value or os.path.isabs(value) else _join(job_dir, value))
             for field, value in written.items() if field in SERVICE_DIRS and value}
    return dataclasses.replace(paths, **found), f"as {record} records"


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    path: str  # the .keras file to load
    job_dir: str  # the job dir it belongs to (config.yaml, thresholds.json, the export)
    why: str  # one line: why this file

    def __str__(self) -> str:
        return f"loaded {self.path} ({self.why})"


def find_keras_model(path: str) -> ModelChoice | None:
    """The Keras model a job dir (or a .keras file in one) stands for: the best epoch's checkpoint wherever the run
    wrote it, else the last epoch's model.keras; None if the job dir holds neither."""
    path = _norm(path)
    if path.endswith(".keras"):
        job_dir = os.path.dirname(path)
        if os.path.basename(job_dir) == "checkpoints" and not tf.io.gfile.exists(_join(job_dir, "config.yaml")):
            job_dir = os.path.dirname(job_dir)
        return ModelChoice(path, job_dir, "the file --model names")
    paths, how = recorded_paths(path)
    if tf.io.gfile.exists(paths.best_keras):
        return ModelChoice(paths.best_keras, path, f"the best epoch's checkpoint, {how}")
    if tf.io.gfile.exists(paths.model_keras):
        return ModelChoice(paths.model_keras, path, f"the last epoch's model: no {paths.best_keras}, {how}")
    return None
