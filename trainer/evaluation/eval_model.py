"""The model a finished job holds, as `trainer.evaluate` scores it and `trainer.export` exports it: a job dir, a
.keras file, or an exported SavedModel, checked against a schema.

    python -m trainer.evaluate --model out/run --data_dir out/data            # checkpoints/best.keras
    python -m trainer.evaluate --model out/run/model.keras --data_dir out/data
    python -m trainer.evaluate --model out/run/model --data_dir out/data      # the export (JPEG bytes in)

Every form carries what evaluation needs: the preprocessing (JOB_DIR/config.yaml, or the export's own copy) and
the heads with their class names (the export's labels.json; for a Keras file the job's export beside it, else
the heads and class counts of the model's outputs). `check_heads` compares those with the dataset's schema, so
a model of another schema is refused with the differences named instead of being scored against wrong labels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Mapping

import keras
import tensorflow as tf

# Imported for their registrations: load_model finds the project's serializable layers, losses and schedules.
import trainer.model.network  # noqa: F401
import trainer.objective.losses  # noqa: F401
import trainer.optim.schedules  # noqa: F401
from tfds_person_attrs.cli import UserError
from trainer.config_loader import config_from_yaml
from trainer.jobdir.paths import find_keras_model, recorded_paths
from trainer.serving.saved_model import INPUT_KEY, SIGNATURE, model_outputs

SAVED_MODEL_FILE = "saved_model.pb"
LABELS_FILE = "labels.json"


@dataclasses.dataclass(frozen=True)
class Head:
    kind: str | None  # "single" / "multi"; None when only the model's output shape is known
    classes: tuple[str, ...] | None  # None when only the number of classes is known
    num_classes: int


@dataclasses.dataclass
class EvalModel:
    """`probs(images, image_bytes)` -> {head: probabilities [N, C]}; Keras models take the decoded images, an
    export takes the JPEG bytes and decodes them itself (the same decode, traced into its graph)."""

    path: str
    kind: str  # "keras" or "saved_model"
    config: Any  # trainer.config.Config: the preprocessing the model was trained with
    job_dir: str | None  # where history.csv, logs/ and the default output folder are; None for a lone export
    heads: dict[str, Head]
    probs: Callable[[tf.Tensor, tf.Tensor], Mapping[str, tf.Tensor]]
    flip_tta: bool  # the probabilities average each image and its mirror
    # per-label decision thresholds of multi-label heads (trainer.objective.thresholds): the export's own;
    # None = the default threshold (a Keras model's JOB_DIR/thresholds.json is read against the dataset's schema)
    thresholds: dict[str, list[float]] | None = None


def is_saved_model(path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE))


def load(path: str, data_dir: str | None = None, flip_tta: bool = False) -> EvalModel:
    """The model at `path` (see the module docstring); `data_dir` replaces the data_dir its config names."""
    path = path.rstrip("/")
    if not tf.io.gfile.exists(path):
        raise UserError(f"--model {path}: no such file or folder; pass a job dir, a .keras file or an exported "
                        "model folder (JOB_DIR/model)")
    if is_saved_model(path):
        return _load_saved_model(path, data_dir, flip_tta)
    return _load_keras(path, data_dir, flip_tta)


def _load_keras(path: str, data_dir: str | None, flip_tta: bool) -> EvalModel:
    model, config, job_dir = load_job(path, data_dir)
    labels = os.path.join(recorded_paths(job_dir)[0].model_dir, LABELS_FILE)  # the same run's export names them
    heads = _heads_from_labels(labels) if tf.io.gfile.exists(labels) else None
    return from_keras(model, config, job_dir, flip_tta, heads, path)


def from_keras(model, config, job_dir: str | None = None, flip_tta: bool = False,
               heads: dict[str, Head] | None = None, path: str = "") -> EvalModel:
    """A Keras model in memory as an EvalModel; without `heads`, the heads and class counts of its outputs."""

    if heads is None:
        outputs = model.output if isinstance(model.output, Mapping) else dict(
            zip(model.output_names, model.output if isinstance(model.output, (list, tuple)) else [model.output]))
        heads = {name: Head(None, None, int(t.shape[-1])) for name, t in outputs.items()}
    infer = tf.function(lambda images: model_outputs(model, images, flip_tta))  # one trace, not eager per batch
    return EvalModel(path or model.name, "keras", config, job_dir, heads, lambda images, _bytes: infer(images),
                     flip_tta)


def _load_saved_model(path: str, data_dir: str | None, flip_tta: bool) -> EvalModel:
    labels, config_yaml = os.path.join(path, LABELS_FILE), os.path.join(path, "config.yaml")
    for needed in (labels, config_yaml):
        if not tf.io.gfile.exists(needed):
            raise UserError(f"{path}: no {os.path.basename(needed)} beside {SAVED_MODEL_FILE}; evaluate takes "
                            "folders written by trainer.export (or training), which carry it")
    with tf.io.gfile.GFile(labels) as f:
        vocabulary = json.load(f)
    baked_flip = bool(vocabulary.get("flip_tta", False))
    if flip_tta and not baked_flip:
        raise UserError(f"--flip_tta: {path} was exported without it; export with `python -m trainer.export "
                        "--flip_tta` or evaluate the job dir with --flip_tta")
    config = config_from_yaml(config_yaml)
    if data_dir:
        config = config.replace(**{"data.data_dir": data_dir})
    serve = tf.saved_model.load(path).signatures[SIGNATURE]
    print(f"loaded {path} (an exported SavedModel)", file=sys.stderr, flush=True)
    heads = _heads_from_labels(labels)

    def probs(_images, image_bytes):
        out = serve(**{INPUT_KEY: image_bytes})
        return {name: out[f"{name}_probs"] for name in heads}

    parent = os.path.dirname(path)
    job_dir = parent if tf.io.gfile.exists(os.path.join(parent, "config.yaml")) else None
    return EvalModel(path, "saved_model", config, job_dir, heads, probs, baked_flip, vocabulary.get("thresholds"))


def _heads_from_labels(path: str) -> dict[str, Head]:
    with tf.io.gfile.GFile(path) as f:
        attributes = json.load(f)["attributes"]
    return {name: Head(a["kind"], tuple(a["classes"]), len(a["classes"])) for name, a in attributes.items()}


def check_heads(model: EvalModel, schema, where: str) -> None:
    """Raises a UserError naming every difference between the model's heads and the dataset's schema."""
    problems = []
    missing = [n for n in schema.names if n not in model.heads]
    extra = [n for n in model.heads if n not in schema.names]
    if missing:
        problems.append(f"the model has no head for {missing}")
    if extra:
        problems.append(f"the dataset has no attribute {extra}")
    for a in schema.attributes:
        head = model.heads.get(a.name)
        if head is None:
            continue
        if head.kind is not None and head.kind != a.kind:
            problems.append(f"{a.name} is {head.kind}-label in the model, {a.kind}-label in the dataset")
        elif head.classes is not None and head.classes != tuple(a.classes):
            problems.append(f"{a.name} classes differ: model {list(head.classes)}, dataset {list(a.classes)}")
        elif head.num_classes != a.num_classes:
            problems.append(f"{a.name} has {head.num_classes} classes in the model, {a.num_classes} in the dataset")
    if problems:
        raise UserError(f"{model.path} does not fit dataset {where}: " + "; ".join(problems)
                        + "; use the dataset it was trained on (--data_dir)")


def load_job(job_dir_or_model: str, data_dir: str | None = None):
    """(model, config, job_dir) from a job dir (its best checkpoint wherever the run wrote it, else model.keras:
    `trainer.jobdir.paths.find_keras_model`), or from a .keras file in it or in its checkpoints/.

    The config is JOB_DIR/config.yaml, so preprocessing is the one the model was trained with; `data_dir`
    replaces its data.data_dir (the dataset moved, or is read from another machine).
    """

    path = job_dir_or_model.rstrip("/")
    choice = find_keras_model(path)
    if choice is None:
        raise UserError(f"no model in {path}: a job dir holds checkpoints/best.keras or model.keras (did its "
                        "training finish?); an exported model folder holds saved_model.pb")
    model_path, job_dir = choice.path, choice.job_dir
    if not tf.io.gfile.exists(model_path):
        raise UserError(f"{model_path}: no such file; pass a job dir or a .keras file inside one")
    config_yaml = os.path.join(job_dir, "config.yaml")
    if not tf.io.gfile.exists(config_yaml):
        raise UserError(f"{job_dir} has no config.yaml: pass a job dir written by trainer.task, or a .keras file "
                        "inside one")
    config = config_from_yaml(config_yaml)
    if data_dir:
        config = config.replace(**{"data.data_dir": data_dir})
    model = keras.saving.load_model(model_path, compile=False)
    print(choice, file=sys.stderr, flush=True)  # a diagnostic: stdout is for results
    return model, config, job_dir
