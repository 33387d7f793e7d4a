"""The whole chain on one machine: data -> build -> train -> evaluate (+ report) -> predict.

    python -m pipeline.demo --out out                                  # a generated demo set, smoke preset
    python -m pipeline.demo --out out --data ../shared/data/hvc_data.zip --preset hvc

Each step is the same command a user (or a Vertex AI / Kubeflow step) runs, printed before it runs, so
the demo doubles as a transcript of how to use the project.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys
import time


def step(title: str, cmd: list[str]) -> None:
    print(f"\n=== {title}\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"=== {title}: done in {time.time() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out", help="folder for the data, the dataset and the run")
    p.add_argument("--data", help="hvc_data.zip or its folder; default: generate a demo set")
    p.add_argument("--preset", default="smoke", help="trainer preset (smoke, hvc) or a YAML config")
    p.add_argument("--num_images", type=int, default=600, help="size of the generated demo set")
    p.add_argument("overrides", nargs="*", help="trainer overrides such as --train.epochs=3 (after --)")
    args = p.parse_args(argv)
    # TensorFlow's C++ start-up lines (oneDNN, no CUDA driver) would bury each step's own output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    py = sys.executable
    manual = args.data
    if not manual:
        manual = os.path.join(args.out, "demo_data")
        step("generate a demo set", [py, "-m", "tfds_person_attrs.demo_data", "--out", manual,
                                     "--num_images", str(args.num_images)])
    data_dir = os.path.join(args.out, "data")
    job_dir = os.path.join(args.out, "run")
    step("build the dataset (Beam, DirectRunner)",
         [py, "-m", "pipeline.preprocess", "--manual_dir", manual, "--data_dir", data_dir])
    step("train", [py, "-m", "trainer.task", "--data_dir", data_dir, "--job_dir", job_dir, "--config", args.preset,
                   *args.overrides])
    step("evaluate on the test split, with an HTML report",
         [py, "-m", "trainer.evaluate", "--model", job_dir, "--data_dir", data_dir, "--split", "test",
          "--out", os.path.join(job_dir, "eval")])
    images_dir = manual if os.path.isdir(manual) else None
    if images_dir:
        sample = sorted(glob.glob(os.path.join(images_dir, "resized", "*.jpg")))[:8]
        step("predict with the exported SavedModel",
             [py, "-m", "trainer.predict", "--model", os.path.join(job_dir, "model"), *sample])
    print(f"\nReport: {os.path.join(job_dir, 'eval', 'index.html')}\nJob dir: {job_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
