"""Strategy, global batch, LR scaling, mixed precision and XLA (TensorFlow-only code lives here).

    python -c "from trainer.config_loader import load_config; from trainer.training.distribute import make_strategy; \
print(make_strategy(load_config('smoke')))"
    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job --distribute.cpu_devices=2

- `auto`: MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster of >1 task, MirroredStrategy over the
  GPUs when there are several (or over `distribute.cpu_devices` logical CPUs when set), else the default
  strategy (one GPU or the CPU).
- `mirrored` forces MirroredStrategy over every visible GPU or, without GPUs, every logical CPU device;
  `distribute.cpu_devices=K` first splits the CPU into K logical devices, so a CPU-only machine can try
  data-parallel training in one process (that is also how the tests run two replicas on one CPU).
- Multi-worker: a task first waits (`distribute.startup_timeout` seconds) for every task of TF_CONFIG to start,
  in Python, where the wait can end with one line naming the absent tasks or at SIGTERM (trainer.training.cluster);
  the default, 20 minutes, is long enough for Vertex AI to bring up a replica minutes after the others (each
  VM is provisioned, pulls the container image, and with accelerators loads drivers, on its own), and short
  enough that a job whose replica never comes ends within the hour rather than holding the others' accelerators.
- The strategy is made before anything touches TensorFlow's devices: collective ops (multi-worker) and
  logical devices can only be configured while the runtime is not yet initialised.
- Global batch = per-replica batch x replicas (or train.global_batch_size, which must divide evenly).
- Keras switches XLA off under a distribution strategy when jit_compile is "auto"; "true" forces it on.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from trainer.config import ConfigError
from trainer.training import cluster as cluster_lib
from trainer.training import shutdown

log = logging.getLogger(__name__)


def make_strategy(config, task: cluster_lib.Task | None = None) -> tf.distribute.Strategy:
    task = task or cluster_lib.from_env()
    kind = config.distribute.strategy
    cpu_devices = config.distribute.cpu_devices
    if cpu_devices:
        _split_cpu(cpu_devices)
    if kind == "auto":
        if task.is_multi_worker:
            kind = "multi_worker"
        else:
            kind = "mirrored" if cpu_devices or len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if kind == "multi_worker":
        if not task.is_multi_worker:
            raise ConfigError("distribute.strategy=multi_worker needs TF_CONFIG describing a cluster of 2 or more "
                              "tasks (python -m trainer.launch --workers N -- ... sets it)")
        with shutdown.stop_at_once():  # TensorFlow's own wait below can neither time out nor be stopped
            cluster_lib.wait_for_peers(task, config.distribute.startup_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        shutdown.watch()  # SIGTERM back from TensorFlow's preemption notifier, which took it at start-up
    elif kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in (gpus or tf.config.list_logical_devices("CPU"))])
    else:
        strategy = tf.distribute.get_strategy()
    log.debug("strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def _split_cpu(count: int) -> None:
    """K logical CPU devices; possible only before the runtime starts (or when it already has exactly K)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise ConfigError(f"distribute.cpu_devices={count}: TensorFlow's devices are already initialised in this "
                          "process with another layout; set it in a fresh process (the trainer.task command)") from None


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
    policy = str(config.distribute.mixed_precision)
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
