"""Where a run writes: JOB_DIR layout, with Vertex AI's AIP_* and CLOUD_ML_TRIAL_ID read here and nowhere else.

    python -c "from trainer.jobdir.paths import job_paths; print(job_paths('out/job'))"

On Vertex AI custom training, AIP_MODEL_DIR (exported model), AIP_CHECKPOINT_DIR (backups, checkpoints) and
AIP_TENSORBOARD_LOG_DIR (TensorBoard) are set by the service and win over the JOB_DIR defaults, so the same
command works locally and as a Vertex job. Inside a tuning job (CLOUD_ML_TRIAL_ID set) each trial gets
JOB_DIR/trial_<id>.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class JobPaths:
    job_dir: str
    config_yaml: str
    history_csv: str
    metrics_json: str
    logs_dir: str  # TensorBoard
    backup_dir: str  # fault-tolerance state (trainer.jobdir.backup)
    checkpoints_dir: str  # best.keras
    model_dir: str  # exported SavedModel
    model_keras: str  # the final Keras model

    @property
    def best_keras(self) -> str:
        return _join(self.checkpoints_dir, "best.keras")


def _join(*parts: str) -> str:
    # os.path.join keeps gs://bucket/x intact; tf.io.gfile and Keras file_utils read both.
    return os.path.join(*parts)


def tuning_trial(environ: Mapping[str, str] | None = None) -> str | None:
    """The id of the Vertex AI tuning trial this process runs, or None outside a tuning job."""
    env = os.environ if environ is None else environ
    return env.get("CLOUD_ML_TRIAL_ID") or None


def job_paths(job_dir: str, environ: Mapping[str, str] | None = None) -> JobPaths:
    if not job_dir:
        raise ValueError("train.job_dir is empty: pass --job_dir DIR (local or gs://)")
    env = os.environ if environ is None else environ
    trial = tuning_trial(env)
    if trial:
        # A Vertex AI tuning job gives every trial the same args: parallel trials must not share a job dir.
        job_dir = f"{job_dir.rstrip('/')}/trial_{trial}"
    ckpt = env.get("AIP_CHECKPOINT_DIR") or ""
    return JobPaths(
        job_dir=job_dir,
        config_yaml=_join(job_dir, "config.yaml"),
        history_csv=_join(job_dir, "history.csv"),
        metrics_json=_join(job_dir, "metrics.json"),
        logs_dir=env.get("AIP_TENSORBOARD_LOG_DIR") or _join(job_dir, "logs"),
        backup_dir=_join(ckpt, "backup") if ckpt else _join(job_dir, "backup"),
        checkpoints_dir=_join(ckpt, "checkpoints") if ckpt else _join(job_dir, "checkpoints"),
        model_dir=env.get("AIP_MODEL_DIR") or _join(job_dir, "model"),
        model_keras=_join(job_dir, "model.keras"),
    )
