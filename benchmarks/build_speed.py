"""Dataset build time: the project's Beam + TFDS build vs the plainest loop, whole processes, one run.

    python benchmarks/build_speed.py --manual_dir ../shared/data --repeats 2

(a) `python -m pipeline.preprocess` on the whole real data (DirectRunner, default options);
(b) one Python process that reads each image's bytes from the same zip and writes a tf.train.Example with
its labels to one TFRecord file. Both are timed as whole processes (interpreter start and imports
included), interleaved, and the best of `--repeats` runs of each is kept. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

PLAIN_LOOP = r'''
import csv, io, sys, zipfile
import tensorflow as tf
zip_path, out = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(zip_path)
names = set(z.namelist())
rows = list(csv.DictReader(io.StringIO(z.read("hvc_annotations.csv").decode())))
n = 0
with tf.io.TFRecordWriter(out) as w:
    for r in rows:
        if r["image_path"] not in names:
            continue
        feat = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[z.read(r["image_path"])])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[r["image_path"].encode()]))}
        for k in ("gender", "imagequality", "age", "weight", "carryingbag", "footwear", "emotion", "bodypose"):
            feat[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[r[k].encode()]))
        w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
        n += 1
print(n)
'''


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--manual_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("beam_args", nargs="*", help="extra flags for pipeline.preprocess, e.g. --direct_num_workers=2")
    args = p.parse_args()
    zip_path = os.path.join(args.manual_dir, "hvc_data.zip")
    project, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            plain.append(timed([sys.executable, "-c", PLAIN_LOOP, zip_path, os.path.join(tmp, "plain.tfrecord")]))
            project.append(timed([sys.executable, "-m", "pipeline.preprocess", "--manual_dir", args.manual_dir,
                                  "--data_dir", os.path.join(tmp, "data"), "--overwrite", *args.beam_args]))
    result = {
        "benchmark": "build_speed",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "images": 7000,
        "project_build_s": round(min(project), 2),
        "plain_loop_s": round(min(plain), 2),
        "ratio": round(min(project) / min(plain), 2),
        "all_project_s": [round(t, 2) for t in project],
        "all_plain_s": [round(t, 2) for t in plain],
        "beam_args": args.beam_args,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
