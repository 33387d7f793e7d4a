"""Export a trained model as a SavedModel that takes JPEG bytes: servable without this project.

The `serving_default` signature takes `image_bytes` (tf.string [None], encoded JPEGs), decodes them with the
same `trainer.input.preprocess_ops.image_decoder` as evaluation (traced into the graph, so serving needs no project
code), runs the model and returns per attribute:
  - `<attr>_probs`: float32 [None, C], softmax (single-label) or sigmoid (multi-label) outputs;
  - `<attr>_label`: string [None], the predicted class name; for multi-label the names whose probability is
    >= the label's threshold, joined by the attribute's delimiter ("" when none);
  - `<attr>_active`: int32 [None, C], multi-label only, the 0/1 decisions.
The thresholds are JOB_DIR/thresholds.json's when `trainer.evaluate --choose_thresholds` wrote one, else
trainer.objective.thresholds.DEFAULT_THRESHOLD; `labels.json` (class names and thresholds per attribute) and
`config.yaml` are written beside saved_model.pb. Vertex AI's
prebuilt TensorFlow prediction container serves the folder from AIP_MODEL_DIR; a request is
`{"instances": [{"image_bytes": {"b64": "<base64 JPEG>"}}]}`.

    python -m trainer.export --job_dir JOB [--export_dir JOB/model]
    python -c "import tensorflow as tf; m = tf.saved_model.load('JOB/model'); \
print(m.signatures['serving_default'](image_bytes=tf.constant([open('x.jpg','rb').read()])))"
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import tensorflow as tf

from trainer import cli
from trainer.input.preprocess_ops import image_decoder
from trainer.objective import thresholds as threshold_lib

INPUT_KEY = "image_bytes"
SIGNATURE = "serving_default"


def model_outputs(model, images, flip_tta: bool = False) -> dict[str, Any]:
    """The model's outputs as {attribute: probabilities}, whether it returns a dict or a list of heads.

    flip_tta: also run the mirrored images and average the two probabilities (test-time augmentation; one
    extra forward pass). Meant for models trained with augment.flip, whose classes do not depend on
    left/right (no 'facing left' class).
    """
    out = model(images, training=False)
    if isinstance(out, Mapping):
        out = dict(out)
    else:
        out = dict(zip(model.output_names, out if isinstance(out, (list, tuple)) else [out]))
    if flip_tta:
        mirrored = model_outputs(model, tf.reverse(images, axis=[2]))
        out = {k: (v + mirrored[k]) / 2 for k, v in out.items()}
    return out


def decode_batch(image_bytes: tf.Tensor, config) -> tf.Tensor:
    """tf.string [N] -> float32 [N, H, W, 3], one image at a time (JPEGs of any size), as in evaluation."""
    d = config.data
    return tf.map_fn(image_decoder(d, exif_orientation=True), image_bytes,
                     fn_output_signature=tf.TensorSpec((d.height, d.width, 3), tf.float32))


def serving_outputs(probs: Mapping[str, tf.Tensor], schema, thresholds=None) -> dict[str, tf.Tensor]:
    """Probabilities -> the signature's outputs (`<attr>_probs`, `<attr>_label`, `<attr>_active`); thresholds:
    {multi-label attribute: per-label thresholds} (default trainer.objective.thresholds.DEFAULT_THRESHOLD)."""
    out = {}
    for a in schema.attributes:
        p = tf.cast(probs[a.name], tf.float32)  # mixed-precision models return float16/bfloat16
        names = tf.constant(list(a.classes))
        out[f"{a.name}_probs"] = p
        if a.is_multi_label:
            active = p >= tf.constant(threshold_lib.for_attribute(thresholds, a), tf.float32)
            out[f"{a.name}_active"] = tf.cast(active, tf.int32)
            picked = tf.where(active, tf.broadcast_to(names, tf.shape(p)), "")
            # reduce_join keeps empty strings, so join the chosen names row by row without the blanks
            out[f"{a.name}_label"] = tf.map_fn(
                lambda row, sep=a.delimiter: tf.strings.reduce_join(tf.boolean_mask(row, row != ""), separator=sep),
                picked, fn_output_signature=tf.string)
        else:
            out[f"{a.name}_label"] = tf.gather(names, tf.argmax(p, axis=-1))
    return out


def labels_dict(schema, thresholds=None) -> dict[str, Any]:
    """labels.json: the vocabulary a client needs to read `<attr>_probs` columns, and the thresholds served."""
    out = {"schema": schema.name, "input": INPUT_KEY, "multi_label_threshold": threshold_lib.DEFAULT_THRESHOLD,
           "attributes": {a.name: {"kind": a.kind, "classes": list(a.classes), "delimiter": a.delimiter}
                          for a in schema.attributes}}
    multi = [a for a in schema.attributes if a.is_multi_label]
    if thresholds and multi:
        out["thresholds"] = {a.name: threshold_lib.for_attribute(thresholds, a).tolist() for a in multi}
    return out


def export_model(model, config, schema, export_dir: str, flip_tta: bool = False, thresholds=None) -> str:
    """Writes the SavedModel, labels.json and config.yaml to export_dir (local or gs://); returns export_dir.

    flip_tta: the signature averages each image's and its mirror's probabilities, as `evaluate --flip_tta`.
    thresholds: per-label decision thresholds of the multi-label heads (trainer.objective.thresholds).
    """
    import keras

    def serve(image_bytes):
        return serving_outputs(model_outputs(model, decode_batch(image_bytes, config), flip_tta), schema, thresholds)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    archive.write_out(export_dir, verbose=False)
    with tf.io.gfile.GFile(os.path.join(export_dir, "labels.json"), "w") as f:
        # flip_tta recorded so that whoever serves the folder can tell how its probabilities were made
        f.write(json.dumps({**labels_dict(schema, thresholds), "flip_tta": flip_tta}, indent=2))
    with tf.io.gfile.GFile(os.path.join(export_dir, "config.yaml"), "w") as f:
        f.write(config.to_yaml())
    return export_dir


def main(argv=None) -> int:
    p = cli.ArgumentParser(description="Export a trained job's model as a JPEG-bytes SavedModel.")
    p.add_argument("--job_dir", required=True, help="JOB_DIR, or a .keras file inside it")
    p.add_argument("--export_dir", help="default: JOB_DIR/model (AIP_MODEL_DIR on Vertex)")
    p.add_argument("--data_dir", help="override the config's data_dir (where the schema is read from)")
    p.add_argument("--flip_tta", action="store_true",
                   help="serve the average of each image's and its mirror's probabilities (as evaluate --flip_tta)")
    args = p.parse_args(argv)
    cli.check_folder_path(args.export_dir, "--export_dir")
    from trainer.evaluation import eval_model
    from trainer.input.data import dataset_dir, dataset_info
    from trainer.jobdir.paths import recorded_paths

    model, config, job_dir = eval_model.load_job(args.job_dir, args.data_dir)
    schema = dataset_info(config.data).schema
    # labels.json takes the class names from this schema: a model of another schema would get wrong ones
    eval_model.check_heads(eval_model.from_keras(model, config), schema, dataset_dir(config.data))
    out = args.export_dir or recorded_paths(job_dir)[0].model_dir  # where training exported it
    chosen = threshold_lib.read(job_dir, schema)
    export_model(model, config, schema, out, args.flip_tta, chosen.thresholds if chosen else None)
    print(f"exported to {out} (signature {SIGNATURE!r}, input {INPUT_KEY!r}"
          + (", flip test-time augmentation" if args.flip_tta else "")
          + (f", multi-label thresholds of {chosen.describe()})" if chosen else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
