"""The run's callbacks: backbone warm-up, mean balanced accuracy, LR/momentum logging, non-finite guard, best model,
TensorBoard.

    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job   # uses all of them

The best model (checkpoints/best.keras) is the epoch with the highest MONITOR, `val_mean_balanced_accuracy`:
the mean over heads of each head's validation balanced accuracy (softmax heads) or mA (multi-label heads). A
constant predictor scores exactly chance on it (1/C per softmax head, 0.5 per multi-label head) whatever the
class frequencies, so a model that learnt nothing cannot be chosen over one that learnt something, as it can
by accuracy on imbalanced heads.

Order matters: callbacks that add keys to the epoch logs (MeanBalancedAccuracy, LogSchedule) come before the
ones that read them (the guard, BestCheckpoint, TensorBoard). The guard comes before
BestCheckpoint, so a blown-up epoch is never saved as the best. Backups, history.csv and metrics.json are not
callbacks: the loop commits them after every callback has seen the epoch (trainer.training.history).
"""

from __future__ import annotations

import importlib.util
import logging
import math

import keras
import numpy as np

from trainer.jobdir import atomic
from trainer.model.backbones import frozen_batchnorm, set_trainable
from trainer.objective.log_keys import LR, MOMENTUM, MONITOR
from trainer.objective.metrics import MeanBalancedAccuracy
from trainer.optim.ema import ema_callbacks, ema_weights, inner_optimizer

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training or validation produced a NaN or infinite loss (trainer.training.train adds what the backup holds
    and what to do)."""


def _finite(value) -> bool:
    return math.isfinite(float(np.asarray(value)))


class RaiseOnNonFinite(keras.callbacks.Callback):
    """Like TerminateOnNaN, but fails the run (non-zero exit) instead of stopping it quietly as if it finished;
    checks the training loss every step and the validation loss every epoch."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            raise NonFiniteLossError(f"non-finite training loss ({float(np.asarray(loss))}) at batch {batch} "
                                     f"(global step {step})")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not _finite(value):
                kind = "validation" if key == "val_loss" else "training"
                raise NonFiniteLossError(f"non-finite {kind} loss ({float(value)}) in epoch {epoch}")


class LogSchedule(keras.callbacks.Callback):
    """Adds `lr` and `momentum` (the values for the next step) to each epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        opt = inner_optimizer(self.model.optimizer)
        logs[LR] = float(keras.ops.convert_to_numpy(opt.learning_rate))  # the schedule at opt.iterations
        if hasattr(opt, "current_momentum"):
            logs[MOMENTUM] = float(keras.ops.convert_to_numpy(opt.current_momentum()))


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever `monitor` beats the best so far (max), atomically: a kill mid-save leaves the
    previous best whole. `best` carries the best of the epochs a resumed run has already done. With the weights'
    moving average on, the averaged weights are saved (those the monitored validation score was measured on)."""

    def __init__(self, path: str, monitor: str = MONITOR, best: float | None = None):
        super().__init__()
        self.path, self.monitor, self.best = path, monitor, best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not _finite(value) or (self.best is not None and float(value) <= self.best):
            return
        log.debug("epoch %d: %s %s -> %s, saving %s", epoch, self.monitor, self.best, float(value), self.path)
        self.best = float(value)
        with ema_weights(self.model):
            atomic.save_with(self.path, self.model.save)


class BackboneWarmup(keras.callbacks.Callback):
    """`--train.freeze_backbone_epochs=N`: the backbone is frozen for epochs 0..N-1 (the heads learn on fixed
    features, BatchNorm in inference mode), then trainable. Set at every epoch's start from the epoch number, so
    a resumed run is in the right phase; the loop retraces its step when the trainable variables change."""

    def __init__(self, epochs: int, freeze_batchnorm: bool):
        super().__init__()
        self.epochs, self.freeze_batchnorm = epochs, freeze_batchnorm

    def on_epoch_begin(self, epoch, logs=None):
        backbone = self.model.get_layer("backbone")
        trainable = epoch >= self.epochs
        if trainable != backbone.trainable:
            set_trainable(backbone, trainable, self.freeze_batchnorm)
            if trainable:
                log.info("epoch %d: backbone unfrozen after %d epoch(s) of heads only", epoch + 1, self.epochs)


def make_callbacks(paths, schema, best: float | None = None, tensorboard: bool = True, config=None):
    cbs = [*ema_callbacks(config.optim.ema if config is not None else 0.0), MeanBalancedAccuracy(schema),
           LogSchedule(), RaiseOnNonFinite(), BestCheckpoint(paths.best_keras, MONITOR, best)]
    if config is not None and config.train.freeze_backbone_epochs:
        cbs.insert(0, BackboneWarmup(config.train.freeze_backbone_epochs, frozen_batchnorm(config.model)))
    if not tensorboard:
        return cbs
    # tf.summary needs the tensorboard package, which TensorFlow no longer pulls in itself.
    if importlib.util.find_spec("tensorboard") is None:
        log.warning("the tensorboard package is not installed: no TensorBoard logs in %s "
                    "(pip install tensorboard)", paths.logs_dir)
    else:
        cbs.append(keras.callbacks.TensorBoard(paths.logs_dir, update_freq="epoch", profile_batch=0))
    return cbs
