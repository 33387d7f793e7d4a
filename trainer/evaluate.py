"""Evaluate a trained model on a split: per-head table with baselines, metrics.json and the HTML report.

    python -m trainer.evaluate --model JOB_DIR --data_dir OUT --split test [--out JOB_DIR/eval_test] [--flip_tta]
    python -m trainer.evaluate --model JOB_DIR/model --data_dir OUT --split test    # the exported SavedModel

--model is a job dir (uses checkpoints/best.keras, else model.keras), a .keras file inside one, or an exported
SavedModel folder (JOB_DIR/model, or one from the model registry); the same model gives the same metrics in any
of these forms. The preprocessing comes from the job's config.yaml (an export carries its own copy) so
evaluation sees images exactly as training did, and a model whose heads or classes differ from the dataset's
schema is refused, naming the differences. The majority baselines use the training split's class counts stored
in the dataset's metadata. Output in --out: metrics.json (every number, per head, plus the summary) and
index.html with its PNGs; the confusion matrices also go to TensorBoard (JOB_DIR/logs/eval_<split>, or
AIP_TENSORBOARD_LOG_DIR) unless --no-tensorboard. --flip_tta averages each image's and its mirror's
probabilities (default --out JOB_DIR/eval_<split>_flip); metrics.json records which was used.

Multi-label heads are scored at their decision thresholds: the default 0.5, or per-label thresholds chosen on
validation. `--choose_thresholds` (on a job dir, with --split validation) picks per label the threshold that
maximises its balanced accuracy (TPR + TNR) / 2, writes JOB_DIR/thresholds.json and scores the split with
them; later evaluations of the job and `trainer.export` (hence `trainer.predict`) use them, and say so (the table's
`multi-label thresholds:` line and the report's header name the file and the split it was chosen on). A
thresholds file that does not fit the dataset's schema (see trainer.objective.thresholds) is refused:

    python -m trainer.evaluate --model JOB_DIR --split validation --choose_thresholds
    python -m trainer.evaluate --model JOB_DIR --split test          # at the chosen thresholds
    python -m trainer.export --job_dir JOB_DIR                       # serves them
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import tensorflow as tf

from tfds_person_attrs import cli
from trainer import report
from trainer.evaluation import eval_metrics, eval_model, report_figures
from trainer.input import data as data_lib
from trainer.jobdir.paths import recorded_paths
from trainer.objective import thresholds as threshold_lib


def predict_split(model: eval_model.EvalModel, schema, split: str, batch: int = 64, max_steps: int = 0,
                  keep_worst: int = 48) -> dict[str, Any]:
    """Runs the model over one pass of `split`.

    Returns {"labels", "probs"} (dicts of arrays over every example), "ids", and "worst": a report.Samples of
    the `keep_worst` examples with the highest summed loss. Only those images are kept (merged batch by batch),
    so memory does not grow with the split.
    """
    config = model.config
    labels: dict[str, list] = {a.name: [] for a in schema.attributes}
    probs: dict[str, list] = {a.name: [] for a in schema.attributes}
    ids, worst = [], None
    if model.flip_tta and not config.augment.flip:
        print("warning: --flip_tta on a model trained without augment.flip: mirrored images are new to it",
              file=sys.stderr)
    # The JPEG bytes for an exported model, which decodes them itself; the image for a Keras model and the report.
    examples = data_lib.eval_examples(config, split, schema).batch(batch).prefetch(1)
    for step, ex in enumerate(examples):
        if max_steps and step >= max_steps:
            break
        x = ex["image"]
        out = model.probs(x, ex["image_bytes"])
        rec = {"ids": np.array([s.decode() for s in ex["id"].numpy()], dtype=object),
               "images": np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8)}  # what the model saw
        for a in schema.attributes:
            rec[f"labels/{a.name}"] = ex["labels"][a.name].numpy()
            rec[f"probs/{a.name}"] = tf.cast(out[a.name], tf.float32).numpy()
            labels[a.name].append(rec[f"labels/{a.name}"])
            probs[a.name].append(rec[f"probs/{a.name}"])
        ids += list(rec["ids"])
        rec["loss"] = eval_metrics.sample_losses(schema, _sub(rec, "labels"), _sub(rec, "probs"))
        worst = _keep_worst(worst, rec, keep_worst)
    if not ids:
        raise cli.UserError(f"split {split!r} of {data_lib.dataset_dir(config.data)} is empty")
    cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}  # noqa: E731
    samples = report.Samples(worst["images"], _sub(worst, "labels"), _sub(worst, "probs"), worst["loss"],
                             list(worst["ids"]))
    return {"labels": cat(labels), "probs": cat(probs), "ids": ids, "worst": samples}


def _sub(rec: dict, prefix: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in rec.items() if k.startswith(prefix + "/")}


def _keep_worst(kept: dict | None, new: dict, k: int) -> dict:
    """The k highest-loss rows of kept + new (every array in the dicts is indexed by example)."""
    merged = new if kept is None else {key: np.concatenate([kept[key], new[key]]) for key in new}
    order = np.argsort(-merged["loss"], kind="stable")[:k]
    return {key: v[order] for key, v in merged.items()}


def format_table(metrics: dict[str, Any]) -> str:
    """The terminal table: one row per head, the baseline beside the accuracy, '<' where it does not beat it."""
    lines = []
    if any(h["kind"] != "multi" for h in metrics["heads"].values()):
        lines.append(f"{'head':<16}{'acc':>8}{'baseline':>10}{'bal.acc':>9}{'macroF1':>9}{'logloss':>9}{'prior':>8}"
                     f"{'n':>7}")
    for name, h in metrics["heads"].items():
        if h["kind"] == "multi":
            lines += _multi_label_lines(name, h)
            continue
        base = h.get("majority_baseline")
        flag = " <" if base is not None and h["accuracy"] <= base else ""
        base_s = f"{base:10.3f}" if base is not None else f"{'-':>10}"
        ll = f"{h['log_loss']:9.3f}" if "log_loss" in h else f"{'-':>9}"
        prior = f"{h['prior_log_loss']:8.3f}" if "prior_log_loss" in h else f"{'-':>8}"
        lines.append(f"{name:<16}{h['accuracy']:8.3f}{base_s}{h['balanced_accuracy']:9.3f}{h['macro_f1']:9.3f}"
                     f"{ll}{prior}{h['n']:7d}{flag}")
    s = metrics["summary"]
    if s.get("mean_accuracy") is not None:
        base = s.get("mean_majority_baseline")
        lines.append(f"{'mean':<16}{s['mean_accuracy']:8.3f}" + (f"{base:10.3f}" if base is not None else f"{'-':>10}")
                     + f"{s['mean_balanced_accuracy']:9.3f}{s['mean_macro_f1']:9.3f}")
    if s.get("mean_mA") is not None:
        lines.append(f"{'mean mA':<16} {s['mean_mA']:.3f} (chance {eval_metrics.MA_CHANCE:.3f}) over the multi-label "
                     f"heads, mAP {s['mean_mAP']:.3f}, {s['labels_at_chance']} label(s) at chance")
    if any(h["kind"] == "multi" for h in metrics["heads"].values()) and metrics.get("thresholds_from"):
        lines.append(f"multi-label thresholds: {metrics['thresholds_from']}")
    lines.append("('<': not better than always answering the training split's most frequent class, or for "
                 "multi-label heads an mA not above chance (0.5); prior: the log loss of always answering the "
                 "training class frequencies)")
    return "\n".join(lines)


def _multi_label_lines(name: str, h: dict[str, Any]) -> list[str]:
    """A multi-label head: mA beside its chance level, mAP, instance F1; then the labels stuck at chance."""
    flag = " <" if h["mA"] <= h.get("mA_chance", eval_metrics.MA_CHANCE) else ""
    lines = [f"{name:<16} mA {h['mA']:.3f} (chance {h.get('mA_chance', eval_metrics.MA_CHANCE):.3f})  mAP "
             f"{h['mAP']:.3f}  inst.F1 {h['instance_f1']:.3f}  n {h['n']}{flag}"]
    stuck = h.get("labels_at_chance") or []
    if stuck:
        lines.append(f"{'':<16} {len(stuck)} of {len(h['per_label_mA'])} labels at chance (mA <= 0.5: no better "
                     f"than one answer for every image): {', '.join(map(str, stuck))}")
    return lines


def evaluate(model_path: str, data_dir: str | None, split: str, out_dir: str | None = None, batch: int = 64,
             max_images: int = 48, max_steps: int = 0, tensorboard: bool = False,
             embed: bool = False, flip_tta: bool = False, choose_thresholds: bool = False) -> dict[str, Any]:
    """Loads, checks, predicts, scores, writes metrics.json and the report; returns the metrics dict."""
    t0 = time.time()
    cli.check_folder_path(out_dir, "--out")
    model = eval_model.load(model_path, data_dir, flip_tta)
    if choose_thresholds:
        _check_can_choose(model, split)
    config, job_dir = model.config, model.job_dir
    info = data_lib.dataset_info(config.data)
    schema = info.schema
    where = data_lib.dataset_dir(config.data)
    if split not in info.num_examples:
        raise cli.UserError(f"--split {split!r}: {where} has the splits {sorted(info.num_examples)}")
    eval_model.check_heads(model, schema, where)
    if out_dir is None and job_dir is None:
        raise cli.UserError(f"{model_path} is not inside a job dir: pass --out FOLDER for the report")
    # read and checked before the split is run: a broken thresholds file fails in seconds
    thresholds, origin = (None, "") if choose_thresholds else _thresholds_and_origin(model, schema)
    pred = predict_split(model, schema, split, batch, max_steps, keep_worst=max_images)
    train_counts = info.class_counts.get(config.data.train_split)
    if choose_thresholds:
        thresholds = threshold_lib.choose(schema, pred["labels"], pred["probs"])
        path = os.path.join(job_dir, threshold_lib.FILE_NAME)
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(threshold_lib.to_json(thresholds, schema, split))
        origin = threshold_lib.Chosen(thresholds, path, split).describe() + ", just now"
        print(f"wrote {path}: per-label thresholds ({threshold_lib.CHOSEN_BY}); evaluate other splits with them, "
              f"and serve them: python -m trainer.export --job_dir {job_dir}")
    metrics = eval_metrics.evaluate_arrays(schema, pred["labels"], pred["probs"], train_counts, thresholds)
    metrics.update({"thresholds_from": origin,
                    "model": model_path, "job_dir": job_dir, "data_dir": config.data.data_dir, "split": split,
                    "num_examples": len(pred["ids"]), "baseline_from": config.data.train_split,
                    "flip_tta": model.flip_tta, "schema": schema.to_dict(), "seconds": round(time.time() - t0, 1)})
    out_dir = out_dir or os.path.join(job_dir, f"eval_{split}" + ("_flip" if model.flip_tta else ""))
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, "metrics.json"), "w") as f:
        f.write(json.dumps(metrics, indent=2))
    title = os.path.basename((job_dir or model_path).rstrip("/"))
    schema_has_multi = any(a.is_multi_label for a in schema.attributes)
    page = report.write_report(out_dir, schema, metrics, os.path.join(job_dir, "history.csv") if job_dir else None,
                               pred["worst"], title=f"{title}: {split} split", max_images=max_images, embed=embed,
                               notes=[f"model {model_path}", f"data {config.data.data_dir}",
                                      f"{len(pred['ids'])} examples of split {split!r}"
                                      + (", each averaged with its mirror image (flip TTA)" if model.flip_tta
                                         else "")]
                               + ([f"multi-label thresholds: {origin}"] if schema_has_multi else []))
    if tensorboard and job_dir:

        report_figures.log_confusion_to_tensorboard(os.path.join(recorded_paths(job_dir)[0].logs_dir, f"eval_{split}"),
                                                    schema, metrics)
    print(format_table(metrics))
    print(f"wrote {os.path.join(out_dir, 'metrics.json')} and {page}")
    return metrics


def _check_can_choose(model: eval_model.EvalModel, split: str) -> None:
    if model.kind != "keras" or model.job_dir is None:
        raise cli.UserError(f"--choose_thresholds: pass the job dir (--model JOB_DIR), not {model.path}: the "
                            "thresholds are written to JOB_DIR/thresholds.json for export to serve")
    if split == "test":
        raise cli.UserError("--choose_thresholds: choose them on the validation split (--split validation); "
                            "thresholds chosen on the test split overstate the test figures")


def _thresholds_and_origin(model: eval_model.EvalModel, schema) -> tuple[dict | None, str]:
    """The multi-label thresholds this evaluation scores at (an export's own, else JOB_DIR/thresholds.json checked
    against the schema, else the default), and where they come from in words."""
    default = f"the default {threshold_lib.DEFAULT_THRESHOLD} for every label"
    if model.kind == "saved_model":
        return model.thresholds, (f"the export's own ({os.path.join(model.path, eval_model.LABELS_FILE)})"
                                  if model.thresholds else default)
    chosen = threshold_lib.read(model.job_dir, schema)
    return (chosen.thresholds, chosen.describe()) if chosen else (None, default)


def main(argv=None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="JOB_DIR, a .keras file inside it, or an exported model folder")
    p.add_argument("--data_dir", help="the built dataset's DATA_DIR (default: the one in config.yaml)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="output folder (default JOB_DIR/eval_<split>)")
    p.add_argument("--batch_size", type=cli.positive_int, default=64)
    p.add_argument("--max_images", type=int, default=48, help="images in the report's mistakes grid")
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many batches (0 = whole split)")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="also log the confusion matrices as images to JOB_DIR/logs/eval_<split> (default on)")
    p.add_argument("--embed", action="store_true", help="inline the images too: index.html works on its own")
    p.add_argument("--flip_tta", action="store_true",
                   help="average each image's and its mirror's probabilities (test-time augmentation)")
    p.add_argument("--choose_thresholds", action="store_true",
                   help="pick each multi-label label's threshold maximising its balanced accuracy on this split "
                        "(use --split validation) and write JOB_DIR/thresholds.json, which evaluate and export use")
    a = p.parse_args(argv)
    evaluate(a.model, a.data_dir, a.split, a.out, a.batch_size, a.max_images, a.max_steps, a.tensorboard, a.embed,
             a.flip_tta, a.choose_thresholds)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
