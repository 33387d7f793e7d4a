"""Where the dataset build's memory goes: resident memory as each Beam stage starts, in one build process.

    python benchmarks/build_memory.py --manual_dir /tmp/person_attrs_build_speed/hvc_28000.zip

(the zips of benchmarks/build_speed.py). Runs `pipeline.preprocess` in this process on the in-process
DirectRunner, reads VmRSS each time the runner starts a bundle (Beam's own debug log line names the stage) and
prints JSON: the peak, and the resident memory when the build reaches each phase (job graph built, the
grouping's shuffle written and read, its components, splits assigned, the shard writer's references grouped by
shard). Compare two sizes to see which phase grows with the data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (phase, a piece of the name of the first stage that starts it)
PHASES = (
    ("graph built, first stage", "ReadAnnotations"),
    ("grouping: first table's shard packs written", "GroupByShard0/Write"),
    ("grouping: first table's shard packs read", "GroupByShard0/Read"),
    ("grouping: components", "Components"),
    ("splits assigned", "AssignSplits"),
    ("shard writer: references grouped by shard", "GroupShards/Read"),
)


def resident_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


class StageMemory(logging.Handler):
    """Records resident memory at the first bundle of each phase's stage."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.start, self.at = time.time(), {}

    def emit(self, record):
        msg = record.getMessage()
        if not msg.startswith("Running bundle for stage"):
            return
        stage = msg.split("\n")[0]
        for phase, marker in PHASES:
            if marker in stage and phase not in self.at:
                self.at[phase] = {"rss_mb": resident_mb(), "seconds": round(time.time() - self.start, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--manual_dir", required=True)
    args = p.parse_args()
    handler = StageMemory()
    bundle_log = logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner.run_bundle")
    bundle_log.setLevel(logging.DEBUG)
    bundle_log.addHandler(handler)
    bundle_log.propagate = False  # the debug lines are for the handler only
    from pipeline import preprocess

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # the build's summary
        summary = preprocess.run(["--manual_dir", args.manual_dir, "--data_dir", tmp, "--overwrite"])
    print(json.dumps({
        "benchmark": "build_memory",
        "images_written": summary["written"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "phases": handler.at,
    }, indent=2))


if __name__ == "__main__":
    main()
