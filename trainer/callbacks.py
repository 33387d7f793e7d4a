"""The run's callbacks: mean accuracy, LR/momentum logging, NaN guard, backups, best model, CSV, TensorBoard.

    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job   # uses all of them

Order matters: callbacks that add keys to the epoch logs (MeanAccuracy, LogSchedule) come before the ones
that read them (ModelCheckpoint monitors val_mean_accuracy; CSVLogger fixes its columns at the first epoch).
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math

import keras
import numpy as np
import tensorflow as tf

from trainer.metrics import MeanAccuracy

log = logging.getLogger(__name__)
MONITOR = "val_mean_accuracy"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class RaiseOnNonFinite(keras.callbacks.Callback):
    """Like TerminateOnNaN, but fails the run (non-zero exit) instead of stopping it quietly as if it finished."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            raise NonFiniteLossError(
                f"non-finite training loss ({float(np.asarray(loss))}) at batch {batch} (global step {step}). "
                "Lower optim.max_lr, set optim.clipnorm, or use mixed_bfloat16 instead of mixed_float16; the "
                "last backup (JOB_DIR/backup) is kept so a fixed run can resume from it.")


def _sgd(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)  # unwrap LossScaleOptimizer (mixed_float16)


class LogSchedule(keras.callbacks.Callback):
    """Adds `lr` and `momentum` (the values for the next step) to each epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        opt = _sgd(self.model.optimizer)
        step = opt.iterations
        schedule = opt._learning_rate
        lr = schedule(step) if callable(schedule) else schedule
        logs["lr"] = float(keras.ops.convert_to_numpy(lr))
        if hasattr(opt, "current_momentum"):
            logs["momentum"] = float(keras.ops.convert_to_numpy(opt.current_momentum()))


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore every epoch AND every N steps (Keras offers one or the other).

    The backup holds the weights and the optimizer state, step counter included, so the LR and momentum
    (functions of that step) continue exactly. A run restored from a mid-epoch backup restarts that epoch from
    its first batch with the step counter where it was; the extra steps run at the schedule's final value.
    """

    def __init__(self, backup_dir: str, every_steps: int = 0):
        super().__init__(backup_dir, save_freq=every_steps if every_steps > 0 else "epoch")

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()
            self._batches_seen_since_last_saving = 0


def best_so_far(history_csv: str, monitor: str = MONITOR) -> float | None:
    """The best monitored value in an earlier, interrupted run's CSV, so a resumed run keeps a better best."""
    if not tf.io.gfile.exists(history_csv):
        return None
    with tf.io.gfile.GFile(history_csv) as f:
        values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor) not in (None, "")]
    return max(values) if values else None


def make_callbacks(paths, schema, backup_every_steps: int = 0, chief: bool = True, resuming: bool = False):
    cbs = [MeanAccuracy(schema), LogSchedule(), RaiseOnNonFinite(), Backup(paths.backup_dir, backup_every_steps)]
    if not chief:  # workers other than the chief only keep their backup state
        return cbs
    threshold = best_so_far(paths.history_csv) if resuming else None
    cbs += [
        keras.callbacks.ModelCheckpoint(paths.best_keras, monitor=MONITOR, mode="max", save_best_only=True,
                                        initial_value_threshold=threshold),
        keras.callbacks.CSVLogger(paths.history_csv, append=resuming),
    ]
    # tf.summary needs the tensorboard package, which TensorFlow no longer pulls in itself.
    if importlib.util.find_spec("tensorboard") is None:
        log.warning("the tensorboard package is not installed: no TensorBoard logs in %s "
                    "(pip install tensorboard)", paths.logs_dir)
    else:
        cbs.append(keras.callbacks.TensorBoard(paths.logs_dir, update_freq="epoch", profile_batch=0))
    return cbs
