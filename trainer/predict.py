"""Predict every attribute for image files with an exported SavedModel (trainer/serving/saved_model.py, written
by trainer.export).

    python -m trainer.predict --model JOB_DIR/model photos/ 'more/*.jpg' one.jpg > predictions.jsonl
    python -m trainer.predict --model JOB_DIR/model photos/ --format csv --out predictions.csv

Arguments are files, folders (their image files, not recursive) or globs (local or gs://). Output: one JSON
line or CSV row per image: `path`, then per attribute its label and `<attr>_prob` (the probability of that
label); multi-label attributes give the names the export decides present (probability >= the label's
threshold: chosen on validation when the job had `trainer.evaluate --choose_thresholds` before export, listed
in the export's labels.json, else 0.5) joined by the schema's delimiter, and one `<attr>_prob_<class>` per
class (a `<attr>_probs` object in JSON); a CSV cell that a spreadsheet would run as a formula (a path or class
name starting with `=`, `+`, `-`, `@`) starts with `'`, so it shows as text. Non-JPEG images (PNG, ...) are
converted to JPEG first, since the model's signature takes JPEG bytes. The rows go to stdout (or --out);
unreadable files are named on stderr with the reason (truncated, not an image, empty: worded as the dataset
build words it, ...) and skipped, and the exit code is 1 if there were any (2 if nothing could be predicted at
all, or if the inputs hold no image file); the `predicted N image(s)` summary is on stderr too.
Needs only TensorFlow and Pillow at run time: the model does its own preprocessing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from typing import Iterator

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from tfds_person_attrs import cli, csv_cells
from tfds_person_attrs.images import BadImageError, inspect_image, to_rgb
from trainer.jobdir.paths import recorded_paths

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GLOB_CHARS = set("*?[")


def expand_inputs(args: list[str]) -> tuple[list[str], list[str]]:
    """(image paths, problems): folders list their image files, globs expand; a miss is a problem."""
    paths, problems = [], []
    for a in args:
        if _GLOB_CHARS & set(a):
            found = sorted(tf.io.gfile.glob(a))
            paths += [p for p in found if not tf.io.gfile.isdir(p)]
            if not found:
                problems.append(f"{a}: no file matches")
        elif tf.io.gfile.isdir(a):
            names = sorted(tf.io.gfile.listdir(a))
            images = [os.path.join(a, n) for n in names if n.lower().endswith(IMAGE_EXTS)]
            others = [n for n in names if not n.lower().endswith(IMAGE_EXTS) and not n.endswith("/")]
            if others:  # not an error, but never silent
                print(f"note: {a}: ignored {len(others)} non-image file(s): {', '.join(others[:5])}"
                      f"{' ...' if len(others) > 5 else ''}", file=sys.stderr)
            paths += images
        elif tf.io.gfile.exists(a):
            paths.append(a)
        else:
            problems.append(f"{a}: no such file or folder")
    return paths, problems


def read_as_jpeg(path: str) -> bytes:
    """The file's bytes if it is a JPEG (the serving signature applies its EXIF orientation), else the image
    upright and in 8-bit RGB as the dataset build stores it, re-encoded as JPEG; raises if PIL cannot decode it."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if not data:
        inspect_image(data)  # the dataset build's own check of an empty file, so both say it the same way
    with Image.open(io.BytesIO(data)) as im:  # raises on a file that is not an image at all
        im.load()  # decodes every pixel: a truncated or corrupt file fails here, with Pillow's reason
        if im.format == "JPEG":
            return data
        buf = io.BytesIO()
        to_rgb(ImageOps.exif_transpose(im)).save(buf, "JPEG", quality=95)
        return buf.getvalue()


def unreadable_reason(error: Exception) -> str:
    """Why Pillow could not read a file, in words."""
    if isinstance(error, BadImageError):  # the build's wording for the same file
        return str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not an image: no format Pillow recognises"
    text = str(error)
    if "truncated" in text.lower():
        return f"truncated: the file ends before its image data does ({text})"
    return f"{type(error).__name__}: {text}"


def decode_error_cause(message: str) -> str:
    """TensorFlow's own reason inside an op error ('jpeg::Uncompress failed. Invalid JPEG data ...', ...).

    Around it the message may hold 'Graph execution error:', the Python stack of the op, '{{function_node ...}}'
    tags and the failing node's name; the reason is the last line that is none of those.
    """
    skip = ("Graph execution error", "Detected at node", "File ", "[[")
    lines = [re.sub(r"\{\{[^}]*\}\}", "", line).strip() for line in message.splitlines()]
    causes = [line for line in lines if line and not line.startswith(skip)]
    return causes[-1] if causes else message.strip().splitlines()[0]


