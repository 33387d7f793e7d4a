"""The run's fault-tolerance state in JOB_DIR/backup: weights, optimizer, step, epochs done and their history.

    python -c "from trainer.jobdir.backup import read_state; print(read_state('out/job/backup'))"

A backup is one commit: `weights-<step>.npz` (every model and optimizer variable, the step counter included,
so the LR/momentum schedule continues exactly) written whole, then `state.json` naming it, written whole;
`state.json` is the commit point, so a kill at any moment leaves the previous backup intact. The state also
carries each completed epoch's logs (history.csv and metrics.json are re-rendered from them on resume, so
every epoch appears once) and the config that made it (a resumed run compares its own).

Only finite weights are committed: a step that blew the weights up raises instead, and the last finite backup
stays, so resuming never continues from blown-up weights. Variables are saved by value in a fixed order
(model.variables, random seed states included, then optimizer.variables) instead of `save_weights`, whose
file also holds metric state that does not exist yet when a run restores before its first step.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.jobdir import atomic

STATE = "state.json"


class NonFiniteWeightsError(RuntimeError):
    """The weights hold NaN or inf: the step that produced them is not kept."""


class BackupMismatchError(ValueError):
    """The backup's variables do not fit the model being resumed."""


@dataclasses.dataclass(frozen=True)
class RunState:
    epoch: int  # completed epochs
    step: int  # optimizer steps done (may be mid-epoch)
    history: tuple[dict, ...]  # the logs of each completed epoch, in order
    config: dict  # Config.to_dict() of the run that made the backup
    global_batch: int
    steps_per_epoch: int
    weights: str = ""  # file name in the backup dir

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "history": list(self.history)}, indent=1)


def read_state(backup_dir: str) -> RunState | None:
    path = os.path.join(backup_dir, STATE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        d = json.loads(f.read())
    return RunState(**{**d, "history": tuple(d["history"])})


def _variables(model) -> list:
    return [*model.variables, *model.optimizer.variables]


def save(model, backup_dir: str, state: RunState) -> RunState:
    """Commits weights + state; raises NonFiniteWeightsError (keeping the previous backup) if any is not finite."""
    values = [np.asarray(v.numpy()) for v in _variables(model)]
    bad = [v.path for v, x in zip(_variables(model), values) if x.dtype.kind == "f" and not np.isfinite(x).all()]
    if bad:
        raise NonFiniteWeightsError(f"{len(bad)} variable(s) hold NaN or inf after step {state.step} "
                                    f"(first: {bad[0]})")
    buf = io.BytesIO()
    np.savez(buf, *values)
    name = f"weights-{state.step:09d}.npz"
    atomic.write_bytes(os.path.join(backup_dir, name), buf.getvalue())
    state = dataclasses.replace(state, weights=name)
    atomic.write_text(os.path.join(backup_dir, STATE), state.to_json())
    for old in tf.io.gfile.listdir(backup_dir):  # earlier commits are no longer referenced
        if old.startswith("weights-") and old != name:
            tf.io.gfile.remove(os.path.join(backup_dir, old))
    return state


def restore(model, backup_dir: str, state: RunState) -> None:
    """Assigns the backup's values to the model's and optimizer's variables (the optimizer must be built)."""
    with tf.io.gfile.GFile(os.path.join(backup_dir, state.weights), "rb") as f:
        arrays = np.load(io.BytesIO(f.read()))
        values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    variables = _variables(model)
    shapes = [tuple(v.shape) for v in variables]
    if len(values) != len(variables) or any(s != x.shape for s, x in zip(shapes, values)):
        first = next((v.path for v, x in zip(variables, values) if tuple(v.shape) != x.shape), "count")
        raise BackupMismatchError(
            f"{backup_dir} holds {len(values)} variables that do not fit this model's {len(variables)} "
            f"(first difference: {first}): the model or optimizer changed since the backup was made. Resume with "
            "the config that made it, or start afresh in another --job_dir")
    for v, x in zip(variables, values):
        v.assign(x)


def remove(backup_dir: str) -> None:
    if tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore=(), prefix: str = "") -> list[str]:
    """['optim.max_lr: 0.05 -> 0.1', ...] for every field that differs (dotted names, nested sections)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if name in ignore:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and name != "loss.weights":
            out += config_differences(a, b, ignore, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
