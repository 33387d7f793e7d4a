"""The trainer's one typed, frozen configuration: its schema (the dataclasses below), its checks and `Config.replace`.

    python -c "from trainer.config import Config; print(Config().replace(**{'model.width': 2}).model)"

The dataclasses below are the schema of an OmegaConf structured config: `trainer.config_loader` merges a preset or
YAML file onto their defaults, then sets each override, and OmegaConf checks every key and converts every value to
its field's type as it goes. `OmegaConf.to_object` (`resolve`) turns the result back into these frozen dataclasses,
whose `__post_init__` runs the range and choice checks (`validate`). Any error is one `ConfigError` line naming the
dotted field (`one_line_config_errors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import typing
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError


class Choice(str, enum.Enum):
    """A field with a fixed set of values: OmegaConf checks it by name and the message lists the names. The
    value is the name, and it compares, hashes, prints and serialises as that string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


def _choice(name: str, values: str) -> type[Choice]:
    return Choice(name, [(v, v) for v in values.split()], module=__name__, qualname=name)


Schedule = _choice("Schedule", "one_cycle cosine step triangular triangular2 constant")
Precision = _choice("Precision", "float32 mixed_float16 mixed_bfloat16")
Strategy = _choice("Strategy", "auto default mirrored multi_worker")
ClassBalance = _choice("ClassBalance", "none inverse effective")
MultiLabelLoss = _choice("MultiLabelLoss", "bce weighted_bce")
# The backbones trainer.model.backbones.REGISTRY builds (this module imports no Keras).
BackboneName = _choice("BackboneName", "wrn resnet20v1 sepconv densenet121 resnet50v2 efficientnetv2b0 "
                                       "mobilenetv3small mobilenetv3large vgg16 inceptionv3")


WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5")


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what to do."""


class ReadOnlyDict(dict):
    """The loss weights: a dict (OmegaConf takes no other mapping) that refuses changes like the frozen
    dataclass holding it."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("the config is frozen; Config.replace makes a changed copy")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # copy and pickle rebuild it whole, not item by item
        return ReadOnlyDict, (dict(self),)


def _lower(obj, name: str) -> None:
    """An auto/true/false field: YAML reads true/false as booleans, which a str field holds as True/False."""
    object.__setattr__(obj, name, getattr(obj, name).lower())


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str = ""  # holds person_attrs/<dataset>/<version>; local or gs://
    dataset: str = ""  # the schema name = the TFDS config name; "" = the one dataset data_dir holds
    version: str = "1.0.0"
    height: int = 128
    width: int = 64
    letterbox_crop: bool = True  # decode only the person band between black side bars
    letterbox_threshold: float = 16.0  # a column whose mean luma (0..255) is at or below it is a bar
    # Decode at 1/2..1/8 scale when the source has >= 2x the output's pixels per side: ~1.4x faster uncached
    # input (docs/performance.md). Off by default: a model must be evaluated and served with the decode it was
    # trained with, and configs saved before this field existed decoded at full scale. In crop mode the check
    # uses the whole width, so a narrow band may be upsampled horizontally.
    dct_scaling: bool = False
    train_split: str = "train"
    # A CSV with an "id" column (e.g. JOB_DIR/label_issues.csv of `trainer.label_audit`): those examples are left
    # out of the train split (only that split: validation and test stay whole). "" = none.
    exclude_ids: str = ""
    eval_split: str = "validation"
    shuffle_buffer: int = 2048
    cache: bool = False  # keep the decoded train split in memory as uint8 (when it fits: H*W*3 bytes per image)
    cycle_length: int = 4  # files read in parallel (file-level interleave)
    seed: int = 1234


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneName = BackboneName.wrn  # depth, width, dropout and stem_stride apply to the scratch nets
    # none | imagenet (keras.applications backbones; downloaded once) | PATH or gs:// URI of a .weights.h5/.h5 file
    weights: str = "none"
    # auto | true | false: BatchNorm layers of the backbone stay in inference mode (moving statistics, not
    # trained) for the whole run; auto = true for pretrained weights, false for none
    freeze_batchnorm: str = "auto"
    depth: int = 16  # WRN-d-k: d = 6n + 4
    width: int = 4  # k: channels 16k, 32k, 64k
    dropout: float = 0.3  # between the two convs of each block (WRN paper)
    stem_stride: int = 0  # 0 = from the input height: 1 below 128 px, 2 below 256, else 4
    weight_decay: float = 5e-4  # L2 on conv/dense kernels
    sync_batchnorm: bool = True  # global batch statistics across replicas (TensorFlow backend only)

    def __post_init__(self):
        _lower(self, "freeze_batchnorm")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    flip: bool = True
    translate: float = 0.1  # fraction of height/width, 0 = off
    zoom: float = 0.0  # RandomZoom factor, 0 = off
    erasing: float = 0.5  # RandomErasing (cutout) factor (probability), 0 = off
    erasing_scale: tuple[float, float] = (0.02, 0.2)
    color_jitter: float = 0.0  # brightness/contrast/saturation factor, 0 = off
    rand_augment: bool = False
    rand_augment_ops: int = 2
    rand_augment_factor: float = 0.5
    # Training batches only: mix pairs of images and, with the same per-example coefficient, every head's labels
    # (trainer.model.augment.LabelMixing). MixUp's Beta(alpha, alpha); CutMix's alpha (<= 1); 0 = off. Both on: each
    # batch takes one of the two at random.
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0  # 0 = unseeded


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    schedule: Schedule = Schedule.one_cycle
    max_lr: float = 0.1
    min_lr: float = 0.0  # floor of cosine/cyclic schedules
    warmup_frac: float = 0.25
    div_factor: float = 25.0  # one-cycle start = max_lr / div_factor
    final_div: float = 1e4  # one-cycle end = max_lr / final_div
    momentum: float = 0.9  # constant momentum of non-one-cycle schedules
    momentum_max: float = 0.95
    momentum_min: float = 0.85
    nesterov: bool = False
    decay_rate: float = 0.1  # step decay factor ...
    decay_every_epochs: float = 10.0  # ... applied every this many epochs
    cycle_epochs: float = 4.0  # triangular: one full cycle (up and down) in epochs
    linear_scaling: bool = False  # multiply max_lr/min_lr by the number of replicas
    clipnorm: float = 0.0
    # Exponential moving average of the weights (Keras' optimizer `use_ema`), decay per step, 0 = off. Validation,
    # best.keras, model.keras and the export hold the averaged weights; training steps use the raw ones.
    ema: float = 0.0


