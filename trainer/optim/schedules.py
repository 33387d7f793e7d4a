"""Learning-rate and momentum schedules as pure functions of the global step (Keras 3 only, any backend).

    python -c "from trainer.optim.schedules import one_cycle_lr; print(float(one_cycle_lr(25, 100, 0.1)))"

Because every value is computed from the optimizer's step counter, a run restored from its backup (which
restores that counter) continues on exactly the same curve. `StepSchedule` wraps the functions as a
serialisable LearningRateSchedule that also answers `momentum(step)`; `ScheduledSGD` applies that momentum on
every update (Keras' SGD bakes `self.momentum` into the traced graph as a constant, so setting it from a
callback would have no effect). It also scales the learning rate of a chosen set of variables (the backbone's,
`--train.backbone_lr_multiplier`) inside the same update, so the heads and the backbone follow one schedule.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from trainer.config import OptimConfig, Schedule

_DEFAULT = OptimConfig()  # the defaults below are the config's


def _f(step):
    return ops.cast(step, "float32")


def _cos_anneal(start, end, frac):
    """start at frac=0 to end at frac=1 along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * frac))


def _phase(step, total_steps, warmup_frac):
    """(warmup steps, fraction through warm-up, fraction through the anneal), both clipped to [0, 1]."""
    warm = max(1, int(round(total_steps * warmup_frac)))
    s = _f(step)
    up = ops.clip(s / warm, 0.0, 1.0)
    down = ops.clip((s - warm) / max(1, total_steps - warm), 0.0, 1.0)
    return warm, up, down


def one_cycle_lr(step, total_steps, max_lr, warmup_frac=_DEFAULT.warmup_frac, div_factor=_DEFAULT.div_factor,
                 final_div=_DEFAULT.final_div):
    """max_lr/div_factor -> max_lr over the warm-up, then -> max_lr/final_div, both on cosines."""
    warm, up, down = _phase(step, total_steps, warmup_frac)
    rising = _cos_anneal(max_lr / div_factor, max_lr, up)
    falling = _cos_anneal(max_lr, max_lr / final_div, down)
    return ops.where(_f(step) < warm, rising, falling)


def one_cycle_momentum(step, total_steps, warmup_frac=_DEFAULT.warmup_frac, momentum_max=_DEFAULT.momentum_max,
                       momentum_min=_DEFAULT.momentum_min):
    """The mirror image of the LR: high while the LR is low, low at the LR peak."""
    warm, up, down = _phase(step, total_steps, warmup_frac)
    return ops.where(_f(step) < warm, _cos_anneal(momentum_max, momentum_min, up),
                     _cos_anneal(momentum_min, momentum_max, down))


def cosine_warmup_lr(step, total_steps, max_lr, warmup_frac=0.05, min_lr=0.0):
    """Linear warm-up from 0 to max_lr, then a cosine to min_lr at total_steps."""
    warm, up, down = _phase(step, total_steps, warmup_frac)
    return ops.where(_f(step) < warm, max_lr * up, _cos_anneal(max_lr, min_lr, down))


def step_decay_lr(step, max_lr, decay_steps, decay_rate=0.1):
    """max_lr * decay_rate ** floor(step / decay_steps)."""
    return max_lr * ops.power(decay_rate, ops.floor(_f(step) / max(1, decay_steps)))


def cyclic_lr(step, min_lr, max_lr, half_cycle_steps, mode="triangular"):
    """Smith's cyclic LR: min->max->min every 2*half_cycle_steps; triangular2 halves the amplitude per cycle."""
    s = _f(step)
    half = float(max(1, half_cycle_steps))
    cycle = ops.floor(1.0 + s / (2.0 * half))
    x = ops.abs(s / half - 2.0 * cycle + 1.0)
    scale = 1.0 if mode == "triangular" else ops.power(0.5, cycle - 1.0)
    return min_lr + (max_lr - min_lr) * ops.maximum(0.0, 1.0 - x) * scale


