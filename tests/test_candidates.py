"""Candidate recipes on validation: what each run changes from its preset, and its validation accuracies."""

from __future__ import annotations

import json

import pytest
from conftest import assert_benchmark_flag_fails

from benchmarks import candidates
from pipeline import config_files, presets


def _finished_run(workdir, preset: str = "best", seed: int = 0, drop=(), **changes) -> str:
    config = config_files.to_dict(presets.validated(preset))  # Candidates hold out a validation split.
    config["train"]["seed"] = seed
    config["data"]["data_dir"] = "/somewhere/fashion-mnist"
    for key, value in changes.items():
        section, field = key.split(".")
        config[section][field] = value
    for key in drop:  # A config.json written before the field existed.
        section, field = key.split(".")
        del config[section][field]
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config))
    history = [
        {"epoch": e, "val_accuracy": acc, "elapsed_seconds": 10.0 * e} for e, acc in ((1, 0.93), (2, 0.96), (3, 0.955))
    ]
    (workdir / "history.json").write_text(json.dumps(history))
    metrics = {
        "val_accuracy": 0.9636,
        "test_accuracy": 0.95,
        "test_loss": 0.2,
        "train_seconds": 30.0,
        "precision": "float32",
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    return str(workdir)


def test_a_candidate_row_names_its_changes_and_its_validation_accuracies_not_its_test(tmp_path):
    workdir = _finished_run(tmp_path / "b256", seed=1, **{"train.global_batch_size": 256, "train.learning_rate": 0.2})
    row = candidates.candidate_row(workdir)
    assert row["preset"] == "best" and row["seed"] == 1 and row["workdir"] == workdir
    assert row["changes from the preset"] == "train.global_batch_size=256, train.learning_rate=0.2"
    assert round(row["val as served, final weights (%)"], 2) == 96.36
    assert round(row["val single view, last epoch (%)"], 2) == 95.5
    assert round(row["best val, single view (%)"], 2) == 96.0
    assert row["epochs"] == 3
    assert not any("test" in column for column in row)


def test_the_preset_itself_changes_nothing_and_lists_and_predated_fields_read_as_the_run_used_them(tmp_path):
    same = _finished_run(tmp_path / "same", **{"train.precision": "mixed_bfloat16"})  # What `auto` resolved to.
    assert candidates.candidate_row(same)["changes from the preset"] == "none"
    wider = _finished_run(tmp_path / "wider", **{"model.filters": [48, 96, 192]})
    assert candidates.candidate_row(wider)["changes from the preset"] == "model.filters=48,96,192"
    # A run from before `stem_init` existed used the old initialisation, which the row must say.
    old = _finished_run(tmp_path / "old", drop=("model.stem_init",))
    assert candidates.candidate_row(old)["changes from the preset"] == "model.stem_init=default"


def test_runs_that_cannot_be_weighed_are_refused_with_the_reason(tmp_path):
    unnamed = _finished_run(tmp_path / "mine")
    config = json.loads((tmp_path / "mine" / "config.json").read_text())
    config["name"] = "mine"  # Trained from a config file of its own, not from a preset.
    (tmp_path / "mine" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown preset 'mine'"):
        candidates.candidate_row(unnamed)
    with pytest.raises(ValueError, match=r"holds no finished run"):
        candidates.candidate_row(tmp_path / "missing")


def test_bad_candidate_runs_fail_in_one_line_before_measuring(tmp_path):
    assert_benchmark_flag_fails(tmp_path, f"--candidate_runs={tmp_path / 'missing'}", "holds no finished run")


def test_new_candidates_join_the_recorded_ones_and_a_run_named_again_replaces_its_row(tmp_path):
    first = candidates.candidate_row(_finished_run(tmp_path / "a"))
    second = candidates.candidate_row(_finished_run(tmp_path / "b", **{"train.epochs": 60}))
    # Rows recorded before each row named its commit take their section's.
    recorded = {"commit": "0123abcd", "rows": [{k: v for k, v in first.items() if k != "preset as of commit"}]}
    merged = candidates.merge(recorded, [second])
    assert [row["workdir"] for row in merged] == [first["workdir"], second["workdir"]]
    assert merged[0]["preset as of commit"] == "0123abcd"
    again = {**first, "val as served, final weights (%)": 97.0}
    replaced = candidates.merge({"commit": "x", "rows": merged}, [again])
    assert [row["workdir"] for row in replaced] == [second["workdir"], first["workdir"]]
    assert replaced[-1]["val as served, final weights (%)"] == 97.0
    assert candidates.merge(None, [second]) == [second]


def test_a_run_holding_out_other_images_is_also_scored_on_the_presets_unless_it_trained_on_them(
    tiny_data_dir, tmp_path
):
    import dataclasses

    import tensorflow as tf
    from helpers import tiny_config

    from pipeline.training.driver import train_and_evaluate

    smoke = presets.preset("smoke")  # It holds out 200 images; the tiny data has 640 for training.
    more = smoke.replace(data=dataclasses.replace(smoke.data, data_dir=str(tiny_data_dir), validation_size=300))
    fewer = tiny_config(tiny_data_dir)  # 64 held out: the preset's other 136 are in its training split.
    for name, config in (("more", more), ("fewer", fewer)):
        train_and_evaluate(config, tmp_path / name, tf.distribute.get_strategy(), False, False, False)
    superset = candidates.candidate_row(tmp_path / "more")
    assert 0 <= superset[candidates.ON_PRESET_IMAGES] <= 100
    assert candidates.candidate_row(tmp_path / "fewer")[candidates.ON_PRESET_IMAGES] is None
    # A row recorded before the column existed: its own images were the preset's unless it changed the split.
    own = {k: v for k, v in superset.items() if k != candidates.ON_PRESET_IMAGES}
    plain = {**own, "changes from the preset": "none", "workdir": "other"}
    merged = candidates.merge({"commit": "x", "rows": [own, plain]}, [])
    assert merged[0][candidates.ON_PRESET_IMAGES] is None
    assert merged[1][candidates.ON_PRESET_IMAGES] == plain["val as served, final weights (%)"]
    assert list(merged[1])[4] == candidates.ON_PRESET_IMAGES  # Beside the run's own validation accuracy.
