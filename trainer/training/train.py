"""One training run: `run(config) -> dict`, called by `python -m trainer.task`, tests and pipeline steps.

    python -c "from trainer.config_loader import load_config; from trainer.training.train import run; \
print(run(load_config(['--config', 'smoke', '--data_dir', 'out/data', '--job_dir', 'out/job']))['metrics'])"

JOB_DIR gets: .lock (while the run lives), config.yaml (written first), backup/ (trainer.jobdir.backup; kept,
marked finished, when the run ends), checkpoints/best.keras (best val_mean_balanced_accuracy,
trainer.training.callbacks), history.csv (per epoch: every head's metrics, their means, lr and momentum), logs/
(TensorBoard), metrics.json (per-head validation balanced accuracy / mA and accuracy, their means, epochs
completed), model.keras and model/ (the SavedModel, trainer.serving.saved_model). All but TensorBoard's files appear
whole (trainer.jobdir.atomic). Starting the same command again after a crash resumes from backup/ with the same step
count, schedule, weights and place in the input; a different config is refused unless train.allow_config_change
is set. Run again once finished, it trains nothing and says so; a larger train.epochs continues it.

Multi-worker (TF_CONFIG, every task runs the same command with the same --job_dir): only the chief holds the
lock and writes JOB_DIR; every other task writes the same outputs into JOB_DIR/.task_scratch/<task>, removed
at its end (saving can involve collectives, so every task saves), and every task restores from the chief's
backup, which is why the job dir must be shared storage (gs://, NFS) across machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re

import keras
import tensorflow as tf

from trainer.config import ConfigError, check_against_schema
from trainer.input.data import dataset_info, make_eval_dataset, make_train_dataset, train_examples, with_dataset
from trainer.jobdir import atomic, backup
from trainer.jobdir.joblock import JobLock
from trainer.jobdir.paths import job_paths, layout_record, tuning_trial
from trainer.model.augment import build_label_mixing
from trainer.model.network import build_model
from trainer.objective.log_keys import MONITOR
from trainer.objective.losses import make_losses
from trainer.objective.metrics import MEAN_ACCURACY, VAL, accuracy_keys, balanced_keys, head_metrics
from trainer.optim.ema import keep_ema_weights
from trainer.optim.schedules import make_optimizer, make_schedule
from trainer.serving import saved_model as export
from trainer.training import cluster, distribute, hypertune, shutdown
from trainer.training.callbacks import NonFiniteLossError, make_callbacks
from trainer.training.history import Recorder, best
from trainer.training.loop import Loop, Schedule, gather_steps
from trainer.training.progress import EpochLine, fit_verbosity

log = logging.getLogger(__name__)
# Fields that may change between a run and its resumption: where things are, how much is printed, and how the
# replicas are laid out (the global batch and steps per epoch they lead to are compared instead).
# train.epochs may grow: a finished run continues (the schedule is the new length's, from the step reached).
RESUME_MAY_CHANGE = ("data.data_dir", "train.job_dir", "train.verbose", "train.allow_config_change",
                     "train.log_example_ids", "train.export", "train.epochs", "train.steps_per_loop",
                     "distribute.strategy", "distribute.cpu_devices", "distribute.jit_compile",
                     "distribute.startup_timeout")


class PeerLostError(RuntimeError):
    """Another task of the cluster stopped answering: the collectives cannot go on."""


def run(config, strategy: tf.distribute.Strategy | None = None, extra_callbacks=()) -> dict:
    """Trains per `config`; returns {'metrics', 'steps', 'history', 'job_dir', 'model'}."""
    task = cluster.from_env()
    config = with_dataset(config)  # config.yaml names the dataset it trained on
    paths = job_paths(config.train.job_dir)
    with JobLock(paths.job_dir) if task.is_chief else contextlib.nullcontext():
        state = backup.read_state(paths.backup_dir)
        if state is not None:
            _check_resume(config, backup.config_differences(state.config, config.to_dict(), RESUME_MAY_CHANGE),
                          paths.backup_dir, state)
            if state.finished and state.epoch >= config.train.epochs:
                return _finished(config, paths, state)
        # Before anything touches TensorFlow's devices: collective ops must be configured at start-up.
        strategy = strategy or distribute.make_strategy(config, task)
        out = paths if task.is_chief else job_paths(task.scratch_dir(paths.job_dir), environ={})
        if not task.is_chief:
            _remove_scratch(out.job_dir)  # left by a killed run
        try:
            return _train(config, strategy, task, paths, out, state, extra_callbacks)
        except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError) as e:
            if not task.is_multi_worker:
                raise
            raise PeerLostError(
                f"{task.name} lost contact with the rest of the cluster ({_peer_error(e)}); training cannot "
                f"continue without every task. Start every task's command again: they resume from "
                f"{paths.backup_dir}") from None
        finally:
            shutdown.release()
            if not task.is_chief:
                _remove_scratch(out.job_dir)


def _peer_error(e: tf.errors.OpError) -> str:
    """The line of TensorFlow's error that says what happened to the peer (its first line is about graph nodes)."""
    clues = ("unhealthy", "is down", "failed to connect", "connection refused", "aborted by", "deadline")
    lines = [line.strip() for line in (e.message or "").splitlines() if line.strip()]
    found = next((line for line in lines if any(c in line.lower() for c in clues)), type(e).__name__)
    return re.sub(r"\{\{[^}]*\}\}\s*", "", found)[:200]


