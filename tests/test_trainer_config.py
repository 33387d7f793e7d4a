"""Config: presets, YAML round-trip, dotted overrides, validation errors; Vertex paths win over defaults.

    python -m pytest -q -x tests/test_trainer_config.py
"""

import dataclasses
import importlib
import pathlib
import re

import pytest
import yaml

from tests.trainer_fixtures import MULTI_SCHEMA
from tfds_person_attrs import cli
from tfds_person_attrs.schema import HVC
from trainer.config import Config, ConfigError, check_against_schema
from trainer.config_loader import config_from_yaml, load_config, preset_names, preset_path
from trainer.jobdir.paths import job_paths


def test_presets_and_overrides():
    c = load_config(["--config", "hvc", "--data_dir", "gs://b/d", "--job_dir=/j", "--model.width=8",
                     "--optim.max_lr", "1e-2", "--loss.weights.age=5", "--augment.erasing_scale=[0.1, 0.3]"])
    assert (c.model.width, c.model.depth, c.optim.max_lr) == (8, 16, 0.01)
    assert c.data.data_dir == "gs://b/d" and c.train.job_dir == "/j"
    assert dict(c.loss.weights) == {"age": 5.0}  # hvc's head weights live in its schema, not the preset
    assert c.augment.erasing_scale == (0.1, 0.3)
    assert load_config("smoke").model.depth == 10


def test_yaml_round_trip(tmp_path):
    c = load_config(["--config", "hvc", "--distribute.jit_compile=true", "--train.verbose=2"])
    path = tmp_path / "config.yaml"
    path.write_text(c.to_yaml())
    assert config_from_yaml(str(path)) == c
    # A user YAML file is a base like a preset; overrides still apply on top.
    user = tmp_path / "mine.yaml"
    user.write_text("model:\n  width: 2\ntrain:\n  epochs: 3\n")
    c2 = load_config(["--config", str(user), "--train.epochs=5"])
    assert (c2.model.width, c2.train.epochs) == (2, 5)


