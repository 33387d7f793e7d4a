"""One HTML page per run or evaluation that a person opens in a browser, with its PNGs beside it.

The page holds: the metrics table with each head's majority-class baseline and balanced accuracy (multi-label
heads: mA beside its chance level 0.5, and a per-label table of positives, mA, AP, F1 and threshold), the
training curves (accuracy, and balanced accuracy / mA against chance) and the LR/momentum schedule read from
JOB_DIR/history.csv, one confusion matrix per single-label head, the per-label mA/AP chart of each multi-label
head under its own heading, and a grid of test images with predicted and true labels, worst mistakes first.
Images are PNG files in the report folder referenced by relative paths (copy the folder, not just the .html);
`embed=True` inlines them as base64 too, for a page that travels as one file.

evaluate.py calls write_report with predictions and sample images; on its own it re-renders a job's page
from metrics.json and history.csv:

    python -m trainer.report --job_dir JOB [--out JOB/report]
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import datetime
import html
import io
import json
import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI machines and training VMs have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from trainer.eval_metrics import MA_CHANCE  # noqa: E402
from trainer.thresholds import DEFAULT_THRESHOLD  # noqa: E402

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child{text-align:left}.below{background:#fdd}.note{color:#a60}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ccc;padding:6px;font-size:12px;width:180px}
.card img{width:100%;image-rendering:pixelated}.wrong{color:#c00;font-weight:bold}
.figs{display:inline-block;vertical-align:top;margin:4px}.figs img{max-width:100%}"""


@dataclasses.dataclass
class Samples:
    """Test examples for the image grid: images uint8 [N,H,W,3]; labels/probs {attribute: array}; ids [N]."""

    images: np.ndarray
    labels: Mapping[str, np.ndarray]
    probs: Mapping[str, np.ndarray]
    ids: Sequence[str] = ()


class _Page:
    """Collects HTML sections and writes figures beside the page (and optionally inline)."""

    def __init__(self, out_dir: str, embed: bool):
        self.out_dir, self.embed, self.parts, self.files = out_dir, embed, [], []
        os.makedirs(out_dir, exist_ok=True)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def save_png(self, name: str, data: bytes) -> str:
        """Writes `name` under the report folder and returns the <img src> for it."""
        path = os.path.join(self.out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.files.append(path)
        return "data:image/png;base64," + base64.b64encode(data).decode() if self.embed else name

    def figure(self, fig, name: str, alt: str) -> None:
        self.add(f'<div class="figs"><img src="{self.save_png(name, fig_to_png(fig))}" alt="{html.escape(alt)}"></div>')


def fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)  # figures are kept alive by pyplot until closed; a long evaluation would leak them
    return buf.getvalue()


# ------------------------------------------------------------------ figures

def confusion_figure(cm, classes: Sequence[str], title: str):
    """Row-normalised (recall) colours with raw counts written in each cell."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * n, 1.0 + 0.65 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    return fig


def read_history(path: str) -> dict[str, np.ndarray]:
    """history.csv (Keras CSVLogger layout: one row per epoch) as {column: float array}."""
    import tensorflow as tf  # gfile reads gs:// job dirs; lazy so the report imports without TF

    with tf.io.gfile.GFile(path) as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list] = {k: [] for k in (rows[0].keys() if rows else ())}
    for r in rows:
        for k in cols:
            try:
                cols[k].append(float(r[k]))
            except (TypeError, ValueError):
                cols[k].append(np.nan)
    return {k: np.asarray(v) for k, v in cols.items()}


def _head_accuracy_columns(hist: Mapping[str, np.ndarray], head: str) -> tuple[str | None, str | None]:
    """(train, validation) accuracy columns of a head as the trainer's metrics name them; None when absent."""
    from trainer.metrics import accuracy_key  # imports Keras: only when there is a history to plot

    keys = accuracy_key(head), accuracy_key(head, "val_")
    return tuple(k if k in hist else None for k in keys)


