"""One training run: `run(config) -> dict`, called by `python -m trainer.task`, tests and pipeline steps.

    python -c "from trainer.config import load_config; from trainer.train import run; \
print(run(load_config(['--config', 'smoke', '--data_dir', 'out/data', '--job_dir', 'out/job']))['metrics'])"

JOB_DIR gets: config.yaml (written first), backup/ (BackupAndRestore; removed when the run finishes),
checkpoints/best.keras (best val_mean_accuracy), history.csv (per epoch, with lr and momentum), logs/
(TensorBoard), metrics.json (per-head validation accuracy and their mean), model.keras and model/ (the
SavedModel from trainer.export). Starting the same command again after a crash
resumes from backup/ with the same step count, schedule and weights.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from trainer import distribute, export, vertex
from trainer.callbacks import MONITOR, make_callbacks
from trainer.config import check_loss_weights
from trainer.data import dataset_info, make_eval_dataset, make_train_dataset
from trainer.losses import make_losses
from trainer.metrics import accuracy_keys, head_metrics
from trainer.model import build_model
from trainer.paths import job_paths
from trainer.progress import fit_verbosity
from trainer.schedules import make_optimizer, make_schedule

log = logging.getLogger(__name__)


def _write(path: str, text: str) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def run(config, strategy: tf.distribute.Strategy | None = None, extra_callbacks=()) -> dict:
    """Trains per `config`; returns {'metrics', 'steps', 'history', 'job_dir', 'model'}."""
    paths = job_paths(config.train.job_dir)
    info = dataset_info(config.data)
    schema = info.schema
    check_loss_weights(config, schema.names)  # unknown head names fail before any work

    strategy = strategy or distribute.make_strategy(config)
    replicas = strategy.num_replicas_in_sync
    global_batch = distribute.global_batch_size(config, replicas)
    n_train = info.num_examples.get(config.data.train_split, 0)
    steps_per_epoch = config.train.steps_per_epoch or max(1, n_train // global_batch)
    total_steps = steps_per_epoch * config.train.epochs
    chief = distribute.is_chief()
    resuming = tf.io.gfile.exists(f"{paths.backup_dir}/training_metadata.json")
    if chief:
        _write(paths.config_yaml, config.to_yaml())
    log.info("%s: %d train examples, global batch %d on %d replica(s), %d steps/epoch, %d steps%s",
             schema.name, n_train, global_batch, replicas, steps_per_epoch, total_steps,
             " (resuming from backup)" if resuming else "")

    keras.utils.set_random_seed(config.train.seed)
    previous_policy = distribute.set_precision(config)
    try:
        with strategy.scope():
            model = build_model(schema, config)
            schedule = make_schedule(config.optim, total_steps, steps_per_epoch, distribute.lr_scale(config, replicas))
            losses, loss_weights = make_losses(schema, config.loss, info.class_counts.get(config.data.train_split))
            model.compile(optimizer=make_optimizer(config.optim, schedule), loss=losses, loss_weights=loss_weights,
                          metrics=head_metrics(schema), jit_compile=distribute.jit_compile(config))
        train_ds = make_train_dataset(config, global_batch, schema)
        val_ds = make_eval_dataset(config, config.data.eval_split, _eval_batch(info, config, global_batch, replicas),
                                   schema)
        callbacks = make_callbacks(paths, schema, config.train.backup_every_steps, chief, resuming)
        verbose, progress = fit_verbosity(config.train.verbose)
        history = model.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=steps_per_epoch,
                            validation_data=val_ds, validation_steps=config.train.validation_steps or None,
                            callbacks=[*callbacks, *progress, *extra_callbacks], verbose=verbose)
        metrics = _final_metrics(history.history, schema, callbacks)
        if chief:
            _write(paths.metrics_json, json.dumps(metrics, indent=2))
            model.save(paths.model_keras)
            export.export_model(model, config, schema, paths.model_dir)
            if os.environ.get("CLOUD_ML_TRIAL_ID"):  # a Vertex AI tuning trial: tell the service how it did
                best = metrics[f"best_{MONITOR}"]
                vertex.report_hyperparameter_tuning_metric(MONITOR, best if best is not None else metrics[MONITOR],
                                                           step=total_steps)
    finally:
        keras.config.set_dtype_policy(previous_policy)  # the policy is global: do not leak it into the caller
    return {"metrics": metrics, "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
            "history": history.history, "job_dir": paths.job_dir, "model": model}


def _final_metrics(history: dict, schema, callbacks) -> dict:
    """The last epoch's per-head validation accuracy and mean, plus the best mean seen by the checkpoint."""
    last = {k: v[-1] for k, v in history.items() if v}
    per_head = {name: float(last[key]) for name, key in accuracy_keys(schema, "val_").items() if key in last}
    best = [cb.best for cb in callbacks if isinstance(cb, keras.callbacks.ModelCheckpoint)]
    return {"val_accuracy": per_head, MONITOR: float(last.get(MONITOR, float("nan"))),
            f"best_{MONITOR}": float(best[0]) if best and best[0] is not None else None,
            "epochs_completed": len(next(iter(history.values()), []))}


def _eval_batch(info, config, global_batch: int, replicas: int) -> int:
    """The validation batch: the global batch, unless the split is smaller than that.

    Under a strategy, Keras 3.15 builds the model by averaging the first validation batch over replicas
    (`strategy.reduce` in `_maybe_symbolic_build`), which fails when that batch is partial and splits unevenly
    (e.g. 6 images on 2 replicas of 4). A first batch that is a multiple of the replica count always splits evenly.
    """
    n_val = info.num_examples.get(config.data.eval_split, 0)
    return min(global_batch, max(replicas, n_val - n_val % replicas))
