"""Command line for a training run, the same locally and as a Vertex AI custom job.

    python -m trainer.task --data_dir out/data --job_dir out/job --config smoke
    python -m trainer.task --data_dir gs://b/data --job_dir gs://b/jobs/run1 --config hvc --train.epochs=60
    python -m trainer.task --config my.yaml --model.width=8 --distribute.mixed_precision=mixed_bfloat16

On several GPUs it mirrors over all of them; with TF_CONFIG (multi-worker) it uses MultiWorkerMirroredStrategy.
Restarting the same command after a crash resumes from JOB_DIR/backup.
"""

from __future__ import annotations

import json
import logging
import sys

from trainer.config import ConfigError, load_config


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        config = load_config(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # Imported after parsing so that a bad flag fails in a second, not after TensorFlow's start-up.
    from trainer import distribute
    from trainer.train import run

    result = run(config, strategy=distribute.make_strategy(config))
    print(json.dumps(result["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
