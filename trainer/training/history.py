"""The run's record: one row of logs per completed epoch, committed with the backup and rendered as history.csv.

    python -c "from trainer.jobdir.backup import read_state; from trainer.training.history import csv_text; \
print(csv_text(read_state('out/job/backup').history))"

`Recorder`, the last callback of a run, commits after each epoch (once every other callback has added its keys
to the logs) a backup (trainer.jobdir.backup) holding the rows of every completed epoch, then rewrites history.csv
from those rows (whole, atomically); with `every_steps` it also commits mid-epoch backups. A resumed
run starts from the committed rows and re-renders the CSV, so a kill at any moment never drops or repeats an
epoch, and metrics.json counts every epoch of the run, not only those of the last process.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

import keras

from trainer.jobdir import atomic, backup


def csv_text(rows) -> str:
    """`epoch` first, then every key any row has, sorted (the columns of Keras' CSVLogger)."""
    keys = sorted({k for r in rows for k in r} - {"epoch"})
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=["epoch", *keys], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def best(rows, monitor: str) -> float | None:
    values = [float(r[monitor]) for r in rows if r.get(monitor) is not None and math.isfinite(float(r[monitor]))]
    return max(values) if values else None


class Recorder(keras.callbacks.Callback):
    """Commits progress: a mid-epoch backup every `every_steps` steps (0 = none), and every completed epoch.
    `mixing`: the run's LabelMixing (its random states go into the backup too). `backup_now()` commits the
    current step from anywhere (e.g. a callback that saves before the process is stopped)."""

    def __init__(self, paths, state: backup.RunState, every_steps: int = 0, mixing=None):
        super().__init__()
        self.paths, self.state, self.every_steps, self.mixing = paths, state, every_steps, mixing
        # The loss was seen finite for the weights of steps < finite_through; the state a run resumes from is
        # kept whatever happens next (a changed config that diverges at once must not cost the backup).
        self.finite_through = state.step + 1 if state.step else 0

    @property
    def rows(self) -> tuple[dict, ...]:
        return self.state.history

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        self.finite_through = step  # (the non-finite guard, an earlier callback, passed this step's loss)
        if self.every_steps and step % self.every_steps == 0:
            self.backup_now()

    def backup_now(self) -> backup.RunState:
        """Commits the current step (mid-epoch: the completed epochs' rows stay as they are; also on SIGTERM,
        trainer.training.shutdown)."""
        self.state = backup.save(self.model, self.paths.backup_dir,
                                 dataclasses.replace(self.state, step=self._step()), self.mixing)
        return self.state

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        state = dataclasses.replace(self.state, epoch=epoch + 1, step=self._step(), history=(*self.rows, row))
        self.state = backup.save(self.model, self.paths.backup_dir, state, self.mixing)
        self.finite_through = self.state.step + 1  # validated too: these weights' loss is finite
        self.write_csv()

    def keep_finite(self) -> backup.RunState | None:
        """After a non-finite loss: the backup goes back to the last commit whose weights' loss was seen finite
        (the newest may hold weights that had already diverged); returns it, None when there is none."""
        self.state = backup.roll_back(self.paths.backup_dir, self.finite_through) or self.state
        return backup.read_state(self.paths.backup_dir)

    def write_csv(self) -> None:
        atomic.write_text(self.paths.history_csv, csv_text(self.rows))
