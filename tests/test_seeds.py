"""Accuracy across seeds: rows, medians with their spread, and runs that are not seeds of one recipe."""

from __future__ import annotations

import json

import pytest
from conftest import assert_benchmark_flag_fails

from benchmarks import seeds
from pipeline import config_files, presets


def _finished_run(workdir, seed: int, test_accuracy: float, **changes) -> str:
    config = config_files.to_dict(presets.preset("fast"))
    config["train"]["seed"] = seed
    for key, value in changes.items():
        section, field = key.split(".")
        config[section][field] = value
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config))
    history = [
        {"epoch": 1, "val_accuracy": 0.91, "elapsed_seconds": 10.0},
        {"epoch": 2, "val_accuracy": 0.935 + seed / 1000, "elapsed_seconds": 20.0 + seed},
    ]
    (workdir / "history.json").write_text(json.dumps(history))
    metrics = {
        "test_accuracy": test_accuracy,
        "test_accuracy_single_view": test_accuracy - 0.004,
        "test_loss": 0.2,
        "generalization_gap": 0.02,
        "train_seconds": 30.0 + seed,
        "precision": "float32",
    }
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    return str(workdir)


def test_each_seed_has_its_row_and_the_summary_is_the_median_with_min_and_max(tmp_path):
    accuracies = {0: 0.9391, 1: 0.9421, 2: 0.9413}
    workdirs = [_finished_run(tmp_path / f"s{seed}", seed, acc) for seed, acc in accuracies.items()]
    rows, summary = seeds.from_workdirs({"fast": workdirs})
    assert [row["seed"] for row in rows] == [0, 1, 2]
    assert [row["workdir"] for row in rows] == workdirs
    assert [round(row["test as served (%)"], 2) for row in rows] == [93.91, 94.21, 94.13]
    (only,) = summary
    assert only["recipe"] == "fast" and only["seeds"] == 3
    assert only["test as served, median [min, max] (%)"] == "94.13 [93.91, 94.21]"
    assert only["test single view, median [min, max] (%)"] == "93.73 [93.51, 93.81]"
    assert only["seconds to 93% val, median"] == 21.0 and only["seeds reaching 93% val"] == "3/3"
    assert only["train seconds, median"] == 31.0 and only["precision"] == "float32"


def test_runs_that_differ_in_more_than_the_seed_are_refused(tmp_path):
    same = _finished_run(tmp_path / "a", 0, 0.94, **{"data.data_dir": "/elsewhere"})
    other = _finished_run(tmp_path / "b", 1, 0.94, **{"train.epochs": 40})
    seeds.from_workdirs({"fast": [same, _finished_run(tmp_path / "c", 2, 0.94)]})  # The data's path may differ.
    with pytest.raises(ValueError, match=r"differ in train\.epochs, not only the seed"):
        seeds.from_workdirs({"fast": [same, other]})
    with pytest.raises(ValueError, match=r"holds no finished run \(metrics.json is missing\)"):
        (tmp_path / "a" / "metrics.json").unlink()
        seeds.from_workdirs({"fast": [same]})


def test_bad_seed_runs_fail_in_one_line_before_measuring(tmp_path):
    workdir = _finished_run(tmp_path / "a", 0, 0.94)
    for bad, message in (
        (f"--seed_runs={workdir}", "expected NAME=WORKDIR"),
        (f"--seed_runs=fast={tmp_path / 'missing'}", "holds no finished run"),
        ("--recipe_seeds=0,x", "expected whole numbers"),
    ):
        assert_benchmark_flag_fails(tmp_path, bad, message)
