"""Label-noise audit of the train split: out-of-fold probabilities from K trainings, then cleanlab per head.

    python -m trainer.label_audit --data_dir out/data --job_dir out/audit --config demo --folds 3
    python -m trainer.label_audit --data_dir out/hvc --job_dir out/audit --config hvc --train.epochs=20
    python -m trainer.task --data_dir out/data --job_dir out/clean --config demo \\
        --data.exclude_ids=out/audit/label_issues.csv        # train without the flagged examples

The train split is cut into --folds parts (default 5) by the near-duplicate group each record carries, so an
image and its near-duplicates are never on both sides of a fold (records without groups: by example, and the
summary says so). Fold k trains with the project's own training run (`trainer.training.train.run`, the config and
overrides given here) on the other parts, in JOB_DIR/folds/k, and predicts its own part; every train example
thus gets probabilities from a model that never saw it. cleanlab's `find_label_issues` then flags, per head,
the examples whose given label disagrees with those probabilities (trainer/evaluation/label_issues.py).

Outputs in JOB_DIR: label_issues.csv (id = the image path of the annotations CSV, head, rank, given and predicted
label, quality = the out-of-fold probability of the given label), label_issues.json (per head: examples audited,
issues found) and label_issues.html (the most suspicious images per head, --show of each). One line per fold;
a fold that finished (JOB_DIR/folds/k/held_out_probs.npz) is not trained again when the same command is rerun.
Needs the `audit` extra: pip install -e ".[audit]".
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time

import keras
import numpy as np

from tfds_person_attrs import cli
from trainer.config import ConfigError
from trainer.config_loader import answered_help_or_config, load_config
from trainer.evaluate import predict_split
from trainer.evaluation import eval_model
from trainer.evaluation.label_issues import find_issues, write_csv, write_summary
from trainer.evaluation.label_issues_page import shown_rows, write_page
from trainer.input import data as data_lib
from trainer.jobdir import atomic, backup
from trainer.training.train import run

log = logging.getLogger(__name__)
PROBS_FILE = "held_out_probs.npz"
HELD_OUT_FILE = "held_out.csv"


def assign_folds(groups: list[str], num_folds: int, seed: int) -> np.ndarray:
    """The fold (0..num_folds-1) of each example: whole groups per fold, fold sizes as even as groups allow."""
    # optional: scikit-learn comes with the audit extra
    from sklearn.model_selection import GroupKFold

    if len(set(groups)) < num_folds:
        raise ConfigError(f"--folds {num_folds}: the train split has only {len(set(groups))} group(s); use fewer "
                          "folds")
    fold = np.empty(len(groups), dtype=np.int64)
    splitter = GroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(groups)), groups=groups)):
        fold[held] = k
    return fold


@contextlib.contextmanager
def _quiet_training():
    """The folds' own log lines (split sizes, epochs) only with --verbose: the audit prints one line per fold."""
    logger = logging.getLogger("trainer")
    level = logger.level
    if not cli.verbose():
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fold_probs(config, schema, held_ids: list[str], excluded: frozenset[str], fold_dir: str) -> dict:
    """{"probs/HEAD": probabilities [len(held_ids), C] of a model trained without `held_ids` (and `excluded`),
    "labels/HEAD": the given labels} of the held-out examples, in `held_ids` order."""

    saved = os.path.join(fold_dir, PROBS_FILE)
    made_by = config.to_yaml()  # the audit's config: a rerun with other settings trains the folds again
    if os.path.exists(saved):
        with np.load(saved, allow_pickle=False) as z:
            if list(z["ids"]) == held_ids and str(z["config"]) == made_by:
                return {key: z[key] for key in z.files if key not in ("ids", "config")}
        backup.remove(os.path.join(fold_dir, "backup"))  # made for other settings: the fold trains afresh
    held_out_csv = os.path.join(fold_dir, HELD_OUT_FILE)
    os.makedirs(fold_dir, exist_ok=True)
    write_csv(held_out_csv, [{"id": i} for i in sorted(set(held_ids) | excluded)], fields=("id",))
    # a fold model only predicts its held-out part here: no SavedModel export
    fold_config = config.replace(**{"train.job_dir": fold_dir, "data.exclude_ids": held_out_csv,
                                    "train.export": False})
    if not cli.verbose():
        fold_config = fold_config.replace(**{"train.verbose": "0"})
    with _quiet_training():
        # (None: the fold's training had finished before its probabilities were saved)
        model = run(fold_config)["model"] or eval_model.load_job(fold_dir)[0]
        pred = predict_split(eval_model.from_keras(model, fold_config), schema, config.data.train_split)
    keras.backend.clear_session()  # the next fold builds its model afresh
    where = {i: n for n, i in enumerate(pred["ids"])}
    rows = [where[i] for i in held_ids]
    out = {f"{kind}/{name}": v[rows] for kind in ("probs", "labels") for name, v in pred[kind].items()}
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(held_ids), config=np.array(made_by), **out)
    atomic.write_bytes(saved, buffer.getvalue())
    return out