def _remove_scratch(folder: str) -> None:
    if tf.io.gfile.exists(folder):
        tf.io.gfile.rmtree(folder)
    if "://" not in folder:  # (object stores have no empty folders)
        with contextlib.suppress(OSError):  # not empty: another task still uses it
            os.rmdir(os.path.dirname(folder))


def _check_resume(config, differences: list[str], backup_dir: str, state) -> None:
    if not differences:
        return
    run = "a finished run" if state.finished else "a run"
    what = f"{backup_dir} was made by {run} with another config: {'; '.join(differences)}"
    if not config.train.allow_config_change:
        raise ConfigError(f"{what}. Resume with the same config, pass --train.allow_config_change=true to resume "
                          "with these changes, or start afresh with another --job_dir")
    log.warning("resuming with a changed config (train.allow_config_change): %s", what)


def _train(config, strategy, task, paths, out, state, extra_callbacks) -> dict:
    info = dataset_info(config.data)
    schema = info.schema
    check_against_schema(config, schema)  # unknown head names fail before any work
    replicas = strategy.num_replicas_in_sync
    global_batch = distribute.global_batch_size(config, replicas)
    n_train = train_examples(config.data)  # less data.exclude_ids
    steps_per_epoch = config.train.steps_per_epoch or n_train // global_batch
    if steps_per_epoch < 1:
        raise ConfigError(f"the train split has {n_train} examples, fewer than one global batch of {global_batch}"
                          f" ({replicas} replica(s)); lower train.batch_size or set train.steps_per_epoch")
    total_steps = steps_per_epoch * config.train.epochs
    if state is not None:
        _check_resume(config, [f"{name}: {a} -> {b}" for name, a, b in (
            ("global batch", state.global_batch, global_batch), ("steps per epoch", state.steps_per_epoch,
                                                                  steps_per_epoch)) if a != b], paths.backup_dir,
                      state)
        state = dataclasses.replace(state, config=config.to_dict(), finished=False)  # (saved as it continues)
    else:
        state = backup.RunState(0, 0, (), config.to_dict(), global_batch, steps_per_epoch)
    if task.is_chief:
        _remove_stale_evaluations(paths.job_dir)
    for folder in (out.job_dir, out.checkpoints_dir, out.backup_dir):
        atomic.sweep(folder)  # temporary files of a killed run (this task alone writes these folders)
    atomic.write_text(out.config_yaml, config.to_yaml())
    atomic.write_text(out.layout_json, layout_record(out))  # where readers find best.keras and the export
    log.info("%s: %d train examples, global batch %d on %d replica(s), %d steps/epoch, %d steps%s",
             schema.name, n_train, global_batch, replicas, steps_per_epoch, total_steps,
             f" (resuming after epoch {state.epoch}, step {state.step})" if state.step else "")

    keras.utils.set_random_seed(config.train.seed)
    previous_policy = distribute.set_precision(config)
    try:
        model = compiled_model(config, schema, strategy, steps_per_epoch,
                               info.class_counts.get(config.data.train_split), n_train)
        with strategy.scope():  # its random state is a variable, mirrored like the model's
            mixing = build_label_mixing(config.augment, schema)
        loop = Loop(model, strategy, make_eval_dataset(config, batch=1, schema=schema).element_spec, mixing)
        if state.step:
            backup.restore(model, paths.backup_dir, state, mixing)
        steps_seen = gather_steps(strategy, state.step)
        if len(set(steps_seen)) > 1:
            raise ConfigError(f"the tasks restored different backups (steps {steps_seen}): every task must see the "
                              f"chief's {paths.backup_dir}, so the job dir has to be shared storage (gs://, NFS)")
        recorder = Recorder(out, state, config.train.backup_every_steps, mixing)
        if state.history:
            recorder.write_csv()  # drops rows of an epoch that was not committed before the crash

        train_ds = strategy.distribute_datasets_from_function(
            lambda ctx: _train_pipeline(config, ctx, global_batch, schema, state.step, paths.job_dir))
        val_ds = strategy.distribute_datasets_from_function(lambda ctx: _eval_pipeline(
            config, ctx, global_batch, schema))
        verbose, progress = fit_verbosity(config.train.verbose) if task.is_chief else (0, [])
        for line in progress:  # '(best)' only on an epoch that beats the epochs done before a resume too
            if isinstance(line, EpochLine) and state.history:
                line.best = best(state.history, MONITOR) or -math.inf
        callbacks = [*make_callbacks(out, schema, best(state.history, MONITOR), task.is_chief, config),
                     *progress, *extra_callbacks, recorder,  # the recorder last: it commits what the others logged
                     shutdown.StopOnSigterm(recorder, strategy, task.is_multi_worker, paths.backup_dir)]
        callback_list = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, model=model,
                                                     verbose=verbose, epochs=config.train.epochs,
                                                     steps=steps_per_epoch)
        start_batch = min(steps_per_epoch, max(0, state.step - state.epoch * steps_per_epoch))
        try:
            loop.fit(train_ds, val_ds, Schedule(config.train.epochs, steps_per_epoch, state.epoch, start_batch,
                                                config.train.steps_per_loop, config.train.backup_every_steps),
                     callback_list)
        except (NonFiniteLossError, backup.NonFiniteWeightsError) as e:
            raise type(e)(f"{e}. {_non_finite_advice(recorder.keep_finite(), paths.backup_dir)}") from None
        metrics = _final_metrics(recorder.rows, schema)
        atomic.write_text(out.metrics_json, json.dumps(metrics, indent=2))
        keep_ema_weights(model)  # the saved, exported and returned model holds the averaged weights (trainer.optim.ema)
        atomic.save_with(out.model_keras, model.save)
        if config.train.export:
            atomic.replace_dir(out.model_dir, lambda d: export.export_model(model, config, schema, d))
        if task.is_chief and tuning_trial():  # a Vertex AI tuning trial: report how it did
            top = metrics[f"best_{MONITOR}"]
            hypertune.report_hyperparameter_tuning_metric(MONITOR, top if top is not None else metrics[MONITOR],
                                                       step=total_steps)
        # The run is complete: the backup stays (marked finished) so that a larger train.epochs continues it.
        recorder.state = backup.mark_finished(out.backup_dir)
    finally:
        keras.config.set_dtype_policy(previous_policy)  # the policy is global: do not leak it into the caller
    history = {k: [r.get(k) for r in recorder.rows] for k in (recorder.rows[-1] if recorder.rows else {})}
    return {"metrics": metrics, "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
            "history": history, "job_dir": paths.job_dir, "model": model}


