"""LR range test (Smith 2015/2018): raise the learning rate exponentially each step, watch the loss.

    python -m trainer.lr_find --data_dir OUT --config smoke --steps 100 --out lr_find
    python -m trainer.lr_find --data_dir gs://b/data --config hvc --steps 300 --start_lr 1e-4 --end_lr 10

Any trainer flag (`--config`, `--model.width=8`, ...) builds the same model, loss weights, preprocessing and
precision as training; a fresh model is used, nothing is read from or written to a job's checkpoints.
Plain SGD at a fixed momentum (`optim.momentum_min` for one-cycle: the momentum one-cycle uses at its peak LR;
`optim.momentum` otherwise). The loss is smoothed with a bias-corrected exponential moving average; the
sweep stops when the smoothed loss exceeds 4x its minimum or the loss is not finite.

Suggested max LR (for `--optim.max_lr`) = the LR at the smoothed loss's minimum / 10: a point still well on
the falling part of the curve, robust to noise. The LR of the steepest descent (most negative slope of the
smoothed loss against log LR, before the minimum) is printed and saved too. Writes OUT/lr_find.png and
OUT/lr_find.json.
"""

from __future__ import annotations

import json
import math
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from tfds_person_attrs import cli
from trainer.config import check_against_schema
from trainer.config_loader import answered_help_or_config, load_config
from trainer.input.data import dataset_info, make_train_dataset, split_examples
from trainer.model.network import build_model
from trainer.objective.losses import make_losses
from trainer.training import distribute
from trainer.training.loop import Loop, Schedule

# The rule behind suggested_max_lr, by whether the loss diverged within the sweep.
RULES = {True: "min-loss LR / 10",
         False: "the loss never diverged, so: the LR by which 90% of the loss drop had happened"}


class LRRangeTest(keras.callbacks.Callback):
    """Sets LR = start * (end/start)^(i/(n-1)) before step i and records the loss after it.

    Run it one step per epoch for n epochs: the batch logs hold the running mean since the epoch began, so one
    step per epoch is what makes logs["loss"] the loss of that step alone.
    """

    def __init__(self, start_lr: float, end_lr: float, num_steps: int, beta: float = 0.98, diverge: float = 4.0):
        super().__init__()
        self.start_lr, self.end_lr, self.num_steps = start_lr, end_lr, num_steps
        self.beta, self.diverge = beta, diverge
        self.lrs, self.losses, self.smoothed = [], [], []
        self._avg, self._best, self.stopped_early = 0.0, math.inf, False

    def lr_at(self, i: int) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (i / max(self.num_steps - 1, 1))

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.lr_at(len(self.lrs))

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {})["loss"])
        self.lrs.append(self.lr_at(len(self.lrs)))
        self.losses.append(loss)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** len(self.losses))  # bias correction: the EMA starts at 0
        self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        if not math.isfinite(loss) or smooth > self.diverge * self._best or len(self.lrs) >= self.num_steps:
            self.stopped_early = len(self.lrs) < self.num_steps
            self.model.stop_training = True


