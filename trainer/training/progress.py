"""How `fit` reports progress: Keras progress bars on a terminal, one plain line per epoch anywhere else.

    python -m trainer.task --data_dir out/data --job_dir out/run --config demo > train.log   # one line per epoch

A progress bar redraws itself with carriage returns, which a log file, CI or Vertex AI's log viewer keep as one
ever-growing line (an epoch of 241 steps made a line of over 100 kB). `train.verbose` picks: `auto` (a bar when
stdout is a terminal, else `EpochLine`), or Keras' own `0` (silent), `1` (bar) or `2` (Keras' epoch line, with
every metric of every head).
"""

from __future__ import annotations

import logging
import math
import sys
import time

import keras

from trainer.objective.log_keys import LR, MONITOR
from trainer.objective.metrics import MEAN_ACCURACY, MEAN_BALANCED_ACCURACY, VAL

log = logging.getLogger(__name__)


class EpochLine(keras.callbacks.Callback):
    """Logs one short line per epoch: losses, mean balanced accuracy (mean over heads of balanced accuracy / mA)
    and mean accuracy (single-label heads), learning rate, seconds, and '(best)' on a new best of the monitor.

    Per-head numbers are in history.csv and TensorBoard; a line people read in a log stays short.
    """

    KEYS = (("loss", "loss {:.3f}"), (MEAN_BALANCED_ACCURACY, "mean bal {:.3f}"), (VAL + "loss", "val loss {:.3f}"),
            (VAL + MEAN_BALANCED_ACCURACY, "val mean bal {:.3f}"), (VAL + MEAN_ACCURACY, "val mean acc {:.3f}"),
            (LR, "lr {:.3g}"))

    def __init__(self, monitor: str = MONITOR):
        super().__init__()
        self.monitor, self.best, self._start = monitor, -math.inf, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.params.get('epochs', '?')}"]
        parts += [fmt.format(float(logs[key])) for key, fmt in self.KEYS if key in logs]
        parts.append(f"{time.time() - self._start:.0f} s")
        value = logs.get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            parts.append("(best)")
        log.info("  ".join(parts))


def fit_verbosity(setting: str, stream=None) -> tuple[int, list[keras.callbacks.Callback]]:
    """(Keras `verbose`, extra callbacks) for a `train.verbose` setting; `auto` looks at whether stdout is a tty."""
    if setting != "auto":
        return int(setting), []
    stream = stream or sys.stdout
    if hasattr(stream, "isatty") and stream.isatty():
        return 1, []
    return 0, [EpochLine()]