@dataclasses.dataclass(frozen=True)
class LossConfig:
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # by attribute; missing = 1.0
    normalize_weights: bool = True  # divide the weights by their mean: the LR then does not depend on their sum
    label_smoothing: float = 0.0
    # single-label heads: "inverse" frequency or "effective" number (Cui et al. 2019)
    class_balance: ClassBalance = ClassBalance.none
    class_balance_beta: float = 0.999
    # multi-label heads: "bce", or "weighted_bce" (positives vs negatives per label, trainer/objective/losses.py)
    multi_label_loss: MultiLabelLoss = MultiLabelLoss.bce

    def __post_init__(self):
        # Frozen all the way down: the weights mapping is read-only too.
        object.__setattr__(self, "weights", ReadOnlyDict(self.weights))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    job_dir: str = ""
    epochs: int = 30
    batch_size: int = 32  # per replica
    global_batch_size: int = 0  # >0: fixed global batch, must divide by the number of replicas
    steps_per_epoch: int = 0  # 0 = one pass over the train split
    validation_steps: int = 0  # 0 = the whole eval split
    backup_every_steps: int = 0  # besides every epoch; 0 = epochs only
    # Debugging the input: each input pipeline appends the ids of every batch it makes to
    # JOB_DIR/example_ids/pipeline-<i>.csv (`step,batch_in_step,id id ...`; trainer.input.data.read_ids_log).
    log_example_ids: bool = False
    # Steps run inside one compiled call (trainer.training.loop): the loss is read, and per-step callbacks (progress,
    # the non-finite guard, backups) run, once per loop; loops also end at epoch ends and backup steps.
    steps_per_loop: int = 1
    # Write the JPEG-bytes SavedModel to JOB_DIR/model (AIP_MODEL_DIR on Vertex) when the run ends; false: only
    # model.keras and the checkpoints (export later: python -m trainer.export --job_dir JOB_DIR).
    export: bool = True
    verbose: str = "auto"  # Keras fit verbosity: auto, 0, 1, 2
    seed: int = 42
    freeze_backbone_epochs: int = 0  # train the heads alone for this many epochs, then the whole model
    backbone_lr_multiplier: float = 1.0  # the backbone's learning rate = the schedule's x this (heads: x 1)
    # Resuming from JOB_DIR/backup with a config that differs from the one that made it is refused (the
    # message names the fields) unless this is true.
    allow_config_change: bool = False


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    # auto: multi_worker if TF_CONFIG has a cluster, mirrored if >1 GPU, else default
    strategy: Strategy = Strategy.auto
    mixed_precision: Precision = Precision.float32
    jit_compile: str = "auto"  # auto | true | false (Keras turns XLA off under a strategy unless true)
    cpu_devices: int = 0  # >0: mirror over this many logical CPU devices in one process (CPU-only machines)
    # Multi-worker: seconds a task waits for every other task of TF_CONFIG to start (trainer.training.cluster)
    startup_timeout: float = 1200.0

    def __post_init__(self):
        _lower(self, "jit_compile")


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    distribute: DistributeConfig = DistributeConfig()

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, as config.yaml holds them (a backup compares them with a resumed run's)."""
        return yaml.safe_load(self.to_yaml())

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self))

    def replace(self, **overrides: Any) -> Config:
        """`cfg.replace(**{"train.epochs": 1})`: a new validated Config with dotted overrides applied."""
        return resolve(OmegaConf.structured(self), overrides.items(), "replace")


