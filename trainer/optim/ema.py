"""The exponential moving average of the weights (`--optim.ema=DECAY`), where it is used (Keras only, any backend).

    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job --optim.ema=0.99

The average itself is Keras' own: the optimizer's `use_ema` updates a copy of every trainable variable after each
step (average = decay * average + (1 - decay) * weight; the first step copies). Those copies are optimizer
variables, so the run's backup (trainer.jobdir.backup saves every optimizer variable) carries them and a resumed run
continues the same average. Training steps always use the raw weights; everything that reads the model as a
result uses the average:
- validation: Keras' `SwapEMAWeights` callback swaps the average in for the evaluation and back after it;
- checkpoints/best.keras: saved inside `ema_weights`, so the best epoch (chosen on the averaged weights'
  validation score) is stored with those weights;
- model.keras, the export and the model `trainer.training.train.run` returns: `keep_ema_weights` leaves the average in.
Only trainable variables are averaged (Keras'): BatchNorm's moving statistics stay those of the raw weights.
"""

from __future__ import annotations

import contextlib

import keras


def inner_optimizer(optimizer):
    """The optimizer that holds the schedule, momentum and EMA: a LossScaleOptimizer (mixed_float16) unwrapped."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _optimizer(model):
    return inner_optimizer(getattr(model, "optimizer", None))


def uses_ema(model) -> bool:
    return bool(getattr(_optimizer(model), "use_ema", False))


def _swapper(model) -> keras.callbacks.SwapEMAWeights:
    """Keras' own swap (in place, through the distribution strategy under TensorFlow)."""
    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(model)
    return swap


def ema_callbacks(decay: float) -> list[keras.callbacks.Callback]:
    """[SwapEMAWeights] when the EMA is on (validation then runs on the averaged weights), else []."""
    return [keras.callbacks.SwapEMAWeights()] if decay > 0 else []


@contextlib.contextmanager
def ema_weights(model):
    """Within the block the model holds the averaged weights (and the optimizer the raw ones); afterwards the
    raw weights are back. Does nothing when the optimizer keeps no average."""
    if not uses_ema(model):
        yield model
        return
    swap = _swapper(model)
    swap.on_test_begin()
    try:
        yield model
    finally:
        swap.on_test_end()


def keep_ema_weights(model) -> None:
    """At the end of training: the model keeps the averaged weights for good (what is saved and served); the
    optimizer's average slots then hold the last raw weights. A swap rather than Keras' finalize_variable_values,
    which fails when the trainable variables differ from those the optimizer was built on (a frozen backbone)."""
    if uses_ema(model):
        _swapper(model).on_test_begin()
