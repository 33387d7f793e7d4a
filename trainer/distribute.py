"""Strategy, global batch, LR scaling, mixed precision and XLA (TensorFlow-only code lives here).

    python -c "from trainer.config import load_config; from trainer.distribute import make_strategy; \
print(make_strategy(load_config('smoke')))"

- `auto`: MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster of >1 task, MirroredStrategy over the
  GPUs when there are several, otherwise the default strategy (one GPU or the CPU).
- `mirrored` forces MirroredStrategy over every visible GPU or, without GPUs, every logical CPU device
  (that is how the tests run two replicas on one CPU).
- Global batch = per-replica batch x replicas (or train.global_batch_size, which must divide evenly).
- Keras switches XLA off under a distribution strategy when jit_compile is "auto"; "true" forces it on.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from trainer.config import ConfigError

log = logging.getLogger(__name__)


def _cluster_size(environ=None) -> int:
    env = os.environ if environ is None else environ
    tf_config = json.loads(env.get("TF_CONFIG") or "{}")
    return sum(len(v) for v in tf_config.get("cluster", {}).values())


def make_strategy(config) -> tf.distribute.Strategy:
    kind = config.distribute.strategy
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        kind = "multi_worker" if _cluster_size() > 1 else "mirrored" if len(gpus) > 1 else "default"
    if kind == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif kind == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.get_strategy()
    log.info("strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def global_batch_size(config, num_replicas: int) -> int:
    t = config.train
    if t.global_batch_size:
        if t.global_batch_size % num_replicas:
            raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not divisible by the "
                              f"{num_replicas} replicas; pick a multiple of {num_replicas}")
        return t.global_batch_size
    return t.batch_size * num_replicas


def lr_scale(config, num_replicas: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): LR grows with the number of replicas, if asked."""
    return float(num_replicas) if config.optim.linear_scaling else 1.0


def jit_compile(config):
    return {"auto": "auto", "true": True, "false": False}[config.distribute.jit_compile]


def set_precision(config) -> str:
    """Sets the global Keras dtype policy; returns the previous one so that callers (tests) can restore it."""
    previous = keras.config.dtype_policy().name
    policy = config.distribute.mixed_precision
    if policy == "mixed_bfloat16" and not tf.config.list_physical_devices("GPU") and not cpu_has_bf16():
        # Measured (docs/performance.md): 1.3x faster steps on a CPU with AVX-512 BF16, ~10x slower on AVX2 only.
        print("warning: distribute.mixed_precision=mixed_bfloat16 on a CPU without bf16 instructions "
              "(avx512_bf16 / amx_bf16): steps run emulated, up to ~10x slower than float32")
    keras.config.set_dtype_policy(policy)
    return previous


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU flags list native bf16 arithmetic; True when they cannot be read (not Linux): no warning."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return True
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & set(flags))


def is_chief(environ=None) -> bool:
    """Only the chief writes the job dir's shared outputs: the `chief` task, else worker 0, else a lone process."""
    env = os.environ if environ is None else environ
    tf_config = json.loads(env.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if not task:
        return True
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and task.get("index", 0) == 0
