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
from typing import Any, Mapping

import keras
import tensorflow as tf

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
