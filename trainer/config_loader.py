"""Loading the trainer's config: a preset or YAML file plus dotted command-line overrides; `--help` and
`--print_config`.

    python -m trainer.task --config smoke --data_dir out/data --job_dir out/job --model.width=2
    python -c "from trainer.config_loader import load_config; print(load_config(['--config', 'hvc']).to_yaml())"

`load_config` merges a preset (`smoke`, `demo`, `hvc`, `par`, `par_gpu`) or a YAML file onto the defaults of
`trainer.config`'s dataclasses, then sets each override. `Config.to_yaml()` / `config_from_yaml(path)` round-trip
exactly, so evaluate/export rebuild preprocessing from JOB_DIR/config.yaml.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
import typing
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from trainer.config import Choice, Config, ConfigError, field_type, one_line_config_errors, resolve

# The presets: trainer/configs/<name>.yaml, each opening with the command that runs it and the result it gave.
PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def preset_names() -> list[str]:
    return sorted(f[:-len(".yaml")] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def preset_path(name: str) -> str:
    """trainer/configs/NAME.yaml: a preset is a config file that ships with the package."""
    return os.path.join(PRESETS_DIR, f"{name}.yaml")


def answered_help_or_config(argv: Sequence[str], usage: str) -> bool:
    """For a command taking a config: prints, instead of running, for `--help` its usage, the presets and every
    field with its default, for `--print_config` the config the other flags resolve to (as config.yaml holds it);
    True when it did (the command then exits 0)."""
    if any(a in ("-h", "--help") for a in argv):
        print(f"{usage.rstrip()}\n\nThe config: --config PRESET or a YAML file (presets: {', '.join(preset_names())}:"
              f" {PRESETS_DIR}), then any field as --section.field=VALUE (a YAML value); --print_config prints "
              f"the result. Fields and their defaults:\n{fields_help()}")
        return True
    if "--print_config" in argv:
        print(load_config([a for a in argv if a != "--print_config"]).to_yaml())
        return True
    return False


def fields_help(config: Config | None = None) -> str:
    """Every field as `--section.field=VALUE  comment`, VALUE the default (or `config`'s), for `--help`."""
    config = config or Config()
    lines = []
    for section in dataclasses.fields(Config):
        owner, values = field_type(section.name), getattr(config, section.name)
        comments, hints = _field_comments(owner), typing.get_type_hints(owner)
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(owner):
            value, hint = getattr(values, f.name), hints[f.name]
            shown = yaml.safe_dump(_plain(value), default_flow_style=True, width=1000).strip().removesuffix("...")
            choices = f" (one of {', '.join(hint.names())})" if isinstance(hint, type) and issubclass(
                hint, Choice) else ""
            lines.append(f"  --{section.name}.{f.name}={shown.strip()}{choices}"
                         + (f"  # {comments[f.name]}" if comments.get(f.name) else ""))
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, Choice):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return dict(value) if isinstance(value, dict) else value


def _field_comments(owner: type) -> dict[str, str]:
    """A dataclass's field comments from its source: the comment on the field's line, else the lines above it."""
    out, above = {}, []
    for line in inspect.getsource(owner).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        name, colon, rest = text.partition(":")
        if colon and name.isidentifier():
            inline = rest.partition("  # ")[2]
            out[name] = " ".join([*above, inline]).strip() if not inline else inline
        above = []
    return out


def config_from_yaml(path: str) -> Config:
    """Rebuilds the Config a run wrote to JOB_DIR/config.yaml (local or gs://)."""
    return resolve(_merge(OmegaConf.structured(Config), _read_yaml(path), path), (), path)


def load_config(argv: Sequence[str] | str | None = None) -> Config:
    """`--config PRESET|file.yaml`, `--data_dir`, `--job_dir`, then any `--section.field=value`.

    A str argument is a preset name or a YAML path. Values are parsed as YAML (`--loss.weights={age: 4}`,
    `--augment.erasing_scale=[0.1,0.3]`), and also accepted as `--model.width 8`. A mapping value replaces the
    whole mapping (`'--loss.weights={}'` drops a preset's weights); `--loss.weights.age=4` sets one entry.
    """
    if isinstance(argv, str):
        argv = ["--config", argv]
    args = _parse_argv(list(argv or []))
    base = dict(args).get("config")
    cfg = OmegaConf.structured(Config)
    if base in preset_names():
        cfg = _merge(cfg, _read_yaml(preset_path(base)), f"preset {base}")
    elif base:
        cfg = _merge(cfg, _read_yaml(base), base)
    overrides = [(_SHORT_FLAGS.get(key, key), val) for key, val in args if key != "config"]
    return resolve(cfg, overrides, "command line")


_SHORT_FLAGS = {"data_dir": "data.data_dir", "job_dir": "train.job_dir"}


def _parse_argv(argv: list[str]) -> list[tuple[str, Any]]:
    out = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --section.field=value")
        key, eq, val = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value (--{key}=VALUE)")
            i, val = i + 1, argv[i + 1]
        # Paths and presets stay strings; everything else is YAML so that 1e-3, true, [1, 2] parse.
        if key not in ("config", *_SHORT_FLAGS):
            try:
                val = yaml.safe_load(val)
            except yaml.YAMLError as e:
                raise ConfigError(f"--{key}: {val!r} is not a YAML value ({getattr(e, 'problem', e)})") from None
        out.append((key, val))
        i += 1
    return out


def _read_yaml(path: str) -> DictConfig:
    if "://" in path:
        import tensorflow as tf  # heavy, optional here: only a remote (gs://) config file needs its gfile

        exists, read = tf.io.gfile.exists, lambda: tf.io.gfile.GFile(path, "r").read()
    else:
        exists, read = os.path.isfile, lambda: pathlib.Path(path).read_text(encoding="utf-8")
    if not exists(path):
        raise ConfigError(f"--config {path!r} is neither a preset {preset_names()} nor an existing YAML file")
    text = read()
    try:
        d = OmegaConf.create(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(d, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections, got a list")
    return d


def _merge(cfg: DictConfig, d: Any, source: str) -> DictConfig:
    with one_line_config_errors(source):
        return OmegaConf.merge(cfg, d)

