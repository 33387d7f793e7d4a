"""The attribute schema: defined once, read by the builder, the model heads, losses, metrics and export.

A schema names the CSV columns that hold the image path, the optional group (person or video id) and
each attribute. An attribute is either single-label (one class per image: a softmax head) or
multi-label (a set of binary labels: one sigmoid per class), given in the CSV either as one 0/1
column per class or as one delimited column.

    python -c "from tfds_person_attrs.schema import HVC; print(HVC.to_json())"
    python -c "from tfds_person_attrs.schema import load_schema; print(load_schema('my_schema.yaml'))"
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping, Sequence

import yaml

# The dataset's TFDS name: its folder under DATA_DIR (DATA_DIR/person_attrs/<schema>/<version>) and the
# namespace of the build's Beam metrics.
DATASET_NAME = "person_attrs"
SINGLE = "single"
MULTI = "multi"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class SchemaError(ValueError):
    """A schema file or dict that cannot be used; the message says which field and what to do."""


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One predicted attribute.

    name: the feature, head and export key (lower_snake_case).
    classes: class names, in label-index order.
    column: the CSV column holding the class name (single-label), or a delimited list of class names
      (multi-label without `columns`).
    kind: "single" (softmax head) or "multi" (one sigmoid per class).
    columns: multi-label only, one 0/1 CSV column per class (same order as `classes`).
    delimiter: multi-label only, separates class names inside `column`.
    """

    name: str
    classes: tuple[str, ...]
    column: str = ""
    kind: str = SINGLE
    columns: tuple[str, ...] = ()
    delimiter: str = "|"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_multi_label(self) -> bool:
        return self.kind == MULTI

    @property
    def csv_columns(self) -> tuple[str, ...]:
        return self.columns if self.columns else (self.column,)