def suggest(lrs, smoothed, skip: int = 3) -> dict[str, float | None]:
    """{suggested_max_lr, min_loss_lr, steepest_lr} from the smoothed curve (see the module docstring).

    The first `skip` points are left out of the steepest-descent search: the bias-corrected average is
    still mostly the first few raw losses there.
    """
    lrs, sm = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(sm)
    if not finite.any():
        return {"suggested_max_lr": None, "min_loss_lr": None, "steepest_lr": None}
    i_min = int(np.nanargmin(np.where(finite, sm, np.nan)))
    steepest = None
    if i_min - skip >= 2:
        seg = slice(skip, i_min + 1)
        slope = np.gradient(sm[seg], np.log(lrs[seg]))
        steepest = float(lrs[seg][int(np.argmin(slope))])
    out = {"suggested_max_lr": float(lrs[i_min] / 10), "min_loss_lr": float(lrs[i_min]), "steepest_lr": steepest,
           "diverged": i_min < len(sm) - max(3, len(sm) // 20)}
    if not out["diverged"]:
        # No blow-up within the sweep (common with batch norm): the minimum sits at the sweep's end and /10 of it
        # means nothing. Use the knee instead: the lowest LR by which 90% of the loss drop had happened.
        drop = sm[finite][0] - sm[i_min]
        knee = int(np.argmax(sm[: i_min + 1] <= sm[i_min] + 0.1 * drop)) if drop > 0 else i_min
        out["suggested_max_lr"] = float(lrs[knee])
    return out


def plot(path: str, result: dict) -> None:
    # heavy: only when the plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # heavy: only when the plot is drawn
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=1, label="loss per step")
    ax.plot(result["lrs"], result["smoothed"], "b-", lw=2, label="smoothed")
    for key, style in (("suggested_max_lr", "g--"), ("min_loss_lr", "r:"), ("steepest_lr", "m-.")):
        if result.get(key):
            ax.axvline(result[key], color=style[0], ls=style[1:], label=f"{key} {result[key]:.2g}")
    ax.set_xscale("log")
    finite = [v for v in result["smoothed"] if math.isfinite(v)]
    if finite:  # the divergence spike would flatten the interesting part of the curve
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run_lr_find(config, num_steps: int = 200, start_lr: float = 1e-5, end_lr: float = 10.0,
                out_dir: str = "lr_find") -> dict:
    """Sweeps, writes lr_find.png and lr_find.json to out_dir, returns the result dict."""


    info = dataset_info(config.data)
    check_against_schema(config, info.schema)
    keras.utils.set_random_seed(config.train.seed)
    previous_policy = distribute.set_precision(config)
    try:
        model = build_model(info.schema, config)
        losses, weights = make_losses(info.schema, config.loss, info.class_counts.get(config.data.train_split),
                                      split_examples(config.data, config.data.train_split))
        o = config.optim
        momentum = o.momentum_min if o.schedule == "one_cycle" else o.momentum
        opt = keras.optimizers.SGD(learning_rate=start_lr, momentum=momentum, nesterov=o.nesterov)
        model.compile(optimizer=opt, loss=losses, loss_weights=weights)
        ds = make_train_dataset(config, distribute.global_batch_size(config, 1), info.schema)
        cb = LRRangeTest(start_lr, end_lr, num_steps)
        # The training run's own loop (one driver for both), one step per "epoch" so each logged loss is its step's
        strategy = tf.distribute.get_strategy()
        Loop(model, strategy, ds.element_spec).fit(ds, None, Schedule(num_steps, 1),
                                                   keras.callbacks.CallbackList([cb], model=model))
    finally:
        keras.config.set_dtype_policy(previous_policy)
    result = {"lrs": cb.lrs, "losses": cb.losses, "smoothed": cb.smoothed, "stopped_early": cb.stopped_early,
              "momentum": momentum, "start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps,
              **suggest(cb.lrs, cb.smoothed)}
    result["rule"] = RULES[result.get("diverged", True)]
    tf.io.gfile.makedirs(out_dir)
    png = os.path.join(out_dir, "lr_find.png")
    if "://" in out_dir:  # matplotlib writes local files
        plot("/tmp/lr_find.png", result)
        tf.io.gfile.copy("/tmp/lr_find.png", png, overwrite=True)
    else:
        plot(png, result)
    with tf.io.gfile.GFile(os.path.join(out_dir, "lr_find.json"), "w") as f:
        f.write(json.dumps({**result, "config": config.to_dict()}, indent=2, allow_nan=True))
    return result


def main(argv=None) -> int:
    p = cli.ArgumentParser(description="LR range test. Other flags go to the trainer config.")
    p.add_argument("--steps", type=cli.positive_int, default=200)
    p.add_argument("--start_lr", type=float, default=1e-5)
    p.add_argument("--end_lr", type=float, default=10.0)
    p.add_argument("--out", help="output folder (default JOB_DIR/lr_find with --job_dir, else ./lr_find)")
    argv = sys.argv[1:] if argv is None else argv
    if answered_help_or_config(argv, p.format_help()):
        return 0
    args, rest = p.parse_known_args(argv)
    if not 0 < args.start_lr < args.end_lr:
        p.error(f"need 0 < --start_lr < --end_lr, got {args.start_lr:g} and {args.end_lr:g}")
    config = load_config(rest)
    out = args.out or (os.path.join(config.train.job_dir, "lr_find") if config.train.job_dir else "lr_find")
    r = run_lr_find(config, args.steps, args.start_lr, args.end_lr, out)
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    print(f"{len(r['lrs'])} steps, LR {r['lrs'][0]:.2g} -> {r['lrs'][-1]:.2g}"
          f"{' (stopped: loss diverged)' if r['stopped_early'] else ''}")
    print(f"min smoothed loss at LR {fmt(r['min_loss_lr'])}; steepest descent at LR {fmt(r['steepest_lr'])}")
    print(f"suggested max LR ({r['rule']}): {fmt(r['suggested_max_lr'])}   -> --optim.max_lr="
          f"{fmt(r['suggested_max_lr'])}")
    print(f"wrote {os.path.join(out, 'lr_find.png')} and lr_find.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
