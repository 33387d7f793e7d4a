"""What a training run tells a Vertex AI hyperparameter tuning study: its metric, at the end of the run.

    CLOUD_ML_HP_METRIC_FILE=/tmp/hp.metrics python -c "from trainer.training import hypertune; \
hypertune.report_hyperparameter_tuning_metric('val_mean_balanced_accuracy', 0.7)"

The trainer calls it at the end of a run when it is a tuning trial (`trainer.jobdir.paths.tuning_trial()`); the study
itself is submitted by `trainer.vertex --tuning`, or run here by `trainer.vertex --local --tuning`, which reads
each trial's file back with `read_reported_metric`.
"""

from __future__ import annotations

import collections
import json
import os
import time

from trainer.jobdir.paths import tuning_trial


def report_hyperparameter_tuning_metric(tag: str, value: float, step: int | None = None, path: str | None = None):
    """Reports a metric to Vertex AI's tuning service, in the `cloudml-hypertune` package's format.

    The service reads JSON lines from $CLOUD_ML_HP_METRIC_FILE (default /tmp/hypertune/output.metrics); like
    the package, the file keeps the last 100 reports. `tag` must equal the tuning job's `--metric`.
        report_hyperparameter_tuning_metric("val_mean_balanced_accuracy", 0.71, step=3000)
    """
    path = path or os.environ.get("CLOUD_ML_HP_METRIC_FILE", "/tmp/hypertune/output.metrics")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    entries = collections.deque(maxlen=100)
    if os.path.exists(path):
        with open(path) as f:
            entries.extend(line for line in f.read().splitlines() if line.strip())
    body = {"timestamp": time.time(), "trial": tuning_trial() or "0",
            tag: str(float(value)), "global_step": str(int(step) if step else 0)}
    entries.append(json.dumps(body, sort_keys=True))
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in entries))


def read_reported_metric(path: str, tag: str) -> float | None:
    """What a trial reported last under `tag` in a metric file written by `report_hyperparameter_tuning_metric`
    (the value the tuning service takes as the trial's final measurement); None if it reported nothing."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        reports = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    values = [float(r[tag]) for r in reports if tag in r]
    return values[-1] if values else None
