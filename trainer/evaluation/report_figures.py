"""The report's matplotlib figures: training curves, the LR/momentum schedule, confusion matrices and per-label
mA/AP charts; and the same confusion figures as TensorBoard image summaries.

    python -c "from trainer.evaluation.report_figures import confusion_figure, fig_to_png; \
print(len(fig_to_png(confusion_figure([[3, 1], [0, 4]], ['a', 'b'], 'demo'))))"

Every function returns figures (or PNG bytes) and writes nothing: trainer.report places them on the page. The
history columns plotted are the names the trainer logs them under (trainer.objective.metrics,
trainer.training.callbacks). Class and head names are user data and pass through `plain` before matplotlib sees
them: two `$` in a name would otherwise be read as mathtext (`$_$` fails the whole figure, `a$b$c` prints in italics).
"""

from __future__ import annotations

import io
from typing import Any, Iterator, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI machines and training VMs have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf
from matplotlib.ticker import MaxNLocator  # noqa: E402

from trainer.evaluation.eval_metrics import MA_CHANCE  # noqa: E402
from trainer.objective import metrics as names
from trainer.objective.log_keys import LR, MOMENTUM

# (file name, figure, alt text): one image of the page
Named = tuple[str, Any, str]


def plain(text: str) -> str:
    """`text` as matplotlib shows it literally: every `$` escaped, so nothing in it is parsed as mathtext."""
    return str(text).replace("$", r"\$")


def fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)  # figures are kept alive by pyplot until closed; a long evaluation would leak them
    return buf.getvalue()


def confusion_figure(cm, classes: Sequence[str], title: str):
    """Row-normalised (recall) colours with raw counts written in each cell."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    classes = [plain(c) for c in classes]
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * n, 1.0 + 0.65 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(plain(title), fontsize=10)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    return fig


def confusion_figures(schema, metrics: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(head, figure) per single-label head (multi-label heads: multi_label_figures)."""
    for a in schema.attributes:
        h = metrics["heads"].get(a.name)
        if h is None or a.is_multi_label:
            continue
        yield a.name, confusion_figure(h["confusion_matrix"], a.classes,
                                       f"{a.name}  acc {h['accuracy']:.3f}  bal {h['balanced_accuracy']:.3f}")


def multi_label_figures(schema, metrics: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
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
        ax.set_xticks(x, [plain(c) for c in a.classes], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(plain(f"{a.name}  mA {h['mA']:.3f}  mAP {h['mAP']:.3f}"), fontsize=10)
        ax.legend(fontsize=7)
        yield a.name, fig


def training_figures(hist: Mapping[str, np.ndarray], schema=None) -> tuple[list[Named], list[str]]:
    """The curves of a run's history.csv columns: loss, per-head accuracy, balanced accuracy / mA against chance
    (with a schema) and the LR/momentum schedule. Returns (figures, notes on what could not be drawn)."""
    epochs = hist.get("epoch", np.arange(len(next(iter(hist.values()), []))))
    epochs = epochs + 1 if epochs.size and epochs.min() == 0 else epochs  # CSVLogger counts from 0
    figures, notes = [], []
    if "loss" in hist:
        figures.append(("curves_loss.png", _loss_figure(hist, epochs), "training and validation loss"))
    heads = schema.names if schema is not None else ()
    panels = [(h, names.accuracy_key(h), names.accuracy_key(h, names.VAL), None) for h in heads]
    panels.append(("mean", names.MEAN_ACCURACY, names.VAL + names.MEAN_ACCURACY, None))
    if grid := _curve_grid(hist, epochs, panels):
        figures.append(("curves_accuracy.png", grid, "per-head accuracy per epoch"))
    if schema is not None:
        train, val = names.balanced_keys(schema), names.balanced_keys(schema, names.VAL)
        panels = [(f"{a.name} {'mA' if a.is_multi_label else 'bal. acc.'}", train[a.name], val[a.name],
                   MA_CHANCE if a.is_multi_label else 1.0 / a.num_classes) for a in schema.attributes]
        panels.append(("mean over heads (monitor)", names.MEAN_BALANCED_ACCURACY,
                       names.VAL + names.MEAN_BALANCED_ACCURACY, None))
        if grid := _curve_grid(hist, epochs, panels):
            figures.append(("curves_balanced.png", grid, "per-head balanced accuracy or mA per epoch, with chance"))
    if LR in hist and MOMENTUM in hist:
        figures.append(("schedule.png", _schedule_figure(hist[LR], hist[MOMENTUM], epochs),
                        "learning rate and momentum schedule"))
    else:
        notes.append(f"history.csv has no {LR} and {MOMENTUM} columns: schedule plot skipped.")
    return figures, notes


def _loss_figure(hist, epochs):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k in ("loss", "val_loss"):
        if k in hist:
            ax.plot(epochs, hist[k], marker="o", ms=3, label=k)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("total loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _schedule_figure(lr, momentum, epochs):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, lr, "b-o", ms=3)
    ax.set_ylabel("learning rate", color="b")
    ax2 = ax.twinx()
    ax2.plot(epochs, momentum, "r-s", ms=3)
    ax2.set_ylabel("momentum", color="r")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("schedule used (value logged at the end of each epoch)", fontsize=9)
    return fig


def _curve_grid(hist, epochs, panels):
    """One small plot per (title, train column, validation column, chance level or None) whose columns the
    history has, 4 to a row; None when it has none of them."""
    panels = [(title, tr if tr in hist else None, va if va in hist else None, chance)
              for title, tr, va, chance in panels if tr in hist or va in hist]
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    for ax, (title, train, val, chance) in zip(axes.flat, panels):
        for k, style, label in ((train, "--", "train"), (val, "-", "val")):
            if k:
                ax.plot(epochs, hist[k], style, marker="o", ms=2, label=label)
        if chance is not None:
            ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
        ax.set_title(plain(title), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def log_confusion_to_tensorboard(logdir: str, schema, metrics: Mapping[str, Any], step: int = 0) -> None:
    """The same confusion figures as image summaries `confusion/<head>`, for TensorBoard's Images tab."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        figures = [(f"confusion/{n}", f) for n, f in confusion_figures(schema, metrics)]
        figures += [(f"labels/{n}", f) for n, f in multi_label_figures(schema, metrics)]
        for tag, fig in figures:
            image = tf.image.decode_png(fig_to_png(fig), channels=4)
            tf.summary.image(tag, image[tf.newaxis], step=step)
    writer.flush()