def audit(config, num_folds: int = 5, show: int = 12) -> dict:
    """Runs the audit (see the module docstring) and returns label_issues.json's content."""
    if num_folds < 2:
        raise ConfigError(f"--folds {num_folds}: need at least 2 folds")
    config = data_lib.with_dataset(config)
    job_dir, d = config.train.job_dir, config.data
    if not job_dir:
        raise ConfigError("train.job_dir is empty: pass --job_dir DIR (where the folds and the outputs go)")
    if "://" in job_dir:
        raise ConfigError(f"--job_dir {job_dir}: the label audit writes to a local folder; copy it afterwards")
    schema = data_lib.dataset_info(d).schema
    excluded = data_lib.read_excluded_ids(d.exclude_ids) if d.exclude_ids else frozenset()
    everything = data_lib.split_ids(d, d.train_split)
    index = [(i, g) for i, g in everything if i not in excluded]
    by_group = data_lib.has_groups(d)
    ids = [i for i, _ in index]
    fold = assign_folds([g for _, g in index], num_folds, config.train.seed)
    arrays: dict[str, np.ndarray] = {}  # "probs/HEAD", "labels/HEAD" over every audited example
    for k in range(num_folds):
        start = time.monotonic()
        held = np.flatnonzero(fold == k)
        fold_probs = _fold_probs(config, schema, [ids[i] for i in held], excluded,
                                 os.path.join(job_dir, "folds", str(k)))
        for key, v in fold_probs.items():
            arrays.setdefault(key, np.zeros((len(ids), *v.shape[1:]), dtype=v.dtype))[held] = v
        log.info("fold %d/%d: trained on %d examples, predicted its %d held-out ones (%.0f s)", k + 1, num_folds,
                 len(ids) - len(held), len(held), time.monotonic() - start)
    rows, heads = find_issues(schema, ids, *({a.name: arrays[f"{kind}/{a.name}"] for a in schema.attributes}
                                             for kind in ("labels", "probs")))
    summary = {"dataset": schema.name, "split": d.train_split, "examples_audited": len(ids),
               "examples_excluded": len(everything) - len(index),  # data.exclude_ids
               "folds": num_folds, "folds_by": "group" if by_group else "example", "heads": heads}
    os.makedirs(job_dir, exist_ok=True)
    write_csv(os.path.join(job_dir, "label_issues.csv"), rows)
    write_summary(os.path.join(job_dir, "label_issues.json"), summary)
    shown = shown_rows(rows, show)
    write_page(os.path.join(job_dir, "label_issues.html"), shown, summary,
               data_lib.split_jpegs(d, d.train_split, {r["id"] for r in shown}))
    return summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if answered_help_or_config(argv, __doc__):
        return 0
    parser = cli.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--folds", type=cli.positive_int, default=5)
    parser.add_argument("--show", type=cli.positive_int, default=12, help="images per head on the page")
    args, rest = parser.parse_known_args(argv)
    config = load_config(rest)
    summary = audit(config, args.folds, args.show)
    found = ", ".join(f"{name} {h['issues_found']}" + (" (skipped)" if "skipped" in h else "")
                      for name, h in summary["heads"].items())
    # the result on stdout; the fold lines above are progress, on stderr
    print(f"{summary['examples_audited']} examples audited; issues per head: {found}; see "
          f"{os.path.join(config.train.job_dir, 'label_issues.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
