"""Config presets, JSON round trip and loud failures."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from conftest import REPO

from pipeline import config as config_lib
from pipeline import config_fields, config_files, presets


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_round_trip(name, tmp_path):
    config = config_files.validate(presets.preset(name))
    config_files.save(config, tmp_path / "config.json")
    assert config_files.load_file(tmp_path / "config.json") == config


def test_a_partial_file_applies_over_the_preset_and_the_flags_over_both(tmp_path):
    from absl import flags

    from launch import common

    (tmp_path / "c.json").write_text(json.dumps({"augment": {"cutmix_probability": 0.5}, "train": {"epochs": 3}}))
    over_smoke = config_files.load_file(tmp_path / "c.json", presets.preset("smoke"))
    smoke = presets.preset("smoke")
    assert over_smoke == smoke.replace(
        augment=dataclasses.replace(smoke.augment, cutmix_probability=0.5),
        train=dataclasses.replace(smoke.train, epochs=3),
    )
    values = flags.FlagValues()
    common.define_config_flags(values)
    values(["prog", "--preset=smoke", f"--config={tmp_path / 'c.json'}", "--epochs=4"])
    assert common.config_from_flags(values) == over_smoke.replace(train=dataclasses.replace(over_smoke.train, epochs=4))
    # A whole config is the same over any preset.
    config_files.save(presets.preset("best"), tmp_path / "whole.json")
    assert config_files.load_file(tmp_path / "whole.json", presets.preset("smoke")) == presets.preset("best")


def test_partial_file_keeps_defaults(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"model": {"filters": [16, 32]}, "train": {"epochs": 3}}))
    config = config_files.load_file(tmp_path / "c.json")
    assert config.model.filters == (16, 32) and config.train.epochs == 3
    assert config.train.global_batch_size == config_lib.Config().train.global_batch_size


@pytest.mark.parametrize(
    "content, message",
    [
        ({"train": {"epoch": 3}}, "unknown key"),
        ({"modle": {}}, "unknown key"),
        ({"train": {"epochs": "3"}}, "expected int"),
        ({"train": {"epochs": 0}}, "epochs must be >= 1"),
        ({"train": {"precision": "fp8"}}, "not one of"),
        ({"model": {"dropout": 1.5}}, "dropout"),
        ({"train": {"ema_overwrite_steps": 5}}, "ema_overwrite_steps needs train.ema_momentum"),
        ({"train": {"ema_momentum": 0.9, "ema_overwrite_steps": 0}}, "ema_overwrite_steps must be >= 1"),
        ({"augment": {"erase_max_fraction": 0.0}}, "erase_max_fraction must be in"),
        ({"augment": {"erase_max_fraction": 2.0}}, "erase_max_fraction must be in"),
        ({"augment": {"erase_off_final_epochs": -1}}, "erase_off_final_epochs must be in"),
        ({"train": {"epochs": 5}, "augment": {"erase_off_final_epochs": 6}}, "erase_off_final_epochs must be in"),
        ({"data": {"max_train_examples": 0}}, "max_train_examples must be >= 1"),
        ({"data": {"max_eval_examples": -5}}, "max_eval_examples must be >= 1"),
    ],
)
def test_bad_configs_fail_loudly(tmp_path, content, message):
    (tmp_path / "c.json").write_text(json.dumps(content))
    with pytest.raises(config_lib.ConfigError, match=message):
        config_files.load_file(tmp_path / "c.json")


def test_unknown_preset_and_bad_json(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="unknown preset 'nope'"):
        presets.preset("nope")
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(config_lib.ConfigError, match="not valid JSON"):
        config_files.load_file(tmp_path / "c.json")
    (tmp_path / "c.json").write_bytes(bytes(range(128, 256)))
    with pytest.raises(config_lib.ConfigError, match="not valid JSON"):
        config_files.load_file(tmp_path / "c.json")


def test_a_directory_given_as_config_file_is_named_with_the_config_inside(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=f"config file {tmp_path} is a directory; pass a JSON file$"):
        config_files.load_file(tmp_path)
    (tmp_path / "best_config.json").write_text("{}")
    with pytest.raises(config_lib.ConfigError, match=f"e.g. --config={tmp_path / 'best_config.json'}$"):
        config_files.load_file(tmp_path)


def test_a_run_config_reads_fields_it_predates_as_the_run_used_them(tmp_path, caplog):
    data = config_files.to_dict(presets.preset("default"))
    for dotted in config_lib.FIELDS_ADDED:
        section, field = dotted.split(".")
        del data[section][field]
    (tmp_path / "config.json").write_text(json.dumps(data))
    run = config_files.load_run_config(tmp_path / "config.json")
    for dotted, value in config_lib.FIELDS_ADDED.items():
        section, field = dotted.split(".")
        assert getattr(getattr(run, section), field) == value, dotted
    # A whole config saved by an older version (a tuner's best_config.json, say) means what it meant then,
    # and the console says so.
    with caplog.at_level(logging.INFO, logger="pipeline.config_files"):
        assert config_files.load_file(tmp_path / "config.json") == run
    assert "whole config saved before" in caplog.text and "data.order='file'" in caplog.text
    # A file of overrides takes today's defaults for everything it leaves out.
    (tmp_path / "overrides.json").write_text(json.dumps({"name": "mine", "train": {"epochs": 3}}))
    overrides = config_files.load_file(tmp_path / "overrides.json")
    assert overrides.model == presets.preset("default").model and overrides.train.epochs == 3
    # So does a whole config missing a field that is not a later addition.
    del data["model"]["filters"]
    (tmp_path / "partial.json").write_text(json.dumps(data))
    assert config_files.load_file(tmp_path / "partial.json").model.batch_norm_after_pooling is True


def test_shipped_config_files_list_every_field_so_they_read_as_written_today():
    # A recipe file missing only later additions would read as an older version's saved config: with the
    # values runs used before those fields existed, not today's.
    for path in [REPO / "benchmarks" / "reference_default.json"]:
        data = json.loads(path.read_text())
        declared = config_fields.declared_fields(config_lib.Config)
        missing = [f"{s}.{f.name}" for s, f in declared if f.name not in data[s]]
        assert not missing, (path, missing)
        assert config_files.load_file(path) == config_files.validate(config_files.from_dict(config_lib.Config, data))


@dataclasses.dataclass(frozen=True)
class _TrainWithNoise(config_lib.TrainConfig):
    """A throwaway field, declared once, as a new field would be."""

    gradient_noise: float = config_fields.setting(
        0.01, "Std of Gaussian noise added to each gradient.", flag=True, old=0.0, resumable=True, lower=0.0
    )


@dataclasses.dataclass(frozen=True)
class _ConfigWithNoise(config_lib.Config):
    train: _TrainWithNoise = _TrainWithNoise()


def test_a_field_declared_once_gets_its_flag_old_run_value_and_resume_rule(tmp_path):
    from absl import flags

    from launch import common
    from pipeline.runs import workdir as workdir_lib

    # Its flag, with its help and bounds, and the flag sets it.
    flag_values = flags.FlagValues()
    common.define_config_flags(flag_values, _ConfigWithNoise)
    assert flag_values["gradient_noise"].help == "Std of Gaussian noise added to each gradient."
    with pytest.raises(flags.IllegalFlagValueError):
        flag_values(["prog", "--gradient_noise=-1"])
    flag_values.unparse_flags()
    flag_values(["prog", "--gradient_noise=0.2"])
    assert flag_values["gradient_noise"].value == 0.2
    # The README's flag list.
    assert "`--gradient_noise`" in config_fields.readme_flag_list(_ConfigWithNoise)
    # Runs recorded before it existed read it as they ran.
    assert config_fields.fields_added(_ConfigWithNoise)["train.gradient_noise"] == 0.0
    recorded = config_files.to_dict(_ConfigWithNoise())
    del recorded["train"]["gradient_noise"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert config_files.load_run_config(tmp_path / "config.json", _ConfigWithNoise).train.gradient_noise == 0.0
    # A resume may change it: the workdir check accepts the change, and refuses an undeclared one.
    assert "train.gradient_noise" in config_fields.resumable_fields(_ConfigWithNoise)
    changed = _ConfigWithNoise(train=_TrainWithNoise(gradient_noise=0.5))
    assert workdir_lib.check_resume_compatible(tmp_path, changed)
    other = _ConfigWithNoise(train=_TrainWithNoise(gradient_noise=0.0, seed=7))
    with pytest.raises(workdir_lib.WorkdirError, match="train.seed"):
        workdir_lib.check_resume_compatible(tmp_path, other)


def test_a_run_that_does_not_scale_its_rate_resumes_whatever_batch_its_rate_was_chosen_at(tmp_path):
    from pipeline.runs import workdir as workdir_lib

    # Runs recorded `train.base_batch_size` 128 while their rate was chosen at 512; unscaled, it changed nothing.
    config = presets.preset("fast")
    recorded = config_files.to_dict(config)
    recorded["train"]["base_batch_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert workdir_lib.check_resume_compatible(tmp_path, config)
    # Scaling the rate is a change of its own; the recorded run's unused batch is not listed with it.
    scaled = config.replace(train=dataclasses.replace(config.train, scale_learning_rate=True))
    with pytest.raises(workdir_lib.WorkdirError, match=r"config \(train.scale_learning_rate: False -> True\);"):
        workdir_lib.check_resume_compatible(tmp_path, scaled)
    # A scaled rate depends on it, so a run that scaled resumes only with the batch it scaled from.
    recorded["train"]["scale_learning_rate"] = True
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(workdir_lib.WorkdirError, match=r"config \(train.base_batch_size: 128 -> 512\);"):
        workdir_lib.check_resume_compatible(tmp_path, scaled)
    with pytest.raises(workdir_lib.WorkdirError, match="train.base_batch_size: 128 -> 512"):
        workdir_lib.check_resume_compatible(tmp_path, config)


def test_the_readme_lists_the_declared_flags():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert config_fields.readme_flag_list(config_lib.Config) in readme
