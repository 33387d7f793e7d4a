"""One-cycle and the other schedules against hand-computed values; momentum really reaches SGD's update.

    python -m pytest -q -x tests/test_trainer_schedules.py
"""

import keras
import numpy as np
import pytest

from trainer.optim import schedules as S


def _v(x):
    return float(keras.ops.convert_to_numpy(x))


# total 100 steps, max_lr 1.0, warm-up 25 steps, start 1/25 = 0.04, end 1e-4.
#   step 0:   0.04
#   step 10:  up = 10/25 = 0.4; 1 + (0.04 - 1) * (1 + cos(0.4 pi)) / 2 = 1 - 0.48 * 1.309017 = 0.371672
#   step 25:  peak 1.0
#   step 50:  down = 25/75; 1e-4 + (1 - 1e-4) * (1 + cos(pi/3)) / 2 = 1e-4 + 0.9999 * 0.75 = 0.750025
#   step 100: 1e-4; step 150 (past the end): stays 1e-4
# momentum 0.95 -> 0.85 -> 0.95: step 10: 0.85 + 0.1 * (1 + cos(0.4 pi)) / 2 = 0.915451;
#   step 50: 0.95 + (0.85 - 0.95) * (1 + cos(pi/3)) / 2 = 0.875
ONE_CYCLE = [(0, 0.04, 0.95), (10, 0.371672, 0.915451), (25, 1.0, 0.85), (50, 0.750025, 0.875),
             (100, 1e-4, 0.95), (150, 1e-4, 0.95)]


@pytest.mark.parametrize("step,lr,mom", ONE_CYCLE)
def test_one_cycle_table(step, lr, mom):
    assert _v(S.one_cycle_lr(step, 100, 1.0)) == pytest.approx(lr, rel=1e-4)
    assert _v(S.one_cycle_momentum(step, 100)) == pytest.approx(mom, rel=1e-4)


def test_other_schedules_table():
    # cosine, 100 steps, 10% warm-up to 1.0: step 5 -> 0.5 (linear); step 55 -> halfway down -> 0.5
    assert _v(S.cosine_warmup_lr(5, 100, 1.0, 0.1)) == pytest.approx(0.5)
    assert _v(S.cosine_warmup_lr(55, 100, 1.0, 0.1)) == pytest.approx(0.5, abs=1e-6)
    assert _v(S.cosine_warmup_lr(100, 100, 1.0, 0.1, min_lr=0.01)) == pytest.approx(0.01)
    # step decay 0.1 every 10: steps 9, 10, 25 -> 1, 0.1, 0.01
    assert [_v(S.step_decay_lr(s, 1.0, 10, 0.1)) for s in (9, 10, 25)] == pytest.approx([1.0, 0.1, 0.01])
    # triangular, 0.1..1.1, half cycle 10: 0 -> 0.1, 5 -> 0.6, 10 -> 1.1, 20 -> 0.1; triangular2 peak 2 = 0.6
    tri = [_v(S.cyclic_lr(s, 0.1, 1.1, 10)) for s in (0, 5, 10, 20)]
    assert tri == pytest.approx([0.1, 0.6, 1.1, 0.1])
    assert _v(S.cyclic_lr(30, 0.1, 1.1, 10, "triangular2")) == pytest.approx(0.6)


def test_step_schedule_serialises_and_sgd_applies_scheduled_momentum():
    sched = S.StepSchedule("one_cycle", total_steps=100, max_lr=1.0)
    again = S.StepSchedule.from_config(sched.get_config())
    assert _v(again(10)) == pytest.approx(0.371672, rel=1e-4)

    # One variable, gradient 1: m1 = -lr0; m2 = m1 * mom(1) - lr1; x2 = x0 + m1 + m2 (Keras' SGD convention).
    opt = S.ScheduledSGD(learning_rate=sched)
    x = keras.Variable(np.zeros(()), dtype="float32")
    opt.build([x])
    for _ in range(2):
        opt.apply_gradients([(keras.ops.ones(()), x)])
    lr0, lr1, mom1 = _v(sched(0)), _v(sched(1)), _v(sched.momentum(1))
    m1 = -lr0
    m2 = m1 * mom1 - lr1
    assert _v(x) == pytest.approx(m1 + m2, rel=1e-5)
    assert mom1 != pytest.approx(0.9)  # not SGD's constructor momentum
