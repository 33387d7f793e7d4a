"""The whole chain on one machine: data -> build -> train -> evaluate (+ report) -> predict.

    python -m pipeline.demo --out out                                  # a generated demo set, demo preset
    python -m pipeline.demo --out out --data ../shared/data/hvc_data.zip --preset hvc
    python -m pipeline.demo --out out --seed 1                         # another generated set
    python -m pipeline.demo --out out --verbose                        # every library log line of every step

Each step is the same command a user (or a Vertex AI / Kubeflow step) runs, printed before it runs, so the
demo doubles as a transcript of how to use the project. It ends with each head's test accuracy beside its
majority-class baseline, and the path of the HTML report.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import zipfile

from pipeline import chain
from tfds_person_attrs import cli

NUM_SAMPLE_IMAGES = 8


class StepFailed(Exception):
    def __init__(self, title: str, code: int):
        super().__init__(f"step '{title}' failed (exit code {code}); its output is above")
        self.code = code


def step(title: str, command: chain.Step) -> None:
    """Runs the command as a subprocess (this interpreter), after printing it as a user types it."""
    print(f"\n=== {title}\n$ {command.command}", flush=True)
    start = time.time()
    env = dict(os.environ, **({cli.VERBOSE_ENV: "1"} if cli.verbose() else {}))
    code = subprocess.run([sys.executable, *command.argv], env=env).returncode
    if code:
        raise StepFailed(title, code)
    print(f"=== {title}: done in {time.time() - start:.0f} s", flush=True)


class LocalSteps:
    """The chain's steps run here, one subprocess each, writing under OUT/data and OUT/run."""

    def __init__(self, out: str):
        self.data_dir, self.job_dir = os.path.join(out, "data"), os.path.join(out, "run")
        self.eval_dir = os.path.join(self.job_dir, "eval")

    def preprocess(self, manual_dir, dataset_config):
        step("build the dataset (Beam, DirectRunner)", chain.preprocess(manual_dir, self.data_dir, dataset_config))
        return self.data_dir

    def train(self, data, config, overrides):
        step("train", chain.train(data, self.job_dir, config, *overrides))
        return self.job_dir

    def evaluate(self, model, data, split):
        step(f"evaluate on the {split} split, with an HTML report", chain.evaluate(model, data, split, self.eval_dir))
        return self.eval_dir


def sample_images(manual: str, out: str, n: int = NUM_SAMPLE_IMAGES) -> list[str]:
    """The first n images of the data (extracted from a zip into OUT/sample_images), to show `predict` on."""
    if os.path.isdir(manual):
        return sorted(glob.glob(os.path.join(manual, "resized", "*.jpg")))[:n]
    folder = os.path.join(out, "sample_images")
    with zipfile.ZipFile(manual) as z:
        names = sorted(name for name in z.namelist() if name.lower().endswith(".jpg"))[:n]
        return [z.extract(name, folder) for name in names]


def summary_table(metrics: dict) -> str:
    """head / accuracy / baseline, a mark on every head that does not beat its baseline, and the mean."""
    lines = [f"{'head':<16}{'accuracy':>10}{'baseline':>10}"]
    for name, h in metrics["heads"].items():
        if h["kind"] == "multi":
            lines.append(f"{name:<16}{h['mA']:>10.3f}{h['mA_chance']:>10.3f}   (multi-label: mA beside its chance "
                         "level" + (", not above it)" if h["mA"] <= h["mA_chance"] else ")"))
            continue
        base = h.get("majority_baseline")
        beaten = base is None or h["accuracy"] > base
        lines.append(f"{name:<16}{h['accuracy']:>10.3f}{'-' if base is None else f'{base:.3f}':>10}"
                     + ("" if beaten else "   <- not better than the baseline"))
    s = metrics["summary"]
    if s.get("mean_accuracy") is not None and s.get("mean_majority_baseline") is not None:
        lines.append(f"{'mean':<16}{s['mean_accuracy']:>10.3f}{s['mean_majority_baseline']:>10.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out", help="folder for the data, the dataset and the run")
    p.add_argument("--data", help="hvc_data.zip or its folder; default: generate a demo set")
    p.add_argument("--preset", default="demo", help="trainer preset (demo, smoke, hvc) or a YAML config")
    p.add_argument("--num_images", type=cli.positive_int, default=1200, help="size of the generated demo set")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated demo set")
    p.add_argument("overrides", nargs="*", help="trainer overrides such as --train.epochs=3 (after --)")
    args = p.parse_args(argv)
    if args.data and not os.path.exists(args.data):
        raise cli.UserError(f"--data {args.data}: no such file or folder; pass hvc_data.zip or its folder")
    try:
        run_demo(args)
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    return 0


def run_demo(args) -> None:
    start = time.time()
    manual = args.data
    if not manual:
        manual = os.path.join(args.out, "demo_data")
        step("generate a demo set", chain.Step("tfds_person_attrs.demo.generate", [
            "--out", manual, "--num_images", str(args.num_images), "--seed", str(args.seed)]))
    outputs = chain.create_pipeline(LocalSteps(args.out), manual, dataset_config=None, train_config=args.preset,
                                    train_overrides=args.overrides, eval_split="test")
    job_dir, eval_dir = outputs["model"], outputs["report"]
    predictions = os.path.join(job_dir, "predictions.jsonl")
    step("predict with the exported SavedModel", chain.Step("trainer.predict", [
        "--model", os.path.join(job_dir, "model"), "--out", predictions, *sample_images(manual, args.out)]))
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        metrics = json.load(f)
    minutes, seconds = divmod(round(time.time() - start), 60)
    print(f"\n=== demo done in {minutes} min {seconds:02d} s. Test split ({metrics['num_examples']} images), "
          "accuracy beside the majority-class baseline:")
    print(summary_table(metrics))
    print(f"\nReport:      {os.path.join(eval_dir, 'index.html')}\nPredictions: {predictions}\nJob dir:     {job_dir}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
