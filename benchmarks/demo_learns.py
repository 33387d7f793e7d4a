"""Does `make demo` teach? Runs the demo as a user does and checks every head beats its majority baseline.

    python benchmarks/demo_learns.py --out /tmp/demo_learns --seeds 0,1
    python benchmarks/demo_learns.py --out /tmp/demo_learns --seeds 1 --other /work/main   # beside another checkout

Each seed runs `python -m pipeline.demo --out OUT/seedN --seed N` (generate -> build -> train the demo preset ->
evaluate on the test split -> predict) as a subprocess of this interpreter, and is timed: wall seconds and the
user+sys CPU seconds of the whole chain (every step is a child process). `--other DIR` also runs DIR's own demo
(its .venv, its default seed) right after each seed, so both are measured under the same machine load. The test
accuracy of each head sits beside the majority-class baseline that `trainer.evaluate` reports (the training
split's most frequent class, scored on the test split). Prints JSON; exits 1 if any head of this checkout's runs
does not beat its baseline. A few minutes per run on 2 CPU cores (docs/performance.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(python: str, cwd: str, out: str, seed: int | None) -> dict:
    """One demo run: its wall and CPU seconds, and each single-label head's test accuracy and baseline."""
    args = [python, "-m", "pipeline.demo", "--out", out] + ([] if seed is None else ["--seed", str(seed)])
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.time() - start
    with open(os.path.join(out, "run", "eval", "metrics.json")) as f:
        metrics = json.load(f)
    heads = {name: {"accuracy": round(h["accuracy"], 3), "baseline": round(h["majority_baseline"], 3),
                    "beats_baseline": h["accuracy"] > h["majority_baseline"]}
             for name, h in metrics["heads"].items() if h["kind"] == "single"}
    return {"checkout": cwd, "seed": seed, "wall_s": round(wall, 1),
            "cpu_user_s": round(after.ru_utime - before.ru_utime, 1),
            "cpu_sys_s": round(after.ru_stime - before.ru_stime, 1),
            "test_examples": metrics["num_examples"], "heads_beaten": sum(h["beats_baseline"] for h in heads.values()),
            "heads": heads}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs (OUT/seedN, OUT/other_after_seedN)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds of the generated demo set")
    p.add_argument("--other", help="another checkout (with its own .venv) whose demo runs after each seed")
    a = p.parse_args(argv)
    runs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        runs.append(run_demo(sys.executable, REPO, os.path.join(a.out, f"seed{seed}"), seed))
        if a.other:
            other_python = os.path.join(os.path.abspath(a.other), ".venv", "bin", "python")
            runs.append(run_demo(other_python, os.path.abspath(a.other), os.path.join(a.out, f"other_after_seed{seed}"),
                                 None))
    mine = [r for r in runs if r["checkout"] == REPO]
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": runs}, indent=2))
    return 0 if all(r["heads_beaten"] == len(r["heads"]) for r in mine) else 1


if __name__ == "__main__":
    sys.exit(main())
