"""Export a trained job's model as a SavedModel that takes JPEG bytes (trainer/serving/saved_model.py says what
it holds and how it is served).

    python -m trainer.export --job_dir JOB [--export_dir JOB/model] [--flip_tta]
"""

from __future__ import annotations

import sys

from tfds_person_attrs import cli
from trainer.evaluation import eval_model
from trainer.input.data import dataset_dir, dataset_info
from trainer.jobdir.paths import recorded_paths
from trainer.objective import thresholds as threshold_lib
from trainer.serving.saved_model import INPUT_KEY, SIGNATURE, export_model


def main(argv=None) -> int:
    p = cli.ArgumentParser(description="Export a trained job's model as a JPEG-bytes SavedModel.")
    p.add_argument("--job_dir", required=True, help="JOB_DIR, or a .keras file inside it")
    p.add_argument("--export_dir", help="default: JOB_DIR/model (AIP_MODEL_DIR on Vertex)")
    p.add_argument("--data_dir", help="override the config's data_dir (where the schema is read from)")
    p.add_argument("--flip_tta", action="store_true",
                   help="serve the average of each image's and its mirror's probabilities (as evaluate --flip_tta)")
    args = p.parse_args(argv)
    cli.check_folder_path(args.export_dir, "--export_dir")

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