@keras.saving.register_keras_serializable(package="person_attrs")
class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One of trainer.config.Schedule, as a function of the global step; `momentum(step)` gives the matching SGD
    momentum."""

    def __init__(self, kind, total_steps, max_lr, min_lr=_DEFAULT.min_lr, warmup_frac=_DEFAULT.warmup_frac,
                 div_factor=_DEFAULT.div_factor, final_div=_DEFAULT.final_div, momentum=_DEFAULT.momentum,
                 momentum_max=_DEFAULT.momentum_max, momentum_min=_DEFAULT.momentum_min, decay_steps=1,
                 decay_rate=_DEFAULT.decay_rate, half_cycle_steps=1):
        if kind not in Schedule.names():
            raise ValueError(f"unknown schedule {kind!r}; choose one of {Schedule.names()}")
        kind = str(kind)  # the model's saved config holds the plain name
        self.kind, self.total_steps, self.max_lr, self.min_lr = kind, int(total_steps), float(max_lr), float(min_lr)
        self.warmup_frac, self.div_factor, self.final_div = float(warmup_frac), float(div_factor), float(final_div)
        self.momentum_value, self.momentum_max, self.momentum_min = float(momentum), float(momentum_max), float(
            momentum_min)
        self.decay_steps, self.decay_rate = int(decay_steps), float(decay_rate)
        self.half_cycle_steps = int(half_cycle_steps)

    def __call__(self, step):
        k = self.kind
        if k == "one_cycle":
            return one_cycle_lr(step, self.total_steps, self.max_lr, self.warmup_frac, self.div_factor,
                                self.final_div)
        if k == "cosine":
            return cosine_warmup_lr(step, self.total_steps, self.max_lr, self.warmup_frac, self.min_lr)
        if k == "step":
            return step_decay_lr(step, self.max_lr, self.decay_steps, self.decay_rate)
        if k in ("triangular", "triangular2"):
            return cyclic_lr(step, self.min_lr, self.max_lr, self.half_cycle_steps, k)
        return ops.convert_to_tensor(self.max_lr, "float32") + 0.0 * _f(step)

    def momentum(self, step):
        if self.kind == "one_cycle":
            return one_cycle_momentum(step, self.total_steps, self.warmup_frac, self.momentum_max,
                                      self.momentum_min)
        return ops.convert_to_tensor(self.momentum_value, "float32") + 0.0 * _f(step)

    def get_config(self):
        return {"kind": self.kind, "total_steps": self.total_steps, "max_lr": self.max_lr, "min_lr": self.min_lr,
                "warmup_frac": self.warmup_frac, "div_factor": self.div_factor, "final_div": self.final_div,
                "momentum": self.momentum_value, "momentum_max": self.momentum_max,
                "momentum_min": self.momentum_min, "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "half_cycle_steps": self.half_cycle_steps}


@keras.saving.register_keras_serializable(package="person_attrs")
class ScheduledSGD(keras.optimizers.SGD):
    """SGD whose momentum is read from its StepSchedule at the current step, inside the compiled update."""

    def __init__(self, learning_rate, nesterov=False, lr_multiplier=1.0, **kwargs):
        kwargs.pop("momentum", None)
        # momentum must be non-zero so that Keras builds the momentum slots.
        super().__init__(learning_rate=learning_rate, momentum=0.9, nesterov=nesterov, **kwargs)
        self.lr_multiplier = float(lr_multiplier)
        self._scaled = frozenset()

    def scale_learning_rate_of(self, variables) -> None:
        """The variables whose updates use lr_multiplier x the learning rate (call before training; they are
        found by Keras' own variable key, which also identifies mirrored and distributed variables)."""
        self._scaled = frozenset(self._var_key(v) for v in variables)

    def get_config(self):
        return {**super().get_config(), "lr_multiplier": self.lr_multiplier}

    @property
    def schedule(self) -> StepSchedule | None:
        """The StepSchedule the learning rate and momentum follow; None for a fixed learning rate."""
        lr = self._learning_rate  # Keras' `learning_rate` gives the schedule's value, not the schedule
        return lr if isinstance(lr, StepSchedule) else None

    def current_momentum(self):
        if self.schedule is not None:
            return self.schedule.momentum(self.iterations)
        return ops.convert_to_tensor(self.momentum, "float32")

    def update_step(self, gradient, variable, learning_rate):
        # Keras' SGD.update_step with the momentum taken from the schedule (same step as the learning rate).
        if self.lr_multiplier != 1.0 and self._var_key(variable) in self._scaled:
            learning_rate = learning_rate * self.lr_multiplier
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.current_momentum(), variable.dtype)
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, ops.subtract(ops.multiply(m, momentum), ops.multiply(gradient, learning_rate)))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(m, momentum), ops.multiply(gradient, learning_rate)))
        else:
            self.assign_add(variable, m)


def make_schedule(optim, total_steps: int, steps_per_epoch: int, lr_scale: float = 1.0) -> StepSchedule:
    """StepSchedule from an OptimConfig; epochs-based settings become steps here."""
    return StepSchedule(
        kind=optim.schedule, total_steps=total_steps, max_lr=optim.max_lr * lr_scale,
        min_lr=optim.min_lr * lr_scale, warmup_frac=optim.warmup_frac, div_factor=optim.div_factor,
        final_div=optim.final_div, momentum=optim.momentum, momentum_max=optim.momentum_max,
        momentum_min=optim.momentum_min, decay_steps=round(optim.decay_every_epochs * steps_per_epoch),
        decay_rate=optim.decay_rate, half_cycle_steps=round(optim.cycle_epochs * steps_per_epoch / 2))


def make_optimizer(optim, schedule: StepSchedule, scaled_variables=(), lr_multiplier: float = 1.0) -> ScheduledSGD:
    """`scaled_variables` (the backbone's) learn at lr_multiplier x the schedule's rate. `optim.ema` > 0 keeps
    Keras' moving average of the weights in the optimizer (trainer.optim.ema swaps it in where it is used)."""
    kw = {"clipnorm": optim.clipnorm} if optim.clipnorm > 0 else {}
    if optim.ema > 0:
        kw.update(use_ema=True, ema_momentum=optim.ema)
    optimizer = ScheduledSGD(learning_rate=schedule, nesterov=optim.nesterov, lr_multiplier=lr_multiplier, **kw)
    optimizer.scale_learning_rate_of(scaled_variables)
    return optimizer
