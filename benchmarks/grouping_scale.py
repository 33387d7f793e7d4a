"""The build's near-duplicate grouping (tfds_person_attrs/near_duplicates.py) at a million signatures, on Beam's
DirectRunner in one process: time, peak memory, candidate pairs per image, and recall of planted clusters.
Up to near_duplicates.EXACT_MAX_IMAGES signatures it compares all pairs, past it it runs the blocked search
("method" in the output).

    python benchmarks/grouping_scale.py --n 1000000 --zip ../shared/data/hvc_data.zip
    python benchmarks/grouping_scale.py --n 32768 --clusters 300 --zip ../shared/data/hvc_data.zip

Signatures: each of the 63 coordinates drawn independently from its distribution over the real images (the
real signatures' per-coordinate statistics, without their correlations), then scaled to unit length. Planted
clusters: a drawn source plus one copy per edit of benchmarks/grouping_recall.py, each made by adding to the
source the signature change that edit caused on a real image (the mirror copy is also mirrored). Prints JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import sys
import tempfile
import time
import zipfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.grouping_recall import EDITS, planted_copies  # noqa: E402
from tfds_person_attrs import grouping  # noqa: E402
from tfds_person_attrs.images import inspect_image, mirrored  # noqa: E402

SHARD = 20_000


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float16)


def real_statistics(zip_path: str, n_real: int, n_edited: int, rng):
    """Real signatures, and per edit the signature changes it caused on `n_edited` real images."""
    with zipfile.ZipFile(zip_path) as z:
        jpegs = [z.read(f"resized/{i}.jpg") for i in range(1, n_real + 1)]
    real = np.stack([inspect_image(j).signature for j in jpegs]).astype(np.float32)
    deltas = collections.defaultdict(list)
    for j, sig in zip(jpegs[:n_edited], real):
        for edit, data in planted_copies(j, rng).items():
            copy = inspect_image(data).signature.astype(np.float32)
            deltas[edit].append((mirrored(copy) if edit == "mirror" else copy) - sig)
    return real, {e: np.stack(d) for e, d in deltas.items()}


def write_signatures(out_dir: str, n: int, n_clusters: int, real, deltas, rng) -> dict[str, str]:
    """Writes shards of (ids, signatures); returns {copy id: source id} for the planted clusters."""
    planted = {}
    n_background = n - n_clusters * (1 + len(EDITS))
    cols = np.arange(real.shape[1])
    sources = unit(real[rng.integers(0, len(real), (n_clusters, real.shape[1])), cols]).astype(np.float32)
    rows, ids = [], []
    for c, src in enumerate(sources):
        rows.append(src)
        ids.append(f"c{c}/source")
        for edit in EDITS:
            d = deltas[edit][rng.integers(0, len(deltas[edit]))]
            copy = unit(src + d).astype(np.float32)
            rows.append(mirrored(copy) if edit == "mirror" else copy)
            ids.append(f"c{c}/{edit}")
            planted[ids[-1]] = f"c{c}/source"
    cluster_sigs = unit(np.stack(rows))
    shard = 0
    for start in range(0, n_background, SHARD):
        m = min(SHARD, n_background - start)
        background = unit(real[rng.integers(0, len(real), (m, real.shape[1])), cols])
        np.savez(os.path.join(out_dir, f"{shard:05d}.npz"), ids=np.array([f"b{start + i}" for i in range(m)]),
                 sigs=background)
        shard += 1
    for start in range(0, len(ids), SHARD):
        np.savez(os.path.join(out_dir, f"{shard:05d}.npz"), ids=np.array(ids[start : start + SHARD]),
                 sigs=cluster_sigs[start : start + SHARD])
        shard += 1
    return planted


def read_shard(path: str):
    with np.load(path) as z:
        for i, sig in zip(z["ids"], z["sigs"]):
            yield str(i), sig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zip",
                   default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hvc_data.zip"))
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--clusters", type=int, default=10_000)
    p.add_argument("--threshold", type=float, default=grouping.DEFAULT_THRESHOLD)
    args = p.parse_args()
    import apache_beam as beam

    from tfds_person_attrs.near_duplicates import NearDuplicateGroups, bits_for, grouping_metrics

    rng = np.random.default_rng(0)
    real, deltas = real_statistics(args.zip, 7000, 300, rng)
    with tempfile.TemporaryDirectory() as tmp:
        shards = os.path.join(tmp, "shards")
        os.mkdir(shards)
        planted = write_signatures(shards, args.n, args.clusters, real, deltas, rng)
        paths = sorted(os.path.join(shards, f) for f in os.listdir(shards))
        out = os.path.join(tmp, "groups")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        pipeline = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--direct_num_workers=1"]))
        _ = (pipeline | beam.Create(paths) | beam.FlatMap(read_shard) | NearDuplicateGroups(args.threshold)
             | beam.Map(lambda kv: f"{kv[0]}\t{kv[1]}") | beam.io.WriteToText(out))
        result = pipeline.run()
        result.wait_until_finish()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        counters = grouping_metrics(result)
        groups = {}
        for name in os.listdir(tmp):
            if name.startswith("groups"):
                with open(os.path.join(tmp, name)) as f:
                    groups.update(line.rstrip("\n").split("\t") for line in f)
    found = collections.defaultdict(list)
    for copy, source in planted.items():
        found[copy.split("/", 1)[1]].append(copy in groups and groups.get(source) == groups[copy])
    background_joined = sum(1 for i in groups if i.startswith("b"))
    cell = counters["grouping_cell_size"]
    print(json.dumps({
        "benchmark": "grouping_scale",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "signatures": args.n, "planted_clusters": args.clusters, "threshold": args.threshold,
        "method": "all pairs" if bits_for(args.n) == 0 else "blocked",
        "wall_s": round(wall, 1), "process_cpu_s": round(cpu, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "candidate_pairs_per_image": round(counters.get("grouping_candidate_pairs", 0) / args.n, 1),
        "largest_cell": cell["max"], "mean_cell": round(cell["mean"], 1),
        "copy_with_source": {e: round(float(np.mean(v)), 4) for e, v in found.items()},
        "background_images_joined_to_another": background_joined,
    }, indent=2))


if __name__ == "__main__":
    main()