def test_frozen():
    c = load_config("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.model.width = 3
    with pytest.raises(TypeError):
        c.loss.weights["age"] = 1.0


@pytest.mark.parametrize("argv,match", [
    (["--model.depth=11"], "model.depth"),
    (["--model.widht=2"], "unknown field"),
    (["--modle.width=2"], "unknown field"),
    (["--model.width=two"], "model.width: expected int"),
    (["--optim.schedule=linear"], "optim.schedule"),
    (["--data.height=30"], "data.height"),
    (["--config", "nope"], "neither a preset"),
    (["--train.epochs"], "needs a value"),
])
def test_validation_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        load_config(argv)


def test_wrong_types_name_the_field_in_one_line(tmp_path):
    for argv, match in [(["--train.epochs=2.5"], "command line: train.epochs: expected int, got 2.5"),
                        (["--model.sync_batchnorm=maybe"], "model.sync_batchnorm: expected bool, got 'maybe'"),
                        (["--augment.erasing_scale=[0.1]"], r"augment.erasing_scale: expected tuple\[float, float\]"),
                        (["--loss.weights.age=heavy"], "loss.weights.age: expected float, got 'heavy'")]:
        with pytest.raises(ConfigError, match=match) as e:
            load_config(argv)
        assert "\n" not in str(e.value)
    user = tmp_path / "mine.yaml"
    user.write_text("loss:\n  weights: {age: heavy}\n")
    with pytest.raises(ConfigError, match=f"{user}: loss.weights.age: expected float, got 'heavy'"):
        load_config(["--config", str(user)])


def test_unknown_keys_name_the_field_and_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field 'model.widht'; model has \[.*'width'"):
        load_config(["--model.widht=2"])
    with pytest.raises(ConfigError, match=r"unknown field 'modle'; the config has \['data', 'model'"):
        load_config(["--modle.width=2"])
    user = tmp_path / "mine.yaml"
    user.write_text("optim:\n  max_lrr: 0.1\n")
    with pytest.raises(ConfigError, match=f"{user}: unknown field 'optim.max_lrr'"):
        load_config(["--config", str(user)])
    user.write_text("model: {width: [2\n")
    with pytest.raises(ConfigError, match=f"{user}: not valid YAML"):
        load_config(["--config", str(user)])


def test_yaml_file_then_command_line_take_precedence_over_defaults(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("data:\n  data_dir: /from/file\nmodel:\n  width: 2\n  depth: 10\n"
                    "loss:\n  weights: {age: 2, bag: 3}\ndistribute:\n  jit_compile: true\n")
    c = load_config(["--config", str(user), "--model.width=3", "--data_dir", "/from/flag", "--model.width", "5"])
    assert (c.model.width, c.model.depth, c.model.dropout) == (5, 10, 0.3)  # last flag, file, default
    assert c.data.data_dir == "/from/flag"
    assert c.distribute.jit_compile == "true"  # YAML's boolean true, held by an auto/true/false field
    assert dict(load_config(["--config", str(user), "--loss.weights.age=5"]).loss.weights) == {"age": 5, "bag": 3}
    # A whole mapping replaces the file's: `--loss.weights={}` drops every weight.
    assert dict(load_config(["--config", str(user), "--loss.weights={gender: 1}"]).loss.weights) == {"gender": 1}
    assert dict(load_config(["--config", str(user), "--loss.weights={}"]).loss.weights) == {}


def test_unknown_loss_weight_names_fail_at_train_start_saying_how_to_fix():
    c = load_config(["--loss.weights={agee: 2}"])
    with pytest.raises(ConfigError, match=r"unknown attribute\(s\) \['agee'\].*'--loss.weights=\{\}'"):
        check_against_schema(c, HVC)


@pytest.mark.parametrize("preset", ["smoke", "hvc", "par", "par_gpu"])
def test_every_preset_fits_any_dataset(preset):
    """No preset but `demo` (made for the demo set) names heads: per-head weights belong to the dataset's schema
    (HVC.loss_weights)."""
    c = load_config(preset)
    assert dict(c.loss.weights) == {}
    for schema in (HVC, MULTI_SCHEMA):
        check_against_schema(c, schema)


def test_par_presets_balance_multi_label_heads():
    for preset in ("par", "par_gpu"):
        assert load_config(preset).loss.multi_label_loss == "weighted_bce"
    assert load_config("par_gpu").data.height > load_config("par").data.height
    with pytest.raises(ConfigError, match="multi_label_loss"):
        load_config(["--loss.multi_label_loss=focal"])


def test_class_balance_is_not_silently_ignored_on_multi_label_heads():
    c = load_config(["--loss.class_balance=inverse"])
    check_against_schema(c, HVC)  # single-label heads only: fine
    with pytest.raises(ConfigError, match=r"\['clothes'\].*--loss.multi_label_loss=weighted_bce"):
        check_against_schema(c, MULTI_SCHEMA)
    check_against_schema(c.replace(**{"loss.multi_label_loss": "weighted_bce"}), MULTI_SCHEMA)


def test_vertex_env_wins():
    env = {"AIP_MODEL_DIR": "gs://b/model", "AIP_CHECKPOINT_DIR": "gs://b/ckpt",
           "AIP_TENSORBOARD_LOG_DIR": "gs://b/tb"}
    p = job_paths("/job", env)
    assert (p.model_dir, p.logs_dir, p.backup_dir, p.best_keras) == (
        "gs://b/model", "gs://b/tb", "/job/backup", "gs://b/ckpt/best.keras")  # the backup stays by the lock
    d = job_paths("/job", {})
    assert (d.model_dir, d.logs_dir, d.config_yaml) == ("/job/model", "/job/logs", "/job/config.yaml")


def test_demo_preset_weights_every_head_of_the_demo_set():
    """The demo set has the hvc heads; the demo preset names each of them, so a misspelt head fails here and not
    at train start, and hvc's own schema weights never mix in."""
    c = load_config("demo")
    check_against_schema(c, HVC)
    assert set(c.loss.weights) == set(HVC.names)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_is_a_file_opening_with_its_command_and_result(preset):
    """big_vision's convention: a config file says how to run it and what it gave, before any field."""
    text = pathlib.Path(preset_path(preset)).read_text()
    header = text[:text.index("\n", text.index("\n" + next(s for s in ("data:", "model:") if "\n" + s in text)))]
    assert header.startswith(f"# {preset}:")
    assert re.search(r"#\s+(python -m trainer\.task --config " + preset + r"\b|make demo)", header), header
    assert "# Result" in header


@pytest.mark.parametrize("module", ["trainer.task", "trainer.lr_find", "trainer.label_audit"])
def test_help_lists_every_config_field_with_its_default_and_print_config_resolves(module, capsys):
    main = importlib.import_module(module).main
    assert cli.run(main, ["--help"]) == 0
    out = capsys.readouterr().out
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f"--{section.name}.{f.name}=" in out, f"{section.name}.{f.name} missing from {module} --help"
    assert "--optim.schedule=one_cycle (one of one_cycle, cosine" in out
    assert cli.run(main, ["--config", "smoke", "--model.width=3", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed) == load_config(["--config", "smoke", "--model.width=3"]).to_dict()


def test_choice_fields_name_their_values_when_wrong_and_read_back_as_plain_strings(tmp_path):
    with pytest.raises(ConfigError, match=r"optim.schedule: must be one of \['one_cycle', 'cosine'.*got 'cosin'"):
        load_config(["--optim.schedule=cosin"])
    c = load_config(["--optim.schedule=cosine"])
    assert c.optim.schedule == "cosine" and f"{c.optim.schedule}" == "cosine"
    assert "schedule: cosine" in c.to_yaml()
    (tmp_path / "c.yaml").write_text(c.to_yaml())
    assert config_from_yaml(str(tmp_path / "c.yaml")) == c
