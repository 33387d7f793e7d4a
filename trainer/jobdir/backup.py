"""The run's fault-tolerance state in JOB_DIR/backup: weights, optimizer, random states, step, epochs done.

    python -c "from trainer.jobdir.backup import read_state; print(read_state('out/job/backup'))"

A backup is one commit: a TensorFlow checkpoint `ckpt-<n>` written by `tf.train.CheckpointManager` (every
model variable, random seed states included, every optimizer variable, the step counter and the EMA included,
and the MixUp/CutMix random states), then `state.json` naming it, written whole. `state.json` is the commit
point: a kill at any moment leaves the previous commit intact (the manager keeps the last KEEP checkpoints, so
the one `state.json` names, and the one before it, are never deleted by the next save). The state also carries
each completed epoch's logs (history.csv and metrics.json are re-rendered from them on resume, so every epoch
appears once) and the config that made it (a resumed run compares its own).

Variables are saved under their Keras path (`model/backbone.Sconv1.Skernel` is `backbone/conv1/kernel`), not
Keras' own checkpoint tracking, which names a model's variables by their position in the optimizer's lists.
A restore first compares the checkpoint's names and shapes with the model's and refuses a backup that does not
fit, naming the variables (`BackupMismatchError`), so two variables can never be swapped silently.

Only finite weights are committed (a step that blew them up raises NonFiniteWeightsError), and `state.json`
keeps the commit before it (`previous`): when the next loss is not finite, `roll_back` makes that one the
committed state again, so the backup always holds weights whose loss was seen finite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.jobdir import atomic

STATE = "state.json"
KEEP = 3  # checkpoints the manager keeps: the committed one, the one before it, one being written
_PREFIX = "ckpt"
GROUPS = ("model", "optimizer", "mixing")


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
    checkpoint: str = ""  # checkpoint prefix (file name, no folder) in the backup dir
    previous: dict | None = None  # the commit before this one (its own `previous` dropped)
    finished: bool = False  # every epoch done and every output written (a run again says so, trains nothing)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "history": list(self.history)}

    @classmethod
    def from_dict(cls, d: dict) -> RunState:
        return cls(**{**d, "history": tuple(d["history"])})


def read_state(backup_dir: str) -> RunState | None:
    path = os.path.join(backup_dir, STATE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        d = json.loads(f.read())
    if "checkpoint" not in d:
        raise BackupMismatchError(f"{backup_dir} was written by an earlier trainer version (weights-*.npz, not a "
                                  "TensorFlow checkpoint): finish that run with the version that made it, or start "
                                  "afresh in another --job_dir")
    return RunState.from_dict(d)


def tracked_variables(model, mixing=None) -> dict[str, dict[str, Any]]:
    """{group: {name: variable}}: what a backup holds, by name. Groups: model (Keras paths; a random seed state
    under its layer's name, since Keras numbers seed generators per process), optimizer (Keras paths less the
    optimizer's own name, numbered per process too), mixing (the MixUp/CutMix layers' and the choice's states)."""
    seeds = {id(state): name for name, state in _seed_states(model)}
    groups = {"model": [(seeds.get(id(v), v.path), v) for v in model.variables],
              "optimizer": [(v.path.split("/", 1)[-1], v) for v in model.optimizer.variables],
              "mixing": mixing_variables(mixing) if mixing is not None else []}
    out = {}
    for group, variables in groups.items():
        named: dict[str, Any] = {}
        for name, v in variables:
            if name in named and named[name] is not v:
                raise BackupMismatchError(f"two {group} variables share the name {name!r}: name the layers "
                                          "uniquely so that a backup can tell them apart")
            named[name] = v
        out[group] = named
    return out


def _seed_states(layer):
    """(name, state variable) of every random seed generator of `layer` and the layers inside it."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        generators = getattr(sub, "_seed_generators", [])
        for i, generator in enumerate(generators):
            yield f"{sub.name}/seed_generator{i or ''}_state", generator.state


def mixing_variables(mixing) -> list:
    """(name, variable) of the random states of trainer.model.augment.LabelMixing (its MixUp/CutMix layers and
    the choice between them): a resumed run draws the same mixing as one never stopped."""
    return [*(pair for layer in mixing.mixers for pair in _seed_states(layer)), ("choice_state", mixing.choice.state)]


_CHECKPOINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checkpoint(model, mixing) -> tf.train.Checkpoint:
    """The model's checkpoint object, made once per set of variables: a new one would trace its save again."""
    groups = tracked_variables(model, mixing)
    key = tuple((group, name, id(v)) for group, named in groups.items() for name, v in named.items())
    cached = _CHECKPOINTS.get(model)
    if cached is None or cached[0] != key:
        cached = _CHECKPOINTS[model] = (key, tf.train.Checkpoint(**groups))
    return cached[1]


def _manager(checkpoint, backup_dir: str) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(checkpoint, backup_dir, max_to_keep=KEEP, checkpoint_name=_PREFIX)


def _next_number(backup_dir: str) -> int:
    """1 + the highest checkpoint number in the folder: a save never overwrites files a commit may name."""
    if not tf.io.gfile.isdir(backup_dir):
        return 1
    numbers = [int(m.group(1)) for name in tf.io.gfile.listdir(backup_dir)
               if (m := re.fullmatch(rf"{_PREFIX}-(\d+)\.index", name))]
    return max(numbers, default=0) + 1


def save(model, backup_dir: str, state: RunState, mixing=None) -> RunState:
    """Commits a checkpoint of the model, optimizer and `mixing` random states with `state`; returns the state
    as committed. Raises NonFiniteWeightsError (keeping the previous commit) if any variable is not finite.
    A commit at the step of the current one (the epoch's end after a mid-epoch backup) reuses its checkpoint."""
    current = read_state(backup_dir)
    if current is not None and current.step == state.step and current.checkpoint:
        previous = current.previous
        name = current.checkpoint
    else:
        groups = tracked_variables(model)  # (the mixing states are integers: nothing to check there)
        bad = [path for named in groups.values() for path, v in named.items()
               if np.dtype(v.dtype).kind == "f" and not np.isfinite(np.asarray(v.numpy())).all()]
        if bad:
            raise NonFiniteWeightsError(f"{len(bad)} variable(s) hold NaN or inf after step {state.step} "
                                        f"(first: {bad[0]})")
        tf.io.gfile.makedirs(backup_dir)
        path = _manager(_checkpoint(model, mixing), backup_dir).save(checkpoint_number=_next_number(backup_dir))
        name = os.path.basename(path)
        previous = _without_previous(current)
    state = dataclasses.replace(state, checkpoint=name, previous=previous)
    atomic.write_text(os.path.join(backup_dir, STATE), json.dumps(state.to_dict(), indent=1))
    return state


def _without_previous(state: RunState | None) -> dict | None:
    return None if state is None else {**state.to_dict(), "previous": None, "finished": False}


def roll_back(backup_dir: str, unconfirmed_from_step: int) -> RunState | None:
    """Makes the commit before the current one the committed state again when the current one was taken at or
    after `unconfirmed_from_step` (its weights' loss was never seen finite); returns the committed state, None
    when nothing confirmed is left (the backup is then removed)."""
    state = read_state(backup_dir)
    if state is None or state.step < unconfirmed_from_step:
        return state
    previous = RunState.from_dict(state.previous) if state.previous else None
    if previous is None or previous.step >= unconfirmed_from_step or not _exists(backup_dir, previous.checkpoint):
        remove(backup_dir)
        return None
    atomic.write_text(os.path.join(backup_dir, STATE), json.dumps(previous.to_dict(), indent=1))
    return previous


def mark_finished(backup_dir: str) -> RunState:
    """Records that the run wrote all its outputs: the committed state, finished."""
    state = dataclasses.replace(read_state(backup_dir), finished=True)
    atomic.write_text(os.path.join(backup_dir, STATE), json.dumps(state.to_dict(), indent=1))
    return state


def _exists(backup_dir: str, checkpoint: str) -> bool:
    return tf.io.gfile.exists(os.path.join(backup_dir, checkpoint + ".index"))


def restore(model, backup_dir: str, state: RunState, mixing=None) -> None:
    """Assigns the committed checkpoint's values to the model's, optimizer's and mixing's variables by name (the
    optimizer must be built). A checkpoint whose names or shapes differ is refused before anything is assigned."""
    prefix = os.path.join(backup_dir, state.checkpoint)
    # (the reader, not tf.train.list_variables, which takes a ram:// prefix for a folder)
    stored = tf.compat.v1.train.NewCheckpointReader(prefix).get_variable_to_shape_map()
    expected = {}
    for group, named in tracked_variables(model, mixing).items():
        for path, v in named.items():
            key = f"{group}/{_escape(path)}/.ATTRIBUTES/VARIABLE_VALUE"
            expected[key] = (f"{group} {path}", tuple(v.shape))
    stored_vars = {k: tuple(s) for k, s in stored.items()  # (the manager's own save_counter is not ours)
                   if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and k.split("/", 1)[0] in GROUPS}
    missing = sorted(name for key, (name, _) in expected.items() if key not in stored_vars)
    unexpected = sorted(_readable(key) for key in stored_vars if key not in expected)
    reshaped = [f"{name} {stored_vars[key]} -> {shape}" for key, (name, shape) in expected.items()
                if key in stored_vars and stored_vars[key] != shape]
    if missing or unexpected or reshaped:
        parts = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''} ({len(items)})"
                 for label, items in (("not in the backup", missing), ("not in this model", unexpected),
                                      ("another shape", reshaped)) if items]
        raise BackupMismatchError(
            f"{prefix} does not fit this model ({'; '.join(parts)}): the model or optimizer changed since the "
            "backup was made. Resume with the config that made it, or start afresh in another --job_dir")
    _checkpoint(model, mixing).read(prefix).assert_existing_objects_matched()


def _escape(path: str) -> str:
    """A Keras path as TensorFlow's checkpoint names a dict key (its escaping of '.' and '/')."""
    return path.replace(".", "..").replace("/", ".S")


def _readable(key: str) -> str:
    group, _, rest = key.partition("/")
    name = rest.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
    return f"{group} {re.sub(r'[.](.)', lambda m: '/' if m.group(1) == 'S' else m.group(1), name)}"


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
