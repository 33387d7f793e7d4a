"""Command line for a training run, the same locally and as a Vertex AI custom job.

    python -m trainer.task --data_dir out/data --job_dir out/job --config smoke
    python -m trainer.task --data_dir gs://b/data --job_dir gs://b/jobs/run1 --config hvc --train.epochs=60
    python -m trainer.task --config my.yaml --model.width=8 --distribute.mixed_precision=mixed_bfloat16

On several GPUs it mirrors over all of them; with TF_CONFIG (multi-worker) it uses MultiWorkerMirroredStrategy.
Restarting the same command after a crash resumes from JOB_DIR/backup. `--verbose` shows every library log
line; the run's numbers are in JOB_DIR/metrics.json and history.csv.
"""

from __future__ import annotations

import logging
import sys

from trainer import cli
from trainer.config import load_config

log = logging.getLogger(__name__)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    config = load_config(argv)
    # Imported after parsing so that a bad flag fails in a second, not after TensorFlow's start-up.
    from trainer import distribute
    from trainer.data import dataset_info
    from trainer.train import run

    dataset_info(config.data)  # a missing dataset fails here, in one line, before any strategy starts

    result = run(config, strategy=distribute.make_strategy(config))
    best = result["metrics"].get("best_val_mean_accuracy")
    log.info("done: model, metrics.json and history.csv in %s%s", result["job_dir"],
             f" (best val mean accuracy {best:.3f})" if best is not None else "")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
