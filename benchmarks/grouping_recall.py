"""Near-duplicate grouping on the real 7,000 images: does a copy land in its source's group, and how many
distinct real images get joined? The signature + cosine grouping: the exact method in one process, the build's
Beam grouping (tfds_person_attrs/near_duplicates.py: all pairs at these sizes) and its blocked search alone (what
the build runs past near_duplicates.EXACT_MAX_IMAGES images), against the 64-bit pHash at Hamming distance 10
that it replaced.

    python benchmarks/grouping_recall.py --zip ../shared/data/hvc_data.zip --sources 2000
    python benchmarks/grouping_recall.py --zip ../shared/data/hvc_data.zip --limit 1000 --sources 1000

Copies planted: a mirror image, a JPEG re-encode at quality 50, a 5% crop (5% of the width and 5% of the
height cut, split at random between the two sides; the cropped size is kept), brightness +10% and -10%, and
a resize to 3/4 (all saved as JPEG quality 90 except the quality-50 one). Prints JSON.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import sys
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tfds_person_attrs import grouping  # noqa: E402
from tfds_person_attrs.images import inspect_image  # noqa: E402

EDITS = ("mirror", "jpeg_q50", "crop_5pct", "brightness_+10pct", "brightness_-10pct", "resize_3/4")


def planted_copies(jpeg: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    w, h = im.size
    cw, ch = round(w * 0.05), round(h * 0.05)
    left, top = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
    edited = {
        "mirror": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop_5pct": im.crop((left, top, w - (cw - left), h - (ch - top))),
        "brightness_+10pct": ImageEnhance.Brightness(im).enhance(1.1),
        "brightness_-10pct": ImageEnhance.Brightness(im).enhance(0.9),
        "resize_3/4": im.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BICUBIC),
    }
    out = {}
    for name, picture in edited.items():
        buf = io.BytesIO()
        picture.save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=50)
    out["jpeg_q50"] = buf.getvalue()
    return out


# The grouping this project used before: imagehash.phash's recipe on the letterbox-trimmed picture, Hamming <= 10.
_N32 = np.arange(32)
_PHASH_DCT = 2.0 * np.cos(np.pi * np.arange(8)[:, None] * (2 * _N32[None, :] + 1) / 64)


def old_phash(jpeg: bytes) -> int:
    im = Image.open(io.BytesIO(jpeg))
    im.draft("L", (56, 56))
    gray = np.asarray(im.convert("L"))
    cols, rows = np.flatnonzero(gray.mean(axis=0) > 12), np.flatnonzero(gray.mean(axis=1) > 12)  # its trim
    if cols.size >= 2 and rows.size >= 2:
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    small = Image.fromarray(gray).resize((32, 32), Image.Resampling.LANCZOS)
    low = _PHASH_DCT @ np.asarray(small, np.float64) @ _PHASH_DCT.T
    return int(np.packbits((low > np.median(low)).reshape(-1)).view(">u8")[0])


def old_groups(ids, hashes, threshold=10) -> dict[str, str]:
    h = np.asarray(hashes, dtype=np.uint64)
    parent = list(range(len(ids)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(h), 1024):
        rows, cols = np.nonzero(np.bitwise_count(h[start : start + 1024, None] ^ h[None, :]) <= threshold)
        for r, c in zip(rows + start, cols):
            if c > r:
                parent[max(find(r), find(c))] = min(find(r), find(c))
    return {ids[i]: ids[find(i)] for i in range(len(ids))}


def beam_groups(ids, signatures, threshold, blocked: bool = False) -> tuple[dict[str, str], dict]:
    """The build's Beam grouping, DirectRunner in process; images without a near-duplicate are their own group.
    blocked: the blocked search whatever the image count (as past EXACT_MAX_IMAGES)."""
    import apache_beam as beam

    from tfds_person_attrs.near_duplicates import EXACT_MAX_IMAGES, NearDuplicateGroups, grouping_metrics

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "groups.json")
        pipeline = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--direct_num_workers=1"]))
        step = NearDuplicateGroups(threshold, exact_max_images=0 if blocked else EXACT_MAX_IMAGES)
        _ = (pipeline | beam.Create(list(zip(ids, signatures))) | step
             | beam.combiners.ToList() | beam.Map(lambda pairs: open(out, "w").write(json.dumps(pairs))))
        result = pipeline.run()
        result.wait_until_finish()
        counters = grouping_metrics(result)
        with open(out) as f:
            found = dict(json.load(f))
    return {i: found.get(i, i) for i in ids}, counters


def pairs_together(groups: dict[str, str], members: list[str]) -> set[tuple[str, str]]:
    by_group = collections.defaultdict(list)
    for i in members:
        by_group[groups[i]].append(i)
    return {(a, b) for g in by_group.values() for a in g for b in g if a < b}


def report(groups: dict[str, str], real: list[str], copies: dict[str, tuple[str, str]]) -> dict:
    recall = collections.defaultdict(list)
    for copy_id, (source, edit) in copies.items():
        recall[edit].append(groups[copy_id] == groups[source])
    joined = pairs_together(groups, real)
    return {"copy_with_source": {e: round(float(np.mean(v)), 4) for e, v in recall.items()},
            "all_copies": round(float(np.mean([x for v in recall.values() for x in v])), 4) if recall else None,
            "distinct_real_pairs_joined": len(joined),
            "real_images_in_multi_image_groups": len({x for p in joined for x in p})}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zip",
                   default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hvc_data.zip"))
    p.add_argument("--limit", type=int, default=7000, help="real images used")
    p.add_argument("--sources", type=int, default=7000, help="real images (drawn at random) that get copies")
    p.add_argument("--threshold", type=float, default=grouping.DEFAULT_THRESHOLD)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(args.zip) as z:
        real = {f"resized/{i}.jpg": z.read(f"resized/{i}.jpg") for i in range(1, args.limit + 1)}
    start = time.time()
    images, copies = dict(real), {}
    chosen = rng.choice(list(real), size=min(args.sources, len(real)), replace=False)
    for rid in sorted(chosen):
        for edit, data in planted_copies(real[rid], rng).items():
            images[f"{rid}~{edit}"] = data
            copies[f"{rid}~{edit}"] = (rid, edit)
    made = time.time() - start
    ids = list(images)
    sigs = [inspect_image(images[i]).signature for i in ids]
    hashes = [old_phash(images[i]) for i in ids]
    real_ids = list(real)
    n_real = len(real_ids)
    result = {"benchmark": "grouping_recall", "machine": f"{platform.machine()} {os.cpu_count()} cores",
              "real_images": n_real, "copies": len(copies), "threshold": args.threshold,
              "seconds_to_make_copies": round(made, 1)}
    # Distinct real images alone (what a build of the real data joins), then with every copy planted.
    exact_real = grouping.near_duplicate_groups(real_ids, sigs[:n_real], args.threshold)
    result["real_only"] = {
        "pHash_hamming_10": report(old_groups(real_ids, hashes[:n_real]), real_ids, {}),
        "signature_exact": report(exact_real, real_ids, {}),
    }
    want = pairs_together(exact_real, real_ids)
    for name, blocked in (("signature_beam", False), ("signature_blocked", True)):
        t = time.time()
        found, _ = beam_groups(real_ids, sigs[:n_real], args.threshold, blocked)
        result["real_only"][name] = report(found, real_ids, {})
        pairs = f"{len(pairs_together(found, real_ids) & want)} of {len(want)}"
        result["real_only"][name]["exact_pairs_found"] = pairs
        result["real_only"][name]["seconds"] = round(time.time() - t, 1)
    exact_all = grouping.near_duplicate_groups(ids, sigs, args.threshold)
    result["with_copies"] = {
        "pHash_hamming_10": report(old_groups(ids, hashes), real_ids, copies),
        "signature_exact": report(exact_all, real_ids, copies),
    }
    for name, blocked in (("signature_beam", False), ("signature_blocked", True)):
        t = time.time()
        found, counters = beam_groups(ids, sigs, args.threshold, blocked)
        result["with_copies"][name] = {
            **report(found, real_ids, copies), "seconds": round(time.time() - t, 1),
            "candidate_pairs_per_image": round(counters.get("grouping_candidate_pairs", 0) / len(ids), 1),
            "same_groups_as_exact": round(float(np.mean([found[i] == exact_all[i] for i in ids])), 4)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
