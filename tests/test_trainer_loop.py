"""`train.steps_per_loop`: N steps per compiled call train exactly what N = 1 trains, under every strategy.

    python -m pytest -q tests/test_trainer_loop.py

- `Schedule.loops`: every batch of an epoch once, in order, at most N per loop, the last loop of an epoch shorter,
  cut at backup steps; a resumed run starts at its backup's batch.
- Same weights after 6 steps with N = 1 and N = 4 (an epoch not divisible by N: loops of 4 and 2), the same
  step count, and the per-step callbacks called at loop boundaries only, under the default strategy and
  MirroredStrategy over two logical CPUs, with TensorFlow's deterministic ops on and augmentation, MixUp and
  CutMix included (their random draws must not depend on N).
- A run (trainer.training.train.run): loops end at epoch ends and backup steps, and a run killed mid-epoch
  resumes at its backup's step with the same loop lengths.
- Two MultiWorkerMirroredStrategy workers (real processes on 127.0.0.1): loops of 4 and 2 end at the same step
  count with the same weights on both, and a non-finite loss stops both workers at the same loop.
Runs happen in subprocesses: the CPU split, deterministic ops and the cluster are process-wide settings.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tests import trainer_fixtures as fx
from trainer.config import ConfigError
from trainer.launch import free_ports
from trainer.training import cluster
from trainer.training.loop import Schedule
from trainer.training.train import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: cpu_devices, then steps_per_loop values ("nan" after one: a learning rate that blows the loss up).
# Each variant: a fresh model (same seed) trained 6 steps by Loop.fit on seeded synthetic batches; prints RESULT.
SCRIPT = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    from tests.trainer_fixtures import smoke_config
    from tfds_person_attrs.schema import HVC
    from trainer.training.callbacks import NonFiniteLossError, RaiseOnNonFinite
    from trainer.training.distribute import make_strategy
    from trainer.training.loop import Loop, Schedule
    from trainer.training.train import compiled_model

    class BatchHooks(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.calls = []
        def on_train_batch_begin(self, batch, logs=None):
            self.calls.append(["begin", batch])
        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(["end", batch, int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))])

    def batches(ctx, cfg):  # every input pipeline its own seeded examples, in a fixed order
        rng = np.random.default_rng(ctx.input_pipeline_id)
        n = 64
        x = rng.uniform(0, 255, (n, cfg.data.height, cfg.data.width, 3)).astype("float32")
        y = {a.name: rng.integers(0, a.num_classes, (n,)).astype("int32") for a in HVC.attributes}
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(4, drop_remainder=True)

    cpus, *variants = sys.argv[1:]
    # MixUp and CutMix on: under MirroredStrategy each replica mixes its own part of the batch
    base = {"data.height": 32, "data.width": 16, "train.batch_size": 4, "distribute.jit_compile": "false",
            "distribute.cpu_devices": int(cpus), "augment.mixup": 0.4, "augment.cutmix": 1.0}
    strategy, out = None, {}
    for variant in variants:
        n, *nan = variant.split(":")
        cfg = smoke_config("unused", **base, **({"optim.schedule": "constant", "optim.max_lr": 1e30,
                                                 "model.weight_decay": 0.0} if nan else {}))
        strategy = strategy or make_strategy(cfg)
        keras.utils.set_random_seed(1)
        model = compiled_model(cfg, HVC, strategy, steps_per_epoch=6)
        data = strategy.distribute_datasets_from_function(lambda ctx: batches(ctx, cfg))
        loop = Loop(model, strategy, batches(tf.distribute.InputContext(), cfg).element_spec)
        hooks = BatchHooks()
        callbacks = keras.callbacks.CallbackList([RaiseOnNonFinite(), hooks], model=model)
        try:
            loop.fit(data, None, Schedule(epochs=1, steps_per_epoch=6, steps_per_loop=int(n)), callbacks)
            out[variant] = {"replicas": strategy.num_replicas_in_sync, "calls": hooks.calls,
                            "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
                            "weights": [w.tolist() for w in model.get_weights()]}
        except NonFiniteLossError as e:
            out[variant] = {"error": str(e).split(". ")[0], "calls": hooks.calls}
    print("RESULT " + json.dumps(out))
""")


