"""A final fit (`data.validation_size` 0): every training image trains, nothing validates, and every tool says so."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import run, smoke_train_command
from helpers import tiny_config

from benchmarks import candidates, recipes, seeds
from pipeline import config as config_lib
from pipeline import config_files, presets
from pipeline.data import sources as data_lib
from pipeline.training.driver import train_and_evaluate
from tuning import search


def _final_fit(data_dir, **train) -> config_lib.Config:
    config = tiny_config(data_dir, **train)
    return config.replace(data=dataclasses.replace(config.data, validation_size=0))


def test_a_split_of_size_zero_keeps_every_training_image(tiny_data_dir):
    labels = np.repeat(np.arange(10), 7)
    keep, held_out = data_lib.stratified_split(labels, 0, seed=0)
    assert keep.tolist() == list(range(70)) and held_out.size == 0
    dataset = data_lib.load(config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=0))
    assert len(dataset.validation) == 0 and len(dataset.train) == 640
    with pytest.raises(data_lib.DataError, match="give a size from 0 to 69"):
        data_lib.stratified_split(labels, 70, seed=0)


def test_early_stopping_without_validation_images_is_refused_with_the_fix(tiny_data_dir):
    config = _final_fit(tiny_data_dir, early_stopping_patience=3)
    with pytest.raises(config_lib.ConfigError, match="needs validation images: set data.validation_size >= 1"):
        config_files.validate(config)


def test_a_final_fit_trains_on_every_image_reports_no_validation_and_resumes(tiny_data_dir, tmp_path):
    strategy = tf.distribute.get_strategy()
    metrics = train_and_evaluate(_final_fit(tiny_data_dir, epochs=2), tmp_path, strategy, progress=False)
    assert metrics["examples"] == {"train": 640, "val": 0, "test": 160}
    assert "val_accuracy" not in metrics and metrics["best_epoch"] is None
    assert 0 <= metrics["test_accuracy"] <= 1 and np.isfinite(metrics["train_loss"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and not any("val_accuracy" in h for h in history)
    assert not (tmp_path / "tensorboard" / "val").exists()
    assert (tmp_path / "report" / "learning_curves.png").stat().st_size > 0
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()
    longer = _final_fit(tiny_data_dir, epochs=3)
    assert train_and_evaluate(longer, tmp_path, strategy, progress=False, export=False)["epochs_completed"] == 3


def test_the_command_line_summary_of_a_final_fit_leaves_validation_out(tiny_data_dir, tmp_path):
    done = run(smoke_train_command(tmp_path / "w", tiny_data_dir, "--validation_size=0", "--noexport"), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])
    assert "val_accuracy" not in summary and "test_accuracy" in summary


def test_a_search_of_a_final_fit_is_refused_in_one_line(tiny_data_dir, tmp_path):
    with pytest.raises(config_lib.ConfigError, match="holds out none .* pass --validation_size=5000"):
        search.check_base(presets.preset("best"))
    search.check_base(presets.validated("best"))
    command = [sys.executable, "-m", "launch.tune", f"--workdir={tmp_path / 't'}", "--preset=best"]
    done = run([*command, f"--data_dir={tiny_data_dir}"], timeout=120)
    assert done.returncode != 0 and "pass --validation_size=5000" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "t").exists()


def test_best_is_a_final_fit_of_its_validated_recipe_with_about_as_many_steps():
    best, validated = presets.preset("best"), presets.validated("best")
    assert best.data.validation_size == 0 and validated.data.validation_size == 5000
    assert best.replace(data=validated.data, train=dataclasses.replace(best.train, epochs=56)) == validated
    seen, chosen = best.train.epochs * 60000, validated.train.epochs * 55000
    assert abs(seen / chosen - 1) < 0.02
    assert presets.validated("fast") == presets.preset("fast")


def _run(seed: int, accuracies=None, seconds: float = 100.0) -> dict:
    history = [{"epoch": 1, "elapsed_seconds": seconds, "train_accuracy": 0.9}]
    if accuracies is not None:
        history = [{**history[0], "val_accuracy": accuracies}]
    metrics = {
        "test_accuracy": 0.95,
        "test_loss": 0.2,
        "generalization_gap": 0.01,
        "train_seconds": seconds,
        "precision": "float32",
    }
    return {"config": {"train": {"seed": seed}}, "history": history, "metrics": metrics}


def test_the_record_shows_a_final_fit_beside_a_validated_reference_without_inventing_validation():
    turn = [seeds.run_row("reference", _run(0, 0.94, 100.0)), seeds.run_row("best", _run(0, None, 700.0))]
    turn = recipes._against_reference(turn, seeds.TARGET)
    fit = turn[1]
    assert fit["seconds to 93% val"] == fit["best val, single view (%)"] == seeds.NO_VALIDATION
    assert fit["time to target vs reference"] == "n/a" and fit["train seconds vs reference"] == 7.0
    reference, best = seeds.summary(turn)
    assert reference["seeds reaching 93% val"] == "1/1" and best["seeds reaching 93% val"] == seeds.NO_VALIDATION
    assert best["best val, median (%)"] == best["seconds to 93% val, median"] == seeds.NO_VALIDATION
    assert best["time to target vs reference, median"] == "n/a" and best["train seconds vs reference, median"] == 7.0
    assert best["test as served, median [min, max] (%)"] == "95.00 [95.00, 95.00]"


def test_a_final_fit_is_no_candidate_on_validation(tmp_path):
    config = config_files.to_dict(presets.preset("best"))
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    tmp_path.joinpath("history.json").write_text(json.dumps(_run(0)["history"]))
    tmp_path.joinpath("metrics.json").write_text(json.dumps(_run(0)["metrics"]))
    with pytest.raises(ValueError, match="is a final fit .* holds out no images"):
        candidates.candidate_row(tmp_path)
    with pytest.raises(ValueError, match="is a final fit"):
        seeds.validation_split(tmp_path, presets.preset("best"), None)