def history_figures(page: _Page, hist: Mapping[str, np.ndarray], heads: Sequence[str], schema=None) -> None:
    epochs = hist.get("epoch", np.arange(len(next(iter(hist.values()), []))))
    epochs = epochs + 1 if epochs.size and epochs.min() == 0 else epochs  # CSVLogger counts from 0
    if "loss" in hist:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k in ("loss", "val_loss"):
            if k in hist:
                ax.plot(epochs, hist[k], marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("total loss")
        ax.legend()
        ax.grid(alpha=0.3)
        page.figure(fig, "curves_loss.png", "training and validation loss")
    found = [(h, *_head_accuracy_columns(hist, h)) for h in (*heads, "mean")]  # + the trainer's mean_accuracy
    found = [(h, tr, va, None) for h, tr, va in found if tr or va]
    if found:
        _curve_grid(page, hist, epochs, found, "curves_accuracy.png", "per-head accuracy per epoch")
    if schema is not None:
        balanced_curves(page, hist, epochs, schema)
    sched = [k for k in ("lr", "learning_rate", "momentum") if k in hist]
    if {"momentum"} & set(sched) and ({"lr", "learning_rate"} & set(sched)):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        lr_key = "lr" if "lr" in hist else "learning_rate"
        ax.plot(epochs, hist[lr_key], "b-o", ms=3)
        ax.set_ylabel("learning rate", color="b")
        ax2 = ax.twinx()
        ax2.plot(epochs, hist["momentum"], "r-s", ms=3)
        ax2.set_ylabel("momentum", color="r")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("schedule used (value logged at the end of each epoch)", fontsize=9)
        page.figure(fig, "schedule.png", "learning rate and momentum schedule")
    else:
        page.add('<p class="note">history.csv has no lr and momentum columns: schedule plot skipped.</p>')


# ----------------------------------------------------------------- sections

def _fmt(v) -> str:
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """The table for evaluate_arrays() output; a red row is a head that does not beat its baseline."""
    heads, summary = metrics.get("heads", {}), metrics.get("summary", {})
    out = ['<table id="metrics"><tr><th>head</th><th>accuracy</th><th>majority baseline</th>'
           '<th>(majority class)</th><th>balanced acc.</th><th>macro-F1</th><th>log loss</th>'
           "<th>prior's log loss</th><th>n</th></tr>"]
    for name, h in heads.items():
        if h.get("kind") == "multi":
            continue
        base = h.get("majority_baseline")
        below = base is not None and h["accuracy"] <= base
        out.append(f'<tr class="{"below" if below else ""}"><td>{html.escape(name)}</td>'
                   + "".join(f"<td>{_fmt(h.get(k))}</td>" for k in
                             ("accuracy", "majority_baseline", "majority_class", "balanced_accuracy", "macro_f1",
                              "log_loss", "prior_log_loss", "n"))
                   + "</tr>")
    out.append("</table>")
    multi = {k: h for k, h in heads.items() if h.get("kind") == "multi"}
    if multi:
        out.append(multi_label_table(multi))
    out.append("<p>" + ", ".join(f"<b>{html.escape(k)}</b> {_fmt(v)}" for k, v in summary.items()) + "</p>")
    return "\n".join(out)


def _at_chance(h: Mapping[str, Any]) -> bool:
    return h["mA"] <= h.get("mA_chance", MA_CHANCE)


def multi_label_table(multi: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per multi-label head: mA beside its chance level (red at or below it), mAP, instance metrics."""
    keys = ("mA", "mA_chance", "mAP", "instance_accuracy", "instance_precision", "instance_recall", "instance_f1", "n")
    head = "".join(f"<th>{'chance mA' if k == 'mA_chance' else k}</th>" for k in keys)
    rows = [f'<tr class="{"below" if _at_chance(h) else ""}"><td>{html.escape(k)}</td>'
            + "".join(f"<td>{_fmt(h.get(x, MA_CHANCE if x == 'mA_chance' else None))}</td>" for x in keys)
            + f"<td>{len(h.get('labels_at_chance') or [])} of {len(h.get('per_label_mA') or [])}</td></tr>"
            for k, h in multi.items()]
    return (f'<table id="metrics-multi"><tr><th>multi-label head</th>{head}<th>labels at chance</th></tr>'
            + "".join(rows) + "</table>")


def per_label_table(name: str, h: Mapping[str, Any], classes: Sequence[str]) -> str:
    """One row per label of a multi-label head: training and evaluated positives, mA (red at chance), AP, F1 and
    the decision threshold it was scored at."""
    n = len(classes)

    def col(key):
        v = h.get(key)
        return list(v) if isinstance(v, (list, tuple)) else [v] * n

    train_pos, pos, ma, ap, f1, thr = (col(k) for k in ("train_positive_counts", "per_label_positives",
                                                         "per_label_mA", "per_label_ap", "per_label_f1", "threshold"))
    rows = []
    for j, c in enumerate(classes):
        below = ma[j] is not None and ma[j] <= MA_CHANCE
        rows.append(f'<tr class="{"below" if below else ""}"><td>{html.escape(c)}</td>'
                    + "".join(f"<td>{_fmt(v)}</td>" for v in (train_pos[j], pos[j], ma[j], ap[j], f1[j], thr[j]))
                    + "</tr>")
    return (f'<table id="labels-{html.escape(name)}"><tr><th>{html.escape(name)}: label</th><th>train positives</th>'
            f"<th>positives here</th><th>mA (chance {MA_CHANCE})</th><th>AP</th><th>F1</th><th>threshold</th></tr>"
            + "".join(rows) + "</table>")


def multi_label_section(page: _Page, schema, metrics: Mapping[str, Any]) -> None:
    """The multi-label heads' own section: per-label tables and the per-label mA/AP charts with chance marked."""
    multi = [a for a in schema.attributes if a.is_multi_label and a.name in metrics.get("heads", {})]
    if not multi:
        return
    page.add("<h2>Multi-label heads, per label</h2><p>One row and one pair of bars per label. mA is (true positive "
             "rate + true negative rate) / 2 at the label's threshold: 0.5 (the dashed line) is what any constant "
             "answer scores, so a red row or a bar at or below the line is a label the model does no better on "
             "than by answering every image the same. AP (average precision) does not depend on the threshold; its "
             "chance level is the label's share of positives. Thresholds are 0.5 unless chosen on validation "
             "(trainer.evaluate --choose_thresholds).</p>")
    for a in multi:
        page.add(per_label_table(a.name, metrics["heads"][a.name], a.classes))
    for name, fig in multi_label_figures(schema, metrics):
        page.figure(fig, f"labels_{name}.png", f"per-label mA and AP of {name}")


def multi_label_figures(schema, metrics: Mapping[str, Any]):
    """(head, figure) per multi-label head: bars of mA and AP per label, the chance level of mA dashed."""
    for a in schema.attributes:
        h = metrics["heads"].get(a.name)
        if h is None or not a.is_multi_label:
            continue
        fig, ax = plt.subplots(figsize=(1.5 + 0.5 * a.num_classes, 3))
        x = np.arange(a.num_classes)
        ax.bar(x - 0.2, [v or 0 for v in h["per_label_mA"]], 0.4, label="mA")
        ax.bar(x + 0.2, [v or 0 for v in h["per_label_ap"]], 0.4, label="AP")
        ax.axhline(h.get("mA_chance", MA_CHANCE), color="k", ls="--", lw=1, label="mA chance")
        ax.set_xticks(x, a.classes, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{a.name}  mA {h['mA']:.3f}  mAP {h['mAP']:.3f}", fontsize=10)
        ax.legend(fontsize=7)
        yield a.name, fig


def balanced_curves(page: _Page, hist: Mapping[str, np.ndarray], epochs: np.ndarray, schema) -> None:
    """Per head, balanced accuracy (softmax) or mA (multi-label) per epoch with its chance level, and their mean
    (the checkpoint monitor)."""
    panels = []
    for a in schema.attributes:
        key = f"{a.name}_{'mA' if a.is_multi_label else 'balanced_accuracy'}"
        chance = MA_CHANCE if a.is_multi_label else 1.0 / a.num_classes
        panels.append((f"{a.name} {'mA' if a.is_multi_label else 'bal. acc.'}", key, f"val_{key}", chance))
    panels.append(("mean over heads (monitor)", "mean_balanced_accuracy", "val_mean_balanced_accuracy", None))
    panels = [(title, tr if tr in hist else None, va if va in hist else None, chance)
              for title, tr, va, chance in panels if tr in hist or va in hist]
    if panels:
        _curve_grid(page, hist, epochs, panels, "curves_balanced.png",
                    "per-head balanced accuracy or mA per epoch, with chance")


def _curve_grid(page: _Page, hist, epochs, panels, name: str, alt: str) -> None:
    """One small plot per (title, train column, validation column, chance level or None), 4 to a row."""
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax, (title, train, val, chance) in zip(axes.flat, panels):
        for k, style, label in ((train, "--", "train"), (val, "-", "val")):
            if k:
                ax.plot(epochs, hist[k], style, marker="o", ms=2, label=label)
        if chance is not None:
            ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    page.figure(fig, name, alt)


def flat_metrics_table(metrics: Mapping[str, Any]) -> str:
    """For a metrics.json not written by evaluate.py (the trainer's validation summary): key/value rows."""
    rows = [(k, v) for k, v in _flatten(metrics).items()]
    return ('<table id="metrics"><tr><th>metric</th><th>value</th></tr>'
            + "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows) + "</table>")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def _thresholds_of(metrics: Mapping[str, Any] | None, attribute) -> list[float]:
    """The thresholds the evaluation scored a multi-label head at (metrics.json), else the default 0.5."""
    t = ((metrics or {}).get("heads", {}).get(attribute.name) or {}).get("threshold", DEFAULT_THRESHOLD)
    return list(t) if isinstance(t, (list, tuple)) else [t] * attribute.num_classes


def sample_grid(page: _Page, schema, samples: Samples, max_images: int, metrics=None) -> None:
    """Worst mistakes first: examples sorted by their summed cross-entropy over heads, highest first."""
    from PIL import Image

    from trainer.eval_metrics import sample_losses

    losses = sample_losses(schema, samples.labels, samples.probs)
    order = np.argsort(-losses, kind="stable")[:max_images]
    page.add('<div class="grid">')
    for rank, i in enumerate(order):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(samples.images[i]).astype(np.uint8)).save(buf, format="PNG")
        src = page.save_png(f"samples/{rank:03d}.png", buf.getvalue())
        lines = []
        for a in schema.attributes:
            p, y = np.asarray(samples.probs[a.name][i]), np.asarray(samples.labels[a.name][i])
            if a.is_multi_label:
                thr = _thresholds_of(metrics, a)
                pred = {c for c, v, t in zip(a.classes, p, thr) if v >= t}
                true = {c for c, v in zip(a.classes, y) if v}
                ok, text = pred == true, f"{'|'.join(sorted(pred)) or '-'} (true {'|'.join(sorted(true)) or '-'})"
            else:
                k = int(p.argmax())
                ok = k == int(y)
                text = f"{a.classes[k]} {p[k]:.2f}" + ("" if ok else f" (true {a.classes[int(y)]})")
            lines.append(f'<div class="{"" if ok else "wrong"}">{html.escape(a.name)}: {html.escape(text)}</div>')
        ident = html.escape(str(samples.ids[i])) if len(samples.ids) else str(i)
        page.add(f'<div class="card"><img src="{src}" alt="{ident}"><div>{ident} &middot; loss {losses[i]:.2f}</div>'
                 + "".join(lines) + "</div>")
    page.add("</div>")


# -------------------------------------------------------------------- main

def write_report(out_dir: str, schema=None, metrics: Mapping[str, Any] | None = None, history_csv: str | None = None,
                 samples: Samples | None = None, title: str = "Evaluation report", embed: bool = False,
                 max_images: int = 48, notes: Sequence[str] = ()) -> str:
    """Writes out_dir/index.html and its PNGs; returns the page's path. Every argument but out_dir is optional.

    A gs:// out_dir is rendered in a local temporary folder and copied up (matplotlib and PIL write local files).
    """
    if "://" in out_dir:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_report(tmp, schema, metrics, history_csv, samples, title, embed, max_images, notes)
            _copy_tree(tmp, out_dir)
        return os.path.join(out_dir, "index.html")
    page = _Page(out_dir, embed)
    page.add(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>written {datetime.datetime.now().isoformat(timespec='seconds')}</p>")
    for n in notes:
        page.add(f"<p>{html.escape(n)}</p>")
    if metrics:
        page.add("<h2>Metrics</h2>")
        page.add(metrics_table(metrics) if "heads" in metrics else flat_metrics_table(metrics))
        page.add("<p>Red rows do not beat the majority-class baseline (the training split's most frequent class, "
                 "scored on this split). Balanced accuracy is the mean per-class recall: 1/C for a constant guess. "
                 "A log loss not below the prior's (always answering the training class frequencies) means the "
                 "head's probabilities tell no more about the image than the class frequencies do. A red "
                 "multi-label row has an mA not above 0.5, what any constant answer scores.</p>")
    if history_csv and _exists(history_csv):
        page.add("<h2>Training</h2>")
        history_figures(page, read_history(history_csv), schema.names if schema else (), schema)
    elif history_csv:
        page.add(f'<p class="note">No training history at {html.escape(history_csv)}: curves skipped.</p>')
    if metrics and schema and "heads" in metrics:
        if any(not a.is_multi_label for a in schema.attributes):
            page.add("<h2>Confusion matrices</h2><p>Rows are true classes; colour and % are per-row recall.</p>")
        for name, fig in confusion_figures(schema, metrics):
            page.figure(fig, f"confusion_{name}.png", f"confusion matrix {name}")
        multi_label_section(page, schema, metrics)
    if samples is not None and schema is not None:
        page.add("<h2>Test images, worst mistakes first</h2>")
        sample_grid(page, schema, samples, max_images, metrics)
    page.add("</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(page.parts))
    return path


def confusion_figures(schema, metrics: Mapping[str, Any]):
    """(head, figure) per single-label head (multi-label heads: multi_label_figures)."""
    for a in schema.attributes:
        h = metrics["heads"].get(a.name)
        if h is None or a.is_multi_label:
            continue
        yield a.name, confusion_figure(h["confusion_matrix"], a.classes,
                                       f"{a.name}  acc {h['accuracy']:.3f}  bal {h['balanced_accuracy']:.3f}")


def log_confusion_to_tensorboard(logdir: str, schema, metrics: Mapping[str, Any], step: int = 0) -> None:
    """The same confusion figures as image summaries `confusion/<head>`, for TensorBoard's Images tab."""
    import tensorflow as tf  # only this option needs TF

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        figures = [(f"confusion/{n}", f) for n, f in confusion_figures(schema, metrics)]
        figures += [(f"labels/{n}", f) for n, f in multi_label_figures(schema, metrics)]
        for tag, fig in figures:
            image = tf.image.decode_png(fig_to_png(fig), channels=4)
            tf.summary.image(tag, image[tf.newaxis], step=step)
    writer.flush()


def _copy_tree(src: str, dst: str) -> None:
    import tensorflow as tf

    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)


def _exists(path: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Render a job's report from metrics.json and history.csv.")
    p.add_argument("--job_dir", required=True)
    p.add_argument("--out", help="report folder (default JOB_DIR/report)")
    p.add_argument("--embed", action="store_true", help="also inline the images, for a one-file page")
    args = p.parse_args(argv)
    import tensorflow as tf

    metrics, schema = None, None
    mpath = os.path.join(args.job_dir, "metrics.json")
    if tf.io.gfile.exists(mpath):
        with tf.io.gfile.GFile(mpath) as f:
            metrics = json.load(f)
        if "schema" in metrics:
            from tfds_person_attrs.schema import schema_from_dict

            schema = schema_from_dict(metrics["schema"])
    out = args.out or os.path.join(args.job_dir, "report")
    path = write_report(out, schema, metrics, os.path.join(args.job_dir, "history.csv"),
                        title=f"Run {args.job_dir}", embed=args.embed)
    print(path)


if __name__ == "__main__":
    main()