def _finished(config, paths, state) -> dict:
    """What running a finished job again does: say so, train nothing."""
    top = best(state.history, MONITOR)
    at = next((r["epoch"] + 1 for r in state.history if top is not None and r.get(MONITOR) == top), None)
    log.info("%s is finished: %d epochs done (train.epochs=%d), best %s %s; the model is in %s (SavedModel %s). "
             "Raise --train.epochs to train it further", paths.job_dir, state.epoch, config.train.epochs, MONITOR,
             f"{top:.4f} (epoch {at})" if top is not None else "none", paths.model_keras, paths.model_dir)
    metrics = {}
    if tf.io.gfile.exists(paths.metrics_json):
        with tf.io.gfile.GFile(paths.metrics_json) as f:
            metrics = json.load(f)
    history = {k: [r.get(k) for r in state.history] for k in (state.history[-1] if state.history else {})}
    return {"metrics": metrics, "steps": state.step, "history": history, "job_dir": paths.job_dir, "model": None}


def _train_pipeline(config, ctx, global_batch: int, schema, step: int, job_dir: str) -> tf.data.Dataset:
    """This worker's training stream, from the example where `step` steps of the run left it."""
    per_pipeline = global_batch // ctx.num_input_pipelines
    batches_per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    ids_log = (os.path.join(job_dir, "example_ids", f"pipeline-{ctx.input_pipeline_id}.csv")
               if config.train.log_example_ids else "")
    return make_train_dataset(config, ctx.get_per_replica_batch_size(global_batch), schema, ctx.num_input_pipelines,
                              ctx.input_pipeline_id, step * per_pipeline, ids_log, batches_per_step)