@dataclasses.dataclass(frozen=True)
class Schema:
    """A CSV-labelled image attribute dataset: where the labels are and what they may be."""

    name: str
    attributes: tuple[Attribute, ...]
    csv_name: str = "annotations.csv"
    image_column: str = "image_path"
    group_column: str | None = None
    description: str = ""
    # Relative loss weight per attribute (missing = 1.0): a property of the data (how hard each head is to
    # learn), so it travels with the dataset and any preset trains with it; `--loss.weights` overrides names.
    loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        _validate(self)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def __getitem__(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"schema {self.name!r} has no attribute {name!r}; it has {list(self.names)}")

    @property
    def required_columns(self) -> tuple[str, ...]:
        cols = [self.image_column] + ([self.group_column] if self.group_column else [])
        for a in self.attributes:
            cols.extend(a.csv_columns)
        return tuple(cols)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attributes"] = [
            {k: list(v) if isinstance(v, tuple) else v for k, v in a.items()} for a in d["attributes"]
        ]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def schema_from_dict(d: Mapping[str, Any], source: str = "schema") -> Schema:
    """Builds a Schema from a plain dict (as read from YAML or JSON); errors name `source` and the field."""
    if not isinstance(d, Mapping):
        raise SchemaError(f"{source}: expected a mapping with 'name' and 'attributes', got {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(Schema)}
    if unknown:
        raise SchemaError(f"{source}: unknown field(s) {sorted(unknown)}; allowed: name, attributes, "
                          "csv_name, image_column, group_column, description, loss_weights")
    for key in ("name", "attributes"):
        if key not in d:
            raise SchemaError(f"{source}: missing required field {key!r}")
    attrs = d["attributes"]
    if not isinstance(attrs, Sequence) or isinstance(attrs, str) or not attrs:
        raise SchemaError(f"{source}: 'attributes' must be a non-empty list")
    allowed = {f.name for f in dataclasses.fields(Attribute)}
    parsed = []
    for i, a in enumerate(attrs):
        where = f"{source}: attributes[{i}]"
        if not isinstance(a, Mapping) or "name" not in a or "classes" not in a:
            raise SchemaError(f"{where}: each attribute needs at least 'name' and 'classes'")
        bad = set(a) - allowed
        if bad:
            raise SchemaError(f"{where} ({a['name']}): unknown field(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        kw = dict(a)
        kw["classes"] = tuple(str(c) for c in a["classes"])
        kw["columns"] = tuple(str(c) for c in a.get("columns", ()))
        kw.setdefault("column", "" if kw["columns"] else a["name"])
        parsed.append(Attribute(**kw))
    fields = {k: v for k, v in d.items() if k != "attributes"}
    weights = fields.get("loss_weights") or {}
    if not isinstance(weights, Mapping) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                   for w in weights.values()):
        raise SchemaError(f"{source}: loss_weights must map attribute names to numbers, got {weights!r}")
    fields["loss_weights"] = {str(k): float(w) for k, w in weights.items()}
    try:
        return Schema(attributes=tuple(parsed), **fields)
    except SchemaError as e:
        raise SchemaError(f"{source}: {e}") from None


def load_schema(path: str) -> Schema:
    """Reads a schema from a .yaml/.yml/.json file (local or gs://)."""
    import tensorflow as tf  # heavy, only when a schema file is read: gfile reads gs:// too

    if not tf.io.gfile.exists(path):
        raise SchemaError(f"schema file {path} does not exist; pass the path to a .yaml or .json schema")
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".json":
            d = json.loads(text)
        else:
            d = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error gets the file name attached
        raise SchemaError(f"schema file {path} could not be parsed: {e}") from None
    return schema_from_dict(d, source=path)


def _validate(s: Schema) -> None:
    if not s.name or not _NAME_RE.match(s.name):
        raise SchemaError(f"name {s.name!r} must be lower_snake_case (it becomes the TFDS config name)")
    seen: set[str] = set()
    reserved = {"image", "id", "group"}
    for a in s.attributes:
        if not _NAME_RE.match(a.name):
            raise SchemaError(f"attribute name {a.name!r} must be lower_snake_case (it names a model head)")
        if a.name in seen or a.name in reserved:
            raise SchemaError(f"attribute name {a.name!r} is duplicated or reserved ({sorted(reserved)})")
        seen.add(a.name)
        if a.kind not in (SINGLE, MULTI):
            raise SchemaError(f"attribute {a.name!r}: kind must be 'single' or 'multi', not {a.kind!r}")
        if len(a.classes) < (1 if a.is_multi_label else 2):
            raise SchemaError(f"attribute {a.name!r}: needs at least {1 if a.is_multi_label else 2} classes")
        if len(set(a.classes)) != len(a.classes):
            raise SchemaError(f"attribute {a.name!r}: class names repeat: {list(a.classes)}")
        if a.columns:
            if not a.is_multi_label:
                raise SchemaError(f"attribute {a.name!r}: 'columns' is for multi-label attributes; use 'column'")
            if len(a.columns) != len(a.classes):
                raise SchemaError(f"attribute {a.name!r}: {len(a.columns)} columns for {len(a.classes)} classes")
        elif not a.column:
            raise SchemaError(f"attribute {a.name!r}: give 'column' (or 'columns' for 0/1 multi-label columns)")
    unknown = sorted(set(s.loss_weights) - seen)
    if unknown:
        raise SchemaError(f"loss_weights names unknown attribute(s) {unknown}; the attributes are {sorted(seen)}")
    if any(w < 0 for w in s.loss_weights.values()):
        raise SchemaError(f"loss_weights must be >= 0, got {dict(s.loss_weights)}")


HVC = Schema(
    name="hvc",
    csv_name="hvc_annotations.csv",
    image_column="image_path",
    group_column=None,
    description="Person attributes: 8 single-label heads, letterboxed 224x224 JPEGs.",
    # The earlier work's head weights, kept by the `hvc` recipe of docs/results.md (normalised to mean 1 there).
    loss_weights={"gender": 2, "image_quality": 2, "age": 4, "weight": 3, "bag": 3, "pose": 3, "footwear": 2,
                  "emotion": 4},
    attributes=(
        Attribute("gender", ("female", "male"), column="gender"),
        Attribute("image_quality", ("Average", "Bad", "Good"), column="imagequality"),
        Attribute("age", ("15-25", "25-35", "35-45", "45-55", "55+"), column="age"),
        Attribute("weight", ("normal-healthy", "over-weight", "slightly-overweight", "underweight"), column="weight"),
        Attribute("bag", ("Daily/Office/Work Bag", "Grocery/Home/Plastic Bag", "None"), column="carryingbag"),
        Attribute("footwear", ("CantSee", "Fancy", "Normal"), column="footwear"),
        Attribute("emotion", ("Angry/Serious", "Happy", "Neutral", "Sad"), column="emotion"),
        Attribute("pose", ("Back", "Front-Frontish", "Side"), column="bodypose"),
    ),
)

BUILTIN_SCHEMAS = {HVC.name: HVC}
