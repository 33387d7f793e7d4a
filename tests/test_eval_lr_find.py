"""LR range test: the suggestion rule on a known curve, the callback's sweep and stop, the CLI end to end.

    python -m pytest -q tests/test_eval_lr_find.py
"""

import json
import os

import keras
import numpy as np
import pytest

from tests import trainer_fixtures
from trainer import lr_find


def test_suggest_on_a_known_curve():
    lrs = np.logspace(-5, 1, 61)  # 10 points per decade
    x = np.log10(lrs)
    # falls fastest at 1e-3 (tanh's steepest point), bottoms out at 1e-1, then rises
    loss = -np.tanh(2 * (x + 3)) + 3 * np.maximum(0, x + 1) ** 2
    s = lr_find.suggest(lrs, loss)
    assert s["min_loss_lr"] == pytest.approx(0.1)
    assert s["suggested_max_lr"] == pytest.approx(0.01)
    assert s["steepest_lr"] == pytest.approx(1e-3)
    assert s["diverged"]
    assert lr_find.suggest(lrs[:2], [np.nan, np.nan])["suggested_max_lr"] is None


def test_suggest_without_divergence_takes_the_knee():
    # Falls from 2 to 0 around 1e-3 and then only creeps down: the minimum is at the sweep's end.
    lrs = np.logspace(-5, 1, 61)
    loss = 1 - np.tanh(2 * (np.log10(lrs) + 3)) - 0.001 * np.arange(61)
    s = lr_find.suggest(lrs, loss)
    assert not s["diverged"] and s["min_loss_lr"] == pytest.approx(10.0)
    knee = lrs[np.argmax(loss <= loss.min() + 0.1 * (loss[0] - loss.min()))]
    assert s["suggested_max_lr"] == pytest.approx(knee) and 1e-3 < knee < 1e-2


def _linear_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    return model, x, y


def test_callback_sweeps_exponentially_and_records_each_steps_loss():
    model, x, y = _linear_problem()
    first = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
    cb = lr_find.LRRangeTest(1e-4, 1e-2, num_steps=5)
    model.fit(x, y, batch_size=16, epochs=5, steps_per_epoch=1, callbacks=[cb], verbose=0, shuffle=False)
    np.testing.assert_allclose(cb.lrs, [1e-4, 10 ** -3.5, 1e-3, 10 ** -2.5, 1e-2], rtol=1e-6)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-2)
    assert cb.losses[0] == pytest.approx(first, rel=1e-4)  # the step's own loss, not a running mean
    assert not cb.stopped_early and len(cb.losses) == 5


def test_callback_stops_when_the_loss_diverges():
    model, x, y = _linear_problem()
    cb = lr_find.LRRangeTest(1e-3, 1e3, num_steps=60)
    model.fit(x, y, batch_size=16, epochs=60, steps_per_epoch=1, callbacks=[cb], verbose=0)
    assert cb.stopped_early and len(cb.losses) < 60
    assert cb.smoothed[-1] > 4 * min(cb.smoothed) or not np.isfinite(cb.losses[-1])


def test_cli_writes_plot_and_json(tmp_path, capsys):
    data_dir = trainer_fixtures.fixture_data_dir(trainer_fixtures.MULTI_SCHEMA.name)
    out = tmp_path / "lr"
    rc = lr_find.main(["--steps", "12", "--start_lr", "1e-4", "--end_lr", "1", "--out", str(out),
                       "--config", "par", "--data_dir", data_dir, "--train.batch_size=8",  # the weighted BCE
                       "--data.shuffle_buffer=16"])  # and the data dir's one dataset
    assert rc == 0
    r = json.load(open(out / "lr_find.json"))
    assert 2 <= len(r["lrs"]) <= 12 and r["lrs"][0] == pytest.approx(1e-4)
    if r["diverged"]:
        assert r["suggested_max_lr"] == pytest.approx(r["min_loss_lr"] / 10)
    else:  # the knee: an LR of the sweep at or below the minimum's
        assert r["suggested_max_lr"] in r["lrs"] and r["suggested_max_lr"] <= r["min_loss_lr"]
    assert r["rule"] == lr_find.RULES[r["diverged"]]
    assert os.path.getsize(out / "lr_find.png") > 1000
    assert "suggested max LR" in capsys.readouterr().out
