"""Command line for a training run, the same locally, on every task of a cluster and as a Vertex AI job.

    python -m trainer.task --data_dir out/data --job_dir out/job --config smoke
    python -m trainer.task --data_dir gs://b/data --job_dir gs://b/jobs/run1 --config hvc --train.epochs=60
    python -m trainer.task --config my.yaml --model.width=8 --distribute.mixed_precision=mixed_bfloat16
    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job --distribute.cpu_devices=2
    python -m trainer.task --config demo --data_dir out/data --job_dir out/c --data.exclude_ids=out/a/label_issues.csv
    python -m trainer.launch --workers 2 -- --config smoke --data_dir out/data --job_dir out/job

On several GPUs it mirrors over all of them; with TF_CONFIG (what Vertex AI and trainer.launch set on every
task) it uses MultiWorkerMirroredStrategy, every task running this same command with the same --job_dir.
Restarting the same command(s) after a crash resumes from JOB_DIR/backup.

Exit status: 0 done; 2 bad input (config, TF_CONFIG, port in use, job dir in use, config changed since the
backup, a task of TF_CONFIG that never started); 1 the run failed (non-finite loss or weights, a lost worker);
143 stopped by SIGTERM (after a backup: the same command again resumes). Each error is one line on stderr;
`--verbose` shows every library log line and tracebacks. Progress (the epoch lines) goes to stderr; stdout gets
the result alone, one `done: ...` line (from the chief). The run's numbers are in JOB_DIR/metrics.json and
history.csv.
"""

from __future__ import annotations

import sys

from tfds_person_attrs import cli
from trainer.config_loader import answered_help_or_config, load_config
from trainer.jobdir.backup import NonFiniteWeightsError
from trainer.training import cluster, shutdown
from trainer.training.callbacks import NonFiniteLossError
from trainer.training.train import PeerLostError, run


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if answered_help_or_config(argv, __doc__):
        return 0
    config = load_config(argv)
    cli.check_folder_path(config.train.job_dir, "--job_dir")
    task = cluster.from_env()
    cluster.check_port_free(task)

    try:
        result = run(config)
    except (NonFiniteLossError, NonFiniteWeightsError, PeerLostError) as e:  # the run failed, not its input
        print(f"error: {e}", file=sys.stderr)
        return 1
    except shutdown.Stopped as e:  # SIGTERM: Vertex AI preempted or cancelled the job
        print(f"error: {e}", file=sys.stderr)
        return shutdown.EXIT_CODE
    if task.is_chief:
        best = result["metrics"].get("best_val_mean_balanced_accuracy")
        # the run's result on stdout; its progress (the epoch lines) and diagnostics were logged to stderr
        print(f"done: model, metrics.json and history.csv in {result['job_dir']}"
              + (f" (best val mean balanced accuracy / mA {best:.3f})" if best is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
