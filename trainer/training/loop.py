"""The training loop: Keras' own `train_step` / `test_step` driven by `strategy.run`, epoch by epoch.

    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job     # runs it

Why not `model.fit` (docs/architecture.md has the evidence): under MultiWorkerMirroredStrategy Keras 3.15's fit
fails before the first step (`_maybe_symbolic_build` converts the distributed first batch to a tensor) and, past
that, in `reduce_per_replica` (a scalar reduced over axis 0; keras-team/keras#20585). The step itself is not the
problem, so this loop runs the very same `model.train_step` (forward, compiled losses and loss weights,
regularisation, loss scaling, gradients, optimizer, compiled metrics) under `strategy.run`, with the same XLA
setting as fit, and calls the same Keras callbacks in the same order. It runs under every strategy (default,
mirrored, multi-worker), so one code path is tested everywhere.

Per step every replica's running loss is averaged across the cluster (one scalar all-reduce), so every task
sees the same value and a non-finite loss stops all of them at the same step. Epoch metrics are read from the
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
        self.step_function = tf.function(on_every_replica, jit_compile=jit, reduce_retracing=True)
        # train_step(iterator): one step on the next batch; the iterator is advanced outside the compiled
        # function, as fit does.
        self.train_step = tf.function(lambda iterator: self.step_function(next(iterator)))
        self._test = tf.function(test_on_every_replica, jit_compile=jit, reduce_retracing=True)

    def _trainable_key(self) -> tuple:
        return tuple(id(v) for v in self.model.trainable_variables)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.model.get_metrics_result().items()}

    def train_epoch(self, iterator, epoch: int, batches: range, callbacks):
        self.model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        if self._trainable_key() != self._traced_for:
            self._trace()
        for batch in batches:
            callbacks.on_train_batch_begin(batch)
            loss = self.train_step(iterator)
            callbacks.on_train_batch_end(batch, {"loss": float(loss)})
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
            first = schedule.start_batch if epoch == schedule.start_epoch else 0
            logs = self.train_epoch(iterator, epoch, range(first, schedule.steps_per_epoch), callbacks)
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