class Predictor:
    """The exported model's serving signature and its vocabulary (labels.json beside it)."""

    def __init__(self, model_dir: str):
        why = "an exported SavedModel"
        if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")) and \
                tf.io.gfile.exists(os.path.join(model_dir, "config.yaml")):  # a job dir: its export

            paths, how = recorded_paths(model_dir)
            model_dir, why = paths.model_dir, f"the job dir's export, {how}"
        for needed in ("saved_model.pb", "labels.json"):
            if not tf.io.gfile.exists(os.path.join(model_dir, needed)):
                raise cli.UserError(f"--model {model_dir}: no {needed} there; pass the folder trainer.export wrote "
                                    "(JOB_DIR/model)")
        self.serve = tf.saved_model.load(model_dir).signatures["serving_default"]
        print(f"loaded {model_dir} ({why})", file=sys.stderr, flush=True)  # stdout carries the predictions
        with tf.io.gfile.GFile(os.path.join(model_dir, "labels.json")) as f:
            self.labels = json.load(f)
        self.input_key = self.labels.get("input", "image_bytes")

    def __call__(self, jpegs: list[bytes]) -> dict[str, np.ndarray]:
        out = self.serve(**{self.input_key: tf.constant(jpegs)})
        return {k: v.numpy() for k, v in out.items()}

    def rows(self, paths: list[str], out: dict[str, np.ndarray]) -> Iterator[dict]:
        for i, path in enumerate(paths):
            row = {"path": path}
            for name, a in self.labels["attributes"].items():
                probs = out[f"{name}_probs"][i]
                label = out[f"{name}_label"][i].decode()
                row[name] = label
                if a["kind"] == "multi":
                    row[f"{name}_probs"] = {c: round(float(p), 6) for c, p in zip(a["classes"], probs)}
                else:
                    row[f"{name}_prob"] = round(float(probs[a["classes"].index(label)]), 6)
            yield row


def predict_files(predictor: Predictor, paths: list[str], batch_size: int = 32):
    """Yields ("ok", row) per predicted image and ("error", message) per unreadable one, in input order."""
    for start in range(0, len(paths), batch_size):
        chunk, jpegs = [], []
        for p in paths[start:start + batch_size]:
            try:
                jpegs.append(read_as_jpeg(p))
                chunk.append(p)
            except Exception as e:  # noqa: BLE001 - any read/decode failure is reported with the file's name
                yield "error", f"{p}: unreadable image ({unreadable_reason(e)})"
        if not chunk:
            continue
        try:
            yield from (("ok", r) for r in predictor.rows(chunk, predictor(jpegs)))
        except tf.errors.InvalidArgumentError:
            # A JPEG that PIL opened but TensorFlow cannot decode (truncated, corrupt scan data) fails the whole
            # batch: retry one by one so that only the bad file is skipped.
            for p, j in zip(chunk, jpegs):
                try:
                    yield from (("ok", r) for r in predictor.rows([p], predictor([j])))
                except tf.errors.InvalidArgumentError as e:
                    yield "error", f"{p}: TensorFlow could not decode it ({decode_error_cause(e.message)[:300]})"


def _flat(row: dict) -> dict:
    """CSV has no nesting: a multi-label attribute's probabilities become <attr>_prob_<class> columns."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update({f"{k[:-len('_probs')]}_prob_{c}": p for c, p in v.items()})
        else:
            out[k] = v
    return out


def main(argv=None) -> int:
    p = cli.ArgumentParser(description="Predict person attributes with an exported model.")
    p.add_argument("--model", required=True,
                   help="the exported SavedModel folder (JOB_DIR/model), or a job dir (its export)")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--out", help="output file (default stdout)")
    p.add_argument("--batch_size", type=cli.positive_int, default=32)
    args = p.parse_args(argv)

    paths, problems = expand_inputs(args.inputs)
    for msg in problems:
        print(f"ERROR {msg}", file=sys.stderr)
    if not paths:
        print(f"error: nothing to predict: {' '.join(args.inputs)} hold(s) no image file "
              f"({', '.join(IMAGE_EXTS)})", file=sys.stderr)
        return 2
    predictor = Predictor(args.model)
    f = tf.io.gfile.GFile(args.out, "w") if args.out else sys.stdout
    writer, n_ok = None, 0
    try:
        for kind, item in predict_files(predictor, paths, args.batch_size):
            if kind == "error":
                problems.append(item)
                print(f"ERROR {item} -- skipped", file=sys.stderr)
                continue
            n_ok += 1
            if args.format == "jsonl":
                f.write(json.dumps(item) + "\n")
            else:
                row = _flat(item)
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row), lineterminator="\n")
                    writer.writeheader()
                writer.writerow(csv_cells.text_row(row))
    finally:
        if args.out:
            f.close()
    print(f"predicted {n_ok} image(s); {len(problems)} problem(s)", file=sys.stderr)
    if problems:
        return 1 if n_ok else 2
    return 0 if n_ok else 2


if __name__ == "__main__":
    sys.exit(cli.run(main))
