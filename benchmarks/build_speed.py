"""Dataset build cost as the data grows: whole `python -m pipeline.preprocess` processes on 7,000, 14,000 and
28,000 images, against one JPEG decode per image timed in the same run.

    python benchmarks/build_speed.py --zip ../shared/data/hvc_data.zip --sizes 7000,14000,28000
    python benchmarks/build_speed.py --before ../main     # also builds with another checkout, size by size

The real 7,000 images (and their 13,573 CSV rows) plus copies made here: a mirror image (14k), then +10%
brightness and a mirrored +10% brightness (28k), JPEG quality 90, each a new CSV row with its source's labels,
in a stored zip like the real one (cached under --work_dir; the copies, at quality 90, are larger than the
originals). Each build runs under /usr/bin/time: wall seconds, CPU seconds (user + system, all threads) and
peak resident memory. The reference is `tf.io.decode_jpeg` on one thread, CPU seconds per image, over the real
images and over the added copies. Marginal cost = extra build CPU per extra image between the smallest and
largest size, in decodes of the added copies; CPU ms per image at each size shows whether the cost is linear.
With --before DIR, each size is also built by the code in DIR (another checkout, e.g. a worktree of main, run
with this interpreter), right before this checkout's build of the same size, so both face the same load.
Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile

from PIL import Image, ImageEnhance

EDITS = ("mirror", "brighter", "brighter_mirror")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copies(jpeg: bytes) -> dict[str, bytes]:
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    brighter = ImageEnhance.Brightness(im).enhance(1.1)
    out = {}
    for name, picture in (("mirror", im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), ("brighter", brighter),
                          ("brighter_mirror", brighter.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
        buf = io.BytesIO()
        picture.save(buf, "JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


def make_zips(real_zip: str, sizes: list[int], work_dir: str) -> dict[int, str]:
    paths = {n: os.path.join(work_dir, f"hvc_{n}.zip") for n in sizes}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    with zipfile.ZipFile(real_zip) as z:
        text = z.read("hvc_annotations.csv").decode()
        images = {n: z.read(n) for n in z.namelist() if n.endswith(".jpg")}
    reader = csv.DictReader(io.StringIO(text))
    header, rows = reader.fieldnames, list(reader)
    with_image = [r for r in rows if r["image_path"] in images]
    made = {}
    for r in with_image:
        for edit, data in copies(images[r["image_path"]]).items():
            made[(edit, r["image_path"])] = data
    for n, path in paths.items():
        extra = n - len(with_image)
        out_rows = list(rows)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, data in images.items():
                z.writestr(name, data)
            for k in range(extra):
                edit, src = EDITS[k // len(with_image)], with_image[k % len(with_image)]
                name = f"copies/{edit}/{src['image_path'].split('/')[-1]}"
                z.writestr(name, made[(edit, src["image_path"])])
                out_rows.append({**src, "image_path": name})
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=header)
            w.writeheader()
            w.writerows(out_rows)
            z.writestr("hvc_annotations.csv", buf.getvalue())
    return paths


def decode_cpu_per_image(zip_path: str, prefix: str) -> float:
    code = (
        "import sys, time, zipfile, tensorflow as tf\n"
        "z = zipfile.ZipFile(sys.argv[1])\n"
        "data = [z.read(n) for n in z.namelist() if n.endswith('.jpg') and n.startswith(sys.argv[2])]\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
        "tf.config.threading.set_inter_op_parallelism_threads(1)\n"
        "[tf.io.decode_jpeg(d) for d in data[:200]]\n"
        "t = time.process_time()\n"
        "for d in data: tf.io.decode_jpeg(d)\n"
        "print((time.process_time() - t) / len(data))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, zip_path, prefix], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def timed_build(zip_path: str, data_dir: str, beam_args: list[str], code_dir: str = HERE) -> dict:
    """One whole build process, run in `code_dir` (whose `pipeline` package it imports)."""
    fmt = "%e %U %S %M"
    cmd = ["/usr/bin/time", "-f", fmt, sys.executable, "-m", "pipeline.preprocess", "--manual_dir",
           os.path.abspath(zip_path), "--data_dir", os.path.abspath(data_dir), "--overwrite", *beam_args]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=code_dir,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall, user, system, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return {"wall_s": float(wall), "cpu_s": round(float(user) + float(system), 1), "peak_rss_mb": int(rss_kb) // 1024}


def records(data_dir: str) -> dict[str, bytes]:
    """Every TFRecord shard a build wrote, by file name (to compare two builds byte for byte)."""
    out = {}
    for root, _, files in os.walk(data_dir):
        for name in files:
            if ".tfrecord" in name:
                with open(os.path.join(root, name), "rb") as f:
                    out[name] = f.read()
    return out


def cost_figures(builds: dict[int, dict], decode_s: float) -> dict:
    """Per-image CPU at each size, the marginal cost between consecutive sizes and overall, in decodes."""
    sizes = sorted(builds)
    small, large = sizes[0], sizes[-1]
    marginal_cpu = (builds[large]["cpu_s"] - builds[small]["cpu_s"]) / (large - small)
    marginal_wall = (builds[large]["wall_s"] - builds[small]["wall_s"]) / (large - small)
    steps = {f"{a}-{b}": round((builds[b]["cpu_s"] - builds[a]["cpu_s"]) / (b - a) * 1e3, 3)
             for a, b in zip(sizes, sizes[1:])}
    return {
        "builds": {str(n): {**builds[n], "cpu_ms_per_image": round(builds[n]["cpu_s"] / n * 1e3, 3)} for n in sizes},
        "marginal_cpu_ms_per_image_by_step": steps,
        "marginal_cpu_ms_per_image": round(marginal_cpu * 1e3, 3),
        "marginal_wall_ms_per_image": round(marginal_wall * 1e3, 3),
        "marginal_cost_in_decodes_cpu": round(marginal_cpu / decode_s, 2),
        "peak_rss_growth_mb": builds[large]["peak_rss_mb"] - builds[small]["peak_rss_mb"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zip",
                   default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hvc_data.zip"))
    p.add_argument("--sizes", default="7000,14000,28000")
    p.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "person_attrs_build_speed"))
    p.add_argument("--before", help="another checkout whose build to measure beside this one, size by size")
    p.add_argument("beam_args", nargs="*", help="extra flags for pipeline.preprocess, e.g. --direct_num_workers=2")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    zips = make_zips(args.zip, sizes, args.work_dir)
    made_s = time.time() - start
    decode_real = decode_cpu_per_image(args.zip, "resized/")
    decode = decode_cpu_per_image(zips[max(sizes)], "copies/")
    builds, before, same_records = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            if args.before:
                before[n] = timed_build(zips[n], os.path.join(tmp, f"before_{n}"), args.beam_args, args.before)
            builds[n] = timed_build(zips[n], os.path.join(tmp, str(n)), args.beam_args)
            if args.before:
                same_records[str(n)] = records(os.path.join(tmp, f"before_{n}")) == records(os.path.join(tmp, str(n)))
    result = {
        "benchmark": "build_speed",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "seconds_to_make_data": round(made_s, 1),
        "decode_jpeg_cpu_ms_per_image": {"real": round(decode_real * 1e3, 3), "copies": round(decode * 1e3, 3)},
        **cost_figures(builds, decode),
        "beam_args": args.beam_args,
    }
    if args.before:
        result["before"] = {"code": os.path.abspath(args.before), **cost_figures(before, decode)}
        result["same_record_bytes_as_before"] = same_records
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