def _non_finite_advice(state, backup_dir: str) -> str:
    """What to do after a non-finite loss, true to what the backup holds (see Recorder.keep_finite)."""
    fix = "lower optim.max_lr, set optim.clipnorm, or use mixed_bfloat16 instead of mixed_float16"
    if state is None:
        return (f"No backup holds a state whose loss was finite, so there is nothing to resume: {fix}, and start "
                "again")
    return (f"{backup_dir} holds step {state.step} (epoch {state.epoch} done), the last state whose loss was finite: "
            f"{fix}, and resume from it with --train.allow_config_change=true")


def _remove_stale_evaluations(job_dir: str) -> None:
    """Evaluations and chosen thresholds describe the model this run is about to replace: they go, with a line."""
    if not tf.io.gfile.isdir(job_dir):
        return
    stale = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(job_dir)
                   if n.rstrip("/") == "thresholds.json" or n.startswith("eval_"))
    for name in stale:
        path = os.path.join(job_dir, name)
        (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)
    if stale:
        log.warning("removed %s from %s: made for the model this run replaces (evaluate the new one again)",
                    ", ".join(stale), job_dir)


def compiled_model(config, schema, strategy, steps_per_epoch: int, class_counts=None,
                   num_train: int = 0) -> keras.Model:
    """The model with its optimizer, schedule, losses and metrics, made in the strategy's scope; class_counts and
    num_train (the training split's) feed class balancing and the weighted BCE."""
    with strategy.scope():
        model = build_model(schema, config)
        lr_scale = distribute.lr_scale(config, strategy.num_replicas_in_sync)
        schedule = make_schedule(config.optim, steps_per_epoch * config.train.epochs, steps_per_epoch, lr_scale)
        losses, loss_weights = make_losses(schema, config.loss, class_counts, num_train)
        # The backbone's variables learn at train.backbone_lr_multiplier x the heads' rate.
        optimizer = make_optimizer(config.optim, schedule, model.get_layer("backbone").trainable_variables,
                                   config.train.backbone_lr_multiplier)
        model.compile(optimizer=optimizer, loss=losses, loss_weights=loss_weights, metrics=head_metrics(schema),
                      jit_compile=distribute.jit_compile(config))
    return model


def _eval_pipeline(config, ctx, global_batch: int, schema) -> tf.data.Dataset:
    """This worker's share of the validation split, in per-replica batches (validation_steps caps the steps)."""
    ds = make_eval_dataset(config, config.data.eval_split, ctx.get_per_replica_batch_size(global_batch), schema,
                           ctx.num_input_pipelines, ctx.input_pipeline_id)
    if config.train.validation_steps:
        ds = ds.take(config.train.validation_steps * ctx.num_replicas_in_sync // ctx.num_input_pipelines)
    return ds


def _final_metrics(rows, schema) -> dict:
    """The last epoch's per-head validation balanced accuracy / mA and accuracy (single-label heads), their
    means, the best monitored mean of the run, and the epoch count."""
    last = rows[-1] if rows else {}

    def per_head(keys):
        return {name: float(last[key]) for name, key in keys.items() if key in last}

    out = {"val_balanced_accuracy": per_head(balanced_keys(schema, VAL)),
           "val_accuracy": per_head(accuracy_keys(schema, VAL)),
           MONITOR: float(last.get(MONITOR, math.nan)), f"best_{MONITOR}": best(rows, MONITOR),
           "epochs_completed": len(rows)}
    if VAL + MEAN_ACCURACY in last:
        out[VAL + MEAN_ACCURACY] = float(last[VAL + MEAN_ACCURACY])
    return out
