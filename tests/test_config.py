"""Config presets, JSON round trip and loud failures."""

from __future__ import annotations

import json

import pytest

from pipeline import config as config_lib
from pipeline import presets


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_round_trip(name, tmp_path):
    config = config_lib.validate(presets.preset(name))
    config_lib.save(config, tmp_path / "config.json")
    assert config_lib.load_file(tmp_path / "config.json") == config


def test_partial_file_keeps_defaults(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"model": {"filters": [16, 32]}, "train": {"epochs": 3}}))
    config = config_lib.load_file(tmp_path / "c.json")
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
    ],
)
def test_bad_configs_fail_loudly(tmp_path, content, message):
    (tmp_path / "c.json").write_text(json.dumps(content))
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_file(tmp_path / "c.json")


def test_unknown_preset_and_bad_json(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="unknown preset 'nope'"):
        presets.preset("nope")
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(config_lib.ConfigError, match="not valid JSON"):
        config_lib.load_file(tmp_path / "c.json")


def test_a_run_config_reads_fields_it_predates_as_the_run_used_them(tmp_path):
    data = config_lib.to_dict(presets.preset("default"))
    for dotted in config_lib.FIELDS_ADDED:
        section, field = dotted.split(".")
        del data[section][field]
    (tmp_path / "config.json").write_text(json.dumps(data))
    run = config_lib.load_run_config(tmp_path / "config.json")
    for dotted, value in config_lib.FIELDS_ADDED.items():
        section, field = dotted.split(".")
        assert getattr(getattr(run, section), field) == value, dotted
    # A file to start a new run from takes today's defaults instead.
    assert config_lib.load_file(tmp_path / "config.json") == presets.preset("default")