def run_script(cpu_devices, variants, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(cpu_devices), *variants],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc, timeout=1200):
    out, err = proc.communicate(timeout=timeout)
    line = [x for x in out.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, err[-3000:]
    return json.loads(line[0][len("RESULT "):])


# 6 steps in loops of 4 and 2: on_train_batch_begin(first) / _end(last) with the step count after the loop.
BOUNDARIES = [["begin", 0], ["end", 3, 4], ["begin", 4], ["end", 5, 6]]
EVERY_STEP = [c for b in range(6) for c in (["begin", b], ["end", b, b + 1])]


def assert_same_training(one, four, replicas):
    assert one["replicas"] == four["replicas"] == replicas
    assert one["steps"] == four["steps"] == 6
    assert one["calls"] == EVERY_STEP and four["calls"] == BOUNDARIES
    for a, b in zip(one["weights"], four["weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same ops, same order: bit for bit


def test_loops_cover_each_batch_once_end_at_epochs_and_backups():
    def loops(**kw):
        schedule = Schedule(**{"epochs": 3, "steps_per_epoch": 10, **kw})
        return [[(r.start, r.stop) for r in schedule.loops(e)] for e in range(kw.get("start_epoch", 0), 3)]

    assert loops()[0] == [(b, b + 1) for b in range(10)]  # N = 1: one step per call, as before
    assert loops(steps_per_loop=4) == [[(0, 4), (4, 8), (8, 10)]] * 3
    assert loops(steps_per_loop=32) == [[(0, 10)]] * 3
    # resumed from a backup at global step 13 (epoch 1, batch 3): that epoch starts at batch 3
    assert loops(steps_per_loop=4, start_epoch=1, start_batch=3) == [[(3, 7), (7, 10)], [(0, 4), (4, 8), (8, 10)]]
    # backups every 7 global steps (7, 14, 21, 28): loops end there, so the backups are those of N = 1
    assert loops(steps_per_loop=4, backup_every_steps=7) == [[(0, 4), (4, 7), (7, 10)], [(0, 4), (4, 8), (8, 10)],
                                                             [(0, 1), (1, 5), (5, 8), (8, 10)]]


def test_steps_per_loop_must_be_positive():
    with pytest.raises(ConfigError, match="train.steps_per_loop: must be >= 1"):
        fx.smoke_config("unused", **{"train.steps_per_loop": 0})


@pytest.mark.parametrize("cpu_devices, replicas", [(0, 1), (2, 2)])  # the default strategy; MirroredStrategy
def test_one_and_four_steps_per_loop_train_the_same(cpu_devices, replicas):
    r = result(run_script(cpu_devices, ["1", "4"]))
    assert_same_training(r["1"], r["4"], replicas)


def test_two_workers_loop_alike_and_stop_together_on_a_non_finite_loss():
    layout = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    # N = 1 against N = 4 is the single-process tests' comparison; here the workers must agree with each other.
    procs = [run_script(0, ["4", "4:nan"], cluster.tf_config(layout, "worker", i)) for i in range(2)]
    try:
        chief, worker = (result(p) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r in (chief, worker):
        assert (r["4"]["replicas"], r["4"]["steps"], r["4"]["calls"]) == (2, 6, BOUNDARIES)
    for a, b in zip(chief["4"]["weights"], worker["4"]["weights"]):  # mirrored: every worker holds the same weights
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The loss blows up within the first loop: both workers read the same cluster-mean loss at its end and stop.
    for r in (chief, worker):
        blown = r["4:nan"]
        assert blown["calls"] == [["begin", 0]]  # the guard raised at the first loop's end, before later callbacks
        assert blown["error"] == chief["4:nan"]["error"]
        assert blown["error"].startswith("non-finite training loss") and "at batch 3 (global step 4)" in blown["error"]


class Hooks(keras.callbacks.Callback):
    """Records the batch hooks with the step count at each loop's end; raises at the batch `crash_at` begins."""

    def __init__(self, crash_at=None):
        super().__init__()
        self.calls, self.crash_at = [], crash_at

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.crash_at:
            raise KeyboardInterrupt("killed")
        self.calls.append(("begin", self.epoch, batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", self.epoch, batch, int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def test_a_run_loops_to_epoch_ends_and_backups_and_resumes_at_the_exact_step(tmp_path):
    """5 steps per epoch in loops of up to 4, a backup every 3 steps: loops end at global steps 3, 5, 6, 9, 10;
    a run killed after the backup at step 6 resumes at epoch 1, batch 1, and ends at step 10."""
    cfg = fx.smoke_config(fx.fixture_data_dir(), str(tmp_path / "job"), **{
        "train.epochs": 2, "train.steps_per_epoch": 5, "train.steps_per_loop": 4, "train.backup_every_steps": 3})
    killed = Hooks(crash_at=(1, 1))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, extra_callbacks=[killed])
    assert killed.calls == [("begin", 0, 0), ("end", 0, 2, 3), ("begin", 0, 3), ("end", 0, 4, 5),
                            ("begin", 1, 0), ("end", 1, 0, 6)]
    resumed = Hooks()
    result = run(cfg, extra_callbacks=[resumed])
    assert resumed.calls == [("begin", 1, 1), ("end", 1, 3, 9), ("begin", 1, 4), ("end", 1, 4, 10)]
    assert result["steps"] == 10 and len(result["history"]["loss"]) == 2
