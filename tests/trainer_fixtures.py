"""Small built datasets for trainer and evaluation tests, made by the project's own chain.

    python -c "from tests.trainer_fixtures import fixture_data_dir; print(fixture_data_dir('multi_demo'))"

`hvc`: the generated demo set (person-like figures whose attributes are drawn visibly), built by the real
Beam + TFDS builder. `multi_demo`: the same images under a user schema file with a multi-label attribute
given as one delimited column, built through `--schema`, so the builder's multi-label path is exercised too.
"""

from __future__ import annotations

import csv
import functools
import os
import tempfile

from tfds_person_attrs.schema import MULTI, Attribute, Schema

NUM_IMAGES = 80
MULTI_SCHEMA = Schema(name="multi_demo", csv_name="multi_annotations.csv", attributes=(
    Attribute("gender", ("female", "male"), column="gender"),
    # Visible in the demo drawings: a bag at the hip, heels, a figure seen from the back.
    Attribute("clothes", ("bag", "heels", "back"), column="items", kind=MULTI),
))


def write_multi_csv(root: str) -> None:
    """MULTI_SCHEMA's CSV beside the demo set's hvc CSV in `root`, from the same rows."""
    with open(os.path.join(root, "hvc_annotations.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(root, MULTI_SCHEMA.csv_name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "gender", "items"])
        for r in rows:
            items = [name for name, on in (("bag", r["carryingbag"] != "None"), ("heels", r["footwear"] == "Fancy"),
                                           ("back", r["bodypose"] == "Back")) if on]
            w.writerow([r["image_path"], r["gender"], "|".join(items)])


@functools.cache
def fixture_data_dir(schema_name: str = "hvc") -> str:
    """Built once per test process: a temp DATA_DIR holding person_attrs/<schema_name>/1.0.0."""
    import yaml

    from pipeline import preprocess
    from tfds_person_attrs.demo.generate import write_demo_data

    root = tempfile.mkdtemp(prefix=f"fixture_{schema_name}_")
    manual = write_demo_data(os.path.join(root, "manual"), num_images=NUM_IMAGES, num_missing=2, seed=1)
    argv = ["--manual_dir", manual, "--data_dir", os.path.join(root, "data")]
    if schema_name == MULTI_SCHEMA.name:
        write_multi_csv(manual)
        schema_file = os.path.join(root, "schema.yaml")
        with open(schema_file, "w") as f:
            yaml.safe_dump(MULTI_SCHEMA.to_dict(), f)
        argv += ["--schema", schema_file]
    elif schema_name != "hvc":
        raise ValueError(f"no fixture for {schema_name!r}")
    preprocess.run(argv)
    return os.path.join(root, "data")


def num_examples(schema_name: str, split: str) -> int:
    import tensorflow_datasets as tfds

    path = os.path.join(fixture_data_dir(schema_name), "person_attrs", schema_name, "1.0.0")
    return tfds.builder_from_directory(path).info.splits[split].num_examples


def smoke_config(data_dir: str, job_dir: str = "", dataset: str = "hvc", **overrides):
    """The smoke preset shrunk further for unit tests (32x16 input, 2 steps per epoch, no SavedModel export:
    pass `**{"train.export": True}` where a test reads JOB_DIR/model)."""
    from trainer.config_loader import load_config

    base = {"data.dataset": dataset, "data.height": 32, "data.width": 16, "train.steps_per_epoch": 2,
            "train.validation_steps": 1, "train.verbose": "0", "train.export": False}
    base.update(overrides)
    argv = ["--config", "smoke", "--data_dir", data_dir, "--job_dir", job_dir or "unused"]
    return load_config(argv).replace(**base)
