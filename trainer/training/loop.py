"""The training loop: Keras' own `train_step` / `test_step` driven by `strategy.run`, epoch by epoch.

    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job     # runs it

Why not `model.fit` (docs/architecture.md has the evidence): under MultiWorkerMirroredStrategy Keras 3.15's fit
fails before the first step (`_maybe_symbolic_build` converts the distributed first batch to a tensor) and, past
that, in `reduce_per_replica` (a scalar reduced over axis 0; keras-team/keras#20585). The step itself is not the
problem, so this loop runs the very same `model.train_step` (forward, compiled losses and loss weights,
regularisation, loss scaling, gradients, optimizer, compiled metrics) under `strategy.run`, with the same XLA
setting as fit, and calls the same Keras callbacks in the same order. It runs under every strategy (default,
mirrored, multi-worker), so one code path is tested everywhere.

`train.steps_per_loop` N runs N steps inside one compiled function (a `tf.range` loop over `next(iterator)` calling
the same step), as fit's `steps_per_execution` does: the host dispatches once and reads the loss once per loop
instead of once per step, so a small model no longer waits on Python between steps. The per-step callbacks run
at loop boundaries: `on_train_batch_begin(first)` / `on_train_batch_end(last, logs)` with the loop's first and
last batch (fit's convention), so a progress bar moves N steps at a time and the non-finite guard checks once
per loop. Loops end at every epoch end and at every `train.backup_every_steps` multiple (`Schedule.loops`), so
backups fall on the same steps for every N and a resumed run starts exactly where its backup was taken.
Per step every replica's running loss is averaged across the cluster (one scalar all-reduce), so every task
sees the same value; the loss read at a boundary is the epoch's running mean, which a non-finite step anywhere
in the loop makes non-finite, so the guard stops all tasks at the same loop. Epoch metrics are read from the
metric variables, which TensorFlow sums over all replicas when read outside a step: exact global means, also
when the last validation batches are uneven across workers. TensorFlow-only (tf.distribute).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import keras
import tensorflow as tf

from trainer.objective.metrics import VAL


@dataclasses.dataclass(frozen=True)
class Schedule:
    epochs: int
    steps_per_epoch: int
    start_epoch: int = 0  # epochs already completed (resumed run)
    start_batch: int = 0  # steps of `start_epoch` already done (resumed from a mid-epoch backup)
    steps_per_loop: int = 1  # steps per compiled call (train.steps_per_loop)
    backup_every_steps: int = 0  # loops also end where a mid-epoch backup is due (train.backup_every_steps)

    def loops(self, epoch: int) -> list[range]:
        """The batches of `epoch` this run trains, one range per compiled call: at most steps_per_loop batches,
        cut at the epoch's end (the last loop of an epoch may be shorter) and after every global step that is a
        multiple of backup_every_steps, where the backup (trainer.training.history.Recorder) is due."""
        first = self.start_batch if epoch == self.start_epoch else 0
        done_before = epoch * self.steps_per_epoch  # global steps of the earlier epochs
        out = []
        while first < self.steps_per_epoch:
            stop = min(first + self.steps_per_loop, self.steps_per_epoch)
            if self.backup_every_steps:
                due = ((done_before + first) // self.backup_every_steps + 1) * self.backup_every_steps
                stop = min(stop, due - done_before)
            out.append(range(first, stop))
            first = stop
        return out


class Loop:
    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, element_spec, mixing=None):
        """`element_spec`: one batch's structure (x, y), to build the compiled losses, metrics and optimizer.
        `mixing`: None, or a callable (x, y) -> (x, y) applied to each replica's training batch before the step
        (trainer.model.augment.LabelMixing: MixUp/CutMix, which change the labels and so cannot live in the model)."""
        self.model, self.strategy, self.mixing = model, strategy, mixing
        # Variables must exist before the step is traced: created inside a tf.function under MirroredStrategy
        # they break it ("You must feed a value for placeholder tensor"). fit builds them with this same call,
        # symbolically (no data), before its first step; under a strategy's scope they are mirrored. Keras has
        # no public call that builds the compiled losses and metrics without data, hence the private one.
        with strategy.scope():
            model._symbolic_build(data_batch=element_spec)
        self._trace()

    def _trace(self) -> None:
        """(Re)creates the compiled functions. A trace fixes which variables train and whether BatchNorm uses
        batch statistics (Keras reads `trainable` when tracing), so a change of trainable variables (the backbone
        warm-up) needs a new trace; fit does the same when a model is compiled again."""
        model, strategy = self.model, self.strategy
        jit = bool(model.jit_compile)  # Keras' own resolution of "auto" (off under a strategy)
        self._traced_for = self._trainable_key()

        mixing = self.mixing

        def step(data):
            return model.train_step(mixing(*data) if mixing is not None else data)

        def on_every_replica(data):
            logs = strategy.run(step, args=(data,))
            return strategy.reduce("MEAN", logs["loss"], axis=None)

        def test_on_every_replica(data):
            strategy.run(model.test_step, args=(data,))

        # One batch -> the cluster's mean running loss (benchmarks/multiworker.py reads its graph's collectives).
        self.step_function = step_function = tf.function(on_every_replica, jit_compile=jit, reduce_retracing=True)

        def steps_on_iterator(iterator, steps):
            # Every step's loss is the running mean of the epoch so far: the last one is the loop's loss.
            loss = step_function(next(iterator))
            for _ in tf.range(steps - 1):  # a tf.while_loop: one trace serves every loop length
                loss = step_function(next(iterator))
            return loss

        # train_steps(iterator, steps): `steps` steps on the next batches, in one call; the iterator is advanced
        # outside the compiled step, as fit does. train_step(iterator): one step.
        self.train_steps = tf.function(steps_on_iterator, reduce_retracing=True)
        self.train_step = lambda iterator: self.train_steps(iterator, tf.constant(1))
        self._test = tf.function(test_on_every_replica, jit_compile=jit, reduce_retracing=True)

    def _trainable_key(self) -> tuple:
        return tuple(id(v) for v in self.model.trainable_variables)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.model.get_metrics_result().items()}

    def train_epoch(self, iterator, epoch: int, loops: list[range], callbacks):
        """`loops`: the epoch's batches, one range per compiled call (Schedule.loops)."""
        self.model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        if self._trainable_key() != self._traced_for:
            self._trace()
        for batches in loops:
            callbacks.on_train_batch_begin(batches[0])
            loss = self.train_steps(iterator, tf.constant(len(batches)))
            callbacks.on_train_batch_end(batches[-1], {"loss": float(loss)})  # the loop's only wait on the host
        return self.metrics()

    def evaluate(self, dataset: Iterable, callbacks) -> dict[str, float]:
        self.model.reset_metrics()
        callbacks.on_test_begin()
        for batch, data in enumerate(dataset):
            callbacks.on_test_batch_begin(batch)
            self._test(data)
            callbacks.on_test_batch_end(batch)
        logs = self.metrics()
        callbacks.on_test_end(logs)
        return {VAL + k: v for k, v in logs.items()}

    def fit(self, train_data, val_data, schedule: Schedule, callbacks) -> None:
        """Trains epochs start_epoch..epochs-1 (the first from batch start_batch); `callbacks` is a CallbackList."""
        iterator = iter(train_data)
        callbacks.on_train_begin()
        logs: dict = {}
        for epoch in range(schedule.start_epoch, schedule.epochs):
            logs = self.train_epoch(iterator, epoch, schedule.loops(epoch), callbacks)
            if val_data is not None:
                logs.update(self.evaluate(val_data, callbacks))
            callbacks.on_epoch_end(epoch, logs)  # mean accuracy, lr; guard; best checkpoint; TensorBoard; commit
            if getattr(self.model, "stop_training", False):
                break
        callbacks.on_train_end(logs)


def gather_steps(strategy: tf.distribute.Strategy, step: int) -> list[int]:
    """`step` as every replica of the cluster has it: all equal when every task restored the same backup.
    It is also the run's first collective, so no task trains before every task has restored."""
    value = strategy.run(lambda: tf.constant([step], tf.int64))
    return [int(s) for s in strategy.gather(value, axis=0).numpy()]
