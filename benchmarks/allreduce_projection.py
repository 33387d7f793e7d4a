"""Projection: all-reduce time per step for N nodes x 8 GPUs, from the bytes benchmarks/multiworker.py measured.

    python benchmarks/allreduce_projection.py multiworker.json --nodes 1,2,4,8,16 --gbps 25,100,400,1600

A projection, not a measurement: ring all-reduce arithmetic on measured sizes. A ring over n = 8N GPUs moves
2(n-1)/n x S bytes through every GPU's link; inside a node that is NVLink, between nodes every byte a node
sends or receives crosses its network links, so for N >= 2 the time is bounded by

    T_bw = 2 (n-1)/n x S / B          (B = a node's network bandwidth, all its NICs together)
    T_lat = 2 (n-1) x alpha           (alpha = latency per ring step)

per all-reduce. S is the gradient all-reduce (model parameters, float32). Synchronised batch norm adds
2 x (number of BN layers) all-reduces of a few KB per step that sit on the critical path (each needs the
previous layer); for messages that small NCCL uses a tree, so each costs about 2 ceil(log2 n) x alpha. They
are reported separately because they are avoidable (model.sync_batchnorm=false, fine once each GPU's batch is
large enough for its own statistics).
TensorFlow all-reduces the gradients in one pack after the backward pass (no overlap by default), so the
communication adds to the step: the table gives T, and the compute time per step at which T is 10% of the
step (90% scaling efficiency); with overlap, communication is hidden once the backward pass takes >= T.
"""

from __future__ import annotations

import argparse
import json
import math


def ring_seconds(size_bytes: float, gpus: int, gbit_per_s: float, alpha_s: float) -> float:
    if gpus <= 1:
        return 0.0
    return 2 * (gpus - 1) / gpus * size_bytes / (gbit_per_s * 1e9 / 8) + 2 * (gpus - 1) * alpha_s


def tree_latency_seconds(gpus: int, alpha_s: float) -> float:
    return 2 * math.ceil(math.log2(gpus)) * alpha_s if gpus > 1 else 0.0


def sizes(result: dict) -> dict[str, dict]:
    """{model: {'gradient_bytes', 'collective_bytes', 'bn_layers'}} from the benchmark's two-worker variant."""
    out = {}
    two = result["best"]["two"]
    for m in [two, *two.get("bytes_only", [])]:
        out[m["model"]] = {"gradient_bytes": 4 * m["trainable_params"], "collective_bytes": m["collective_bytes"]}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark_json", help="output of benchmarks/multiworker.py")
    p.add_argument("--nodes", default="1,2,4,8,16")
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--gbps", default="25,100,400,1600", help="network bandwidth per node, Gbit/s")
    p.add_argument("--nvlink_gbps", type=float, default=3600.0, help="per-GPU NVLink bandwidth inside a node")
    p.add_argument("--alpha_us", type=float, default=10.0, help="latency per ring step, microseconds")
    p.add_argument("--bn_layers", type=int, default=13, help="BatchNormalization layers of WRN-16-k")
    a = p.parse_args(argv)
    with open(a.benchmark_json) as f:
        measured = sizes(json.load(f))
    alpha = a.alpha_us * 1e-6
    rows = []
    for model, s in measured.items():
        for n in (int(x) for x in a.nodes.split(",")):
            gpus = n * a.gpus_per_node
            bws = [a.nvlink_gbps] if n == 1 else [float(x) for x in a.gbps.split(",")]
            for gbps in bws:
                t = ring_seconds(s["gradient_bytes"], gpus, gbps, alpha)
                bn = 2 * a.bn_layers * tree_latency_seconds(gpus, alpha)
                rows.append({"model": model, "gradient_MB": round(s["gradient_bytes"] / 1e6, 2),
                             "measured_collective_MB": round(s["collective_bytes"] / 1e6, 2), "nodes": n,
                             "gpus": gpus, "link": "NVLink" if n == 1 else f"{gbps:g} Gbit/s",
                             "gradient_allreduce_ms": round(1e3 * t, 2), "sync_bn_latency_ms": round(1e3 * bn, 2),
                             "compute_ms_for_90pct": round(9e3 * (t + bn), 1),
                             "compute_ms_for_90pct_no_sync_bn": round(9e3 * t, 1)})
    print(json.dumps({"projection": "ring all-reduce, see the module docstring", "alpha_us": a.alpha_us,
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