def validate(c: Config) -> None:
    """Checks that need only the config; dataset-dependent checks (loss weight names) happen at train start."""
    def need(ok: bool, field: str, msg: str):
        if not ok:
            raise ConfigError(f"{field}: {msg}")

    d, m, a, o, lo, t, ds = c.data, c.model, c.augment, c.optim, c.loss, c.train, c.distribute
    for f in ("height", "width"):
        v = getattr(d, f)
        need(v >= 16 and v % 4 == 0, f"data.{f}", f"must be a multiple of 4 and >= 16, got {v}")
    need(d.shuffle_buffer >= 0 and d.cycle_length >= 1, "data.shuffle_buffer/cycle_length", "must be >= 0 / >= 1")
    need(m.weights in ("none", "imagenet") or m.weights.endswith(WEIGHTS_SUFFIXES), "model.weights",
         f"must be none, imagenet or a weights file ending in {' or '.join(WEIGHTS_SUFFIXES)}, got {m.weights!r}")
    need(m.freeze_batchnorm in ("auto", "true", "false"), "model.freeze_batchnorm", "must be auto, true or false")
    need((m.depth - 4) % 6 == 0 and m.depth >= 10, "model.depth", f"WRN depth must be 6n+4 >= 10, got {m.depth}")
    need(m.width >= 1, "model.width", f"must be >= 1, got {m.width}")
    need(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    need(m.stem_stride in (0, 1, 2, 4), "model.stem_stride", f"must be 0 (auto), 1, 2 or 4, got {m.stem_stride}")
    need(0 <= a.erasing <= 1 and 0 <= a.translate < 1 and 0 <= a.zoom < 1, "augment",
         "erasing in [0, 1], translate and zoom in [0, 1)")
    need(a.mixup >= 0 and 0 <= a.cutmix <= 1, "augment.mixup/cutmix",
         f"MixUp's alpha must be >= 0 and CutMix's in [0, 1] (0 = off), got {a.mixup} / {a.cutmix}")
    need(o.max_lr > 0 and 0 <= o.min_lr <= o.max_lr, "optim.max_lr/min_lr", "need max_lr > 0 and 0 <= min_lr <= max_lr")
    need(0 <= o.warmup_frac < 1, "optim.warmup_frac", f"must be in [0, 1), got {o.warmup_frac}")
    need(0 <= o.momentum < 1 and 0 <= o.momentum_min <= o.momentum_max < 1, "optim.momentum*",
         "momentum values must be in [0, 1) with momentum_min <= momentum_max")
    need(0 <= o.ema < 1, "optim.ema", f"the EMA decay must be in [0, 1) (0 = off; 0.99-0.9999 typical), got {o.ema}")
    need(o.cycle_epochs > 0 and o.decay_every_epochs > 0, "optim.cycle_epochs/decay_every_epochs", "must be > 0")
    need(all(w >= 0 for w in lo.weights.values()), "loss.weights", f"must be >= 0, got {dict(lo.weights)}")
    need(0 <= lo.label_smoothing < 1, "loss.label_smoothing", f"must be in [0, 1), got {lo.label_smoothing}")
    need(0 < lo.class_balance_beta < 1, "loss.class_balance_beta", "must be in (0, 1)")
    need(t.epochs >= 1 and t.batch_size >= 1, "train.epochs/batch_size", "must be >= 1")
    need(t.steps_per_loop >= 1, "train.steps_per_loop", "must be >= 1")
    need(min(t.global_batch_size, t.steps_per_epoch, t.validation_steps, t.backup_every_steps) >= 0, "train",
         "global_batch_size, steps_per_epoch, validation_steps, backup_every_steps must be >= 0")
    need(t.freeze_backbone_epochs >= 0 and t.backbone_lr_multiplier > 0,
         "train.freeze_backbone_epochs/backbone_lr_multiplier", "must be >= 0 / > 0")
    need(t.verbose in ("auto", "0", "1", "2"), "train.verbose", "must be auto, 0, 1 or 2")
    need(ds.jit_compile in ("auto", "true", "false"), "distribute.jit_compile", "must be auto, true or false")
    need(ds.cpu_devices >= 0, "distribute.cpu_devices", f"must be >= 0, got {ds.cpu_devices}")
    need(ds.startup_timeout > 0, "distribute.startup_timeout", f"must be > 0 seconds, got {ds.startup_timeout}")


def check_against_schema(c: Config, schema) -> None:
    """At train start, when the dataset's schema is known: every weighted name must be a head, and class
    balancing must not be asked of multi-label heads, which it does not touch."""
    unknown = sorted(set(c.loss.weights) - set(schema.names))
    if unknown:
        raise ConfigError(f"loss.weights: unknown attribute(s) {unknown} for dataset {schema.name!r}, whose heads "
                          f"are {list(schema.names)}; name those (--loss.weights.HEAD=W) or drop the weights "
                          "('--loss.weights={}')")
    multi = [a.name for a in schema.attributes if a.is_multi_label]
    if multi and c.loss.class_balance != "none" and c.loss.multi_label_loss == "bce":
        raise ConfigError(f"loss.class_balance={c.loss.class_balance} balances single-label heads only; the "
                          f"multi-label heads {multi} are balanced by --loss.multi_label_loss=weighted_bce: set it "
                          "(or --loss.class_balance=none)")


# From OmegaConf back to the frozen Config, with its errors as one line: `Config.replace` and every loader of
# `trainer.config_loader` go through here.
def resolve(cfg: DictConfig, overrides: Iterable[tuple[str, Any]], source: str) -> Config:
    """Sets each dotted override (checked and converted by OmegaConf), then builds the frozen, validated Config."""
    with one_line_config_errors(source):
        _writable(cfg)
        for key, val in overrides:
            OmegaConf.update(cfg, key, val, merge=False)
        return OmegaConf.to_object(cfg)


def _writable(node: DictConfig) -> None:
    """Frozen dataclasses make read-only nodes; the overrides go in before the frozen objects are built."""
    OmegaConf.set_readonly(node, False)
    for child in node.values():
        if isinstance(child, DictConfig):
            _writable(child)


@contextlib.contextmanager
def one_line_config_errors(source: str):
    """OmegaConf's errors (multi-line, with its own type names) as one line naming the dotted field."""
    try:
        yield
    except (ConfigKeyError, ConfigAttributeError) as e:
        section = e.full_key.rpartition(".")[0]
        owner = field_type(section) if section else Config
        allowed = [f.name for f in dataclasses.fields(owner)] if dataclasses.is_dataclass(owner) else []
        raise ConfigError(f"{source}: unknown field {e.full_key!r}; {section or 'the config'} has {allowed}") from None
    except OmegaConfBaseException as e:
        expected = field_type(e.full_key) if isinstance(e, ValidationError) and e.full_key else None
        if expected is None:
            raise ConfigError(f"{source}: {e.full_key or 'config'}: {str(e).splitlines()[0]}") from None
        if isinstance(expected, type) and issubclass(expected, Choice):
            raise ConfigError(f"{source}: {e.full_key}: must be one of {list(expected.names())}, got "
                              f"{e.value!r}") from None
        name = expected.__name__ if isinstance(expected, type) else str(expected)
        raise ConfigError(f"{source}: {e.full_key}: expected {name}, got {e.value!r}") from None


def field_type(dotted: str) -> Any:
    """`model.width` -> int, `loss.weights.age` -> float; None for a name that is no field."""
    hint: Any = Config
    for name in dotted.split("."):
        if dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint).get(name)
        elif typing.get_origin(hint) is dict:
            hint = typing.get_args(hint)[1]
        else:
            return None
    return hint
