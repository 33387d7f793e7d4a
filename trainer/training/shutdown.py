"""SIGTERM, what Vertex AI sends on preemption or cancellation: a waiting task ends at once, a training task
commits a backup at the next step boundary and ends, so that the same command started again resumes from it.

    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job &
    sleep 60; kill -TERM $!; wait $!; echo "exit $?"                     # 143, "stopped by SIGTERM ..."
    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job     # resumes from the backup

The handler only raises a flag: a step is never cut in half, and a backup is written where the run can resume
exactly (trainer.training.history.Recorder.backup_now). `StopOnSigterm`, a callback, reads it after every step; in
a multi-worker run the tasks agree through one scalar all-reduce per step (SIGTERM may reach one replica only,
and every task must save and stop at the same step: saving can involve collectives). TensorFlow's multi-worker
runtime installs its own SIGTERM handler when it starts (its preemption notifier, which this trainer does not
use), so `watch` is called again once the strategy exists. Exit status 143 (128 + SIGTERM), one line.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import keras
import tensorflow as tf

EXIT_CODE = 128 + signal.SIGTERM

_requested = threading.Event()
_raise_at_once = False
_previous = None  # the handler before ours (restored by `release`)


class Stopped(RuntimeError):
    """SIGTERM ended the run; the message says what was kept and how to go on."""


def _on_sigterm(signum, frame):
    _requested.set()
    if _raise_at_once:
        raise Stopped("stopped by SIGTERM while waiting for the cluster's other tasks (nothing trained yet); "
                      "start the same command again to run")


def watch() -> None:
    """Makes SIGTERM raise the stop flag (idempotent; only the main thread can set handlers)."""
    global _previous
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm and _previous is None:
        _previous = current
    # Set even when Python already names ours: TensorFlow's C++ runtime may have replaced it underneath.
    signal.signal(signal.SIGTERM, _on_sigterm)


def release() -> None:
    """Gives SIGTERM back to the handler that had it before `watch`, and lowers the flag."""
    global _previous
    if threading.current_thread() is threading.main_thread() and _previous is not None:
        signal.signal(signal.SIGTERM, _previous)
        _previous = None
    _requested.clear()


def requested() -> bool:
    return _requested.is_set()


@contextlib.contextmanager
def stop_at_once():
    """Inside the block SIGTERM raises Stopped immediately: for waits that have nothing to save."""
    global _raise_at_once
    watch()
    _raise_at_once = True
    try:
        if requested():
            _on_sigterm(signal.SIGTERM, None)
        yield
    finally:
        _raise_at_once = False


class StopOnSigterm(keras.callbacks.Callback):
    """After a step during which SIGTERM came (to any task): commits a backup through `recorder` and raises
    Stopped naming `backup_dir` (the chief's, which a restart resumes from). Place it after the recorder."""

    def __init__(self, recorder, strategy: tf.distribute.Strategy, multi_worker: bool, backup_dir: str):
        super().__init__()
        self.recorder, self.strategy, self.multi_worker = recorder, strategy, multi_worker
        self.backup_dir = backup_dir

    def on_train_begin(self, logs=None):
        watch()

    def on_train_end(self, logs=None):
        release()

    def on_train_batch_end(self, batch, logs=None):
        if not self._anyone_asked():
            return
        step = self.recorder.backup_now().step
        release()
        raise Stopped(f"stopped by SIGTERM after step {step}: backup written to {self.backup_dir}; "
                      "start the same command again to resume from it")

    def _anyone_asked(self) -> bool:
        if not self.multi_worker:
            return requested()
        flag = self.strategy.run(lambda: tf.constant(int(requested()), tf.int32))
        return int(self.strategy.reduce("SUM", flag, axis=None)) > 0  # tf.distribute reduces by SUM or MEAN only
