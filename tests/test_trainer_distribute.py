"""MirroredStrategy over two logical CPUs (distribute.cpu_devices) trains like one device on the same global
batch (with the weights' moving average on: the returned weights are the average); global batch, LR scaling,
TF_CONFIG parsing. (MixUp and CutMix under MirroredStrategy: tests/test_trainer_loop.py.)

    python -m pytest -q -x tests/test_trainer_distribute.py

Logical devices must be configured before TensorFlow initialises its devices, so the comparison runs in a
fresh subprocess. Augmentation and dropout are off (their random draws differ per replica) and batch norm is
synchronised, so the two runs compute the same function up to floating-point summation order.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import trainer_fixtures as fx
from trainer.config import ConfigError
from trainer.config_loader import load_config
from trainer.training import cluster
from trainer.training.distribute import global_batch_size, lr_scale

SCRIPT = textwrap.dedent("""
    import json, sys
    from tests.trainer_fixtures import smoke_config
    from trainer.training.distribute import make_strategy
    from trainer.training.train import run

    data_dir, job = sys.argv[1:3]
    o = {"augment.enabled": False, "model.dropout": 0.0, "train.epochs": 1, "train.steps_per_epoch": 3,
         "train.global_batch_size": 8, "data.shuffle_buffer": 0, "distribute.jit_compile": "false",
         "optim.ema": 0.9}
    out = {}
    # The two-device run first: the CPU can be split only before TensorFlow's runtime starts.
    for name, cpus in (("two", 2), ("one", 0)):
        cfg = smoke_config(data_dir, f"{job}/{name}", **o, **{"distribute.cpu_devices": cpus})
        s = make_strategy(cfg)
        r = run(cfg, strategy=s)
        out[name] = {"replicas": s.num_replicas_in_sync, "loss": r["history"]["loss"][-1],
                     "val_loss": r["history"]["val_loss"][-1], "steps": r["steps"],
                     "weights": [w.ravel()[:50].tolist() for w in r["model"].get_weights()]}
    print("RESULT " + json.dumps(out))
""")


def test_two_replicas_match_one_device(tmp_path):
    data_dir = fx.fixture_data_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, data_dir, str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    r = json.loads(line[0][len("RESULT "):])
    one, two = r["one"], r["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2) and one["steps"] == two["steps"] == 3
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-3)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-3)
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_global_batch_and_lr_scaling():
    c = load_config(["--train.batch_size=16", "--optim.linear_scaling=true"])
    assert global_batch_size(c, 4) == 64 and lr_scale(c, 4) == 4.0
    fixed = c.replace(**{"train.global_batch_size": 30})
    assert global_batch_size(fixed, 3) == 30
    with pytest.raises(ConfigError, match="not divisible"):
        global_batch_size(fixed, 4)


def test_tf_config_names_the_task_and_its_chief():
    lone = cluster.from_env({})
    assert lone.is_chief and not lone.is_multi_worker
    with_chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    chief = cluster.parse(cluster.tf_config(with_chief, "chief", 0))
    worker0 = cluster.parse(cluster.tf_config(with_chief, "worker", 0))
    assert chief.is_chief and not worker0.is_chief and worker0.num_tasks == 3 and worker0.address == "b:1"
    workers_only = {"worker": ["a:1", "b:1"]}
    assert cluster.parse(cluster.tf_config(workers_only, "worker", 0)).is_chief
    assert not cluster.parse(cluster.tf_config(workers_only, "worker", 1)).is_chief
    assert worker0.scratch_dir("gs://b/job/") == "gs://b/job/.task_scratch/worker_0"
    # Vertex AI adds fields of its own; a one-task cluster is a plain single-process run.
    vertex_single = {"cluster": {"chief": ["h:2222"]}, "task": {"type": "chief", "index": 0, "trial": ""},
                     "environment": "cloud", "job": {}}
    assert not cluster.parse(json.dumps(vertex_single)).is_multi_worker
    for bad, message in [("[1]", "must be a JSON object"),
                         ('{"cluster": {"chief": ["a:1", "b:1"]}}', "2 chief tasks"),
                         ('{"cluster": {"worker": ["a:1", "b:1"]}}', "no task"),
                         ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker"}}', "non-empty list"),
                         ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}}',
                          "task type 'chief' is not in the cluster")]:
        with pytest.raises(cluster.ClusterError, match=message):
            cluster.parse(bad)


def test_cpu_bf16_detection_reads_the_flags(tmp_path):
    from trainer.training.distribute import cpu_has_bf16

    amd = tmp_path / "avx2"
    amd.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    intel = tmp_path / "spr"
    intel.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile\n")
    assert not cpu_has_bf16(str(amd))
    assert cpu_has_bf16(str(intel))
    assert cpu_has_bf16(str(tmp_path / "absent"))  # unreadable: no warning rather than a false one
