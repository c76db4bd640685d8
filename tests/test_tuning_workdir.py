"""A search's directory: its budget and resume rules, extending it, and never sharing it with a training run."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import run

from pipeline import config as config_lib
from pipeline import config_files, presets


def test_time_budget_counts_earlier_runs_of_the_search(tmp_path):
    from tuning.budget import BudgetClock

    (tmp_path / "budget.json").write_text(json.dumps({"spent_seconds": 50.0}))
    clock = BudgetClock(tmp_path, budget_seconds=60.0)
    assert abs(clock.deadline() - (clock.started + 10.0)) < 1e-6
    clock.record()
    assert json.loads((tmp_path / "budget.json").read_text())["spent_seconds"] >= 50.0
    assert BudgetClock(tmp_path / "new", budget_seconds=None).deadline() is None


def test_a_tie_for_best_goes_to_the_trial_that_started_first_whatever_order_a_resume_reads_them_in(tmp_path):
    import keras_tuner as kt

    from tuning.budget import BudgetClock
    from tuning.oracle import TuneConfig, make_oracle

    oracle = make_oracle(TuneConfig(tuner="random", search=("filters",)), BudgetClock(tmp_path, None))
    scores = {"09": 0.5, "10": 0.75, "11": 0.75, "12": None}
    for trial_id, score in scores.items():
        status = "COMPLETED" if score is not None else "FAILED"
        trial = kt.engine.trial.Trial(oracle.get_space(), trial_id=trial_id, status=status)
        trial.score = score
        oracle.trials[trial_id] = trial
    oracle.start_order = list(scores)
    for order in (list(scores), list(reversed(scores))):
        oracle.trials = {trial_id: oracle.trials[trial_id] for trial_id in order}
        assert [t.trial_id for t in oracle.get_best_trials(4)] == ["10", "11", "09", "12"]


def test_a_resumed_search_counts_its_recorded_trials_by_status(tmp_path):
    import keras_tuner as kt

    from tuning.budget import BudgetClock
    from tuning.oracle import TuneConfig, make_oracle
    from tuning.results import describe_recorded

    oracle = make_oracle(TuneConfig(tuner="random", search=("filters",)), BudgetClock(tmp_path, None))
    for trial_id, status in {"0": "COMPLETED", "1": "COMPLETED", "2": "RUNNING"}.items():
        oracle.trials[trial_id] = kt.engine.trial.Trial(oracle.get_space(), trial_id=trial_id, status=status)
    assert describe_recorded(oracle) == "3 trials recorded (2 completed, 1 running)"
    del oracle.trials["1"], oracle.trials["2"]
    assert describe_recorded(oracle) == "1 trial recorded (1 completed)"


def test_resume_accepts_retrain_only_changes_and_refuses_others(tmp_path):
    from pipeline.runs import workdir as workdir_lib
    from tuning.oracle import TuneConfig
    from tuning.search import _check_same_search

    base, tune = presets.preset("default"), TuneConfig(time_budget_seconds=60.0)
    _check_same_search(tmp_path, base, tune)
    retrain_longer = base.replace(
        train=dataclasses.replace(base.train, epochs=60),
        model=dataclasses.replace(base.model, test_time_augmentation="none"),
    )
    _check_same_search(tmp_path, retrain_longer, dataclasses.replace(tune, time_budget_seconds=120.0))
    assert json.loads((tmp_path / "search_config.json").read_text())["base"]["train"]["epochs"] == 60
    other_trials = base.replace(model=dataclasses.replace(base.model, dense_units=64))
    with pytest.raises(workdir_lib.WorkdirError, match="different search"):
        _check_same_search(tmp_path, other_trials, tune)
    with pytest.raises(workdir_lib.WorkdirError, match="different search"):
        _check_same_search(tmp_path, base, dataclasses.replace(tune, max_epochs=3))
    # The batch the rate was chosen at matters only to a search that scales its rate from it.
    chosen_elsewhere = base.replace(train=dataclasses.replace(base.train, base_batch_size=128))
    _check_same_search(tmp_path, chosen_elsewhere, tune)
    scaled = chosen_elsewhere.replace(train=dataclasses.replace(chosen_elsewhere.train, scale_learning_rate=True))
    (tmp_path / "scaled").mkdir()
    _check_same_search(tmp_path / "scaled", scaled, tune)
    scaled_from_512 = scaled.replace(train=dataclasses.replace(scaled.train, base_batch_size=512))
    with pytest.raises(workdir_lib.WorkdirError, match="different search"):
        _check_same_search(tmp_path / "scaled", scaled_from_512, tune)


def test_a_flag_the_chosen_search_algorithm_would_ignore_is_refused(tmp_path):
    for tuner, flag, reader in (
        ("hyperband", "--max_trials=5", "--tuner=bayesian or random"),
        ("random", "--hyperband_factor=4", "--tuner=hyperband"),
    ):
        done = run(["fmnist-tune", f"--workdir={tmp_path / 'tune'}", f"--tuner={tuner}", flag], timeout=120)
        name = flag.split("=")[0]
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [
            f"error: {name} is read by {reader}, not {tuner}; drop it"
        ], done.stderr[-1000:]
    assert not (tmp_path / "tune").exists()


def test_a_search_and_a_training_run_never_share_a_directory(tiny_data_dir, tmp_path):
    import tensorflow as tf

    from pipeline.runs import workdir as workdir_lib
    from pipeline.training.driver import train_and_evaluate
    from tuning.oracle import TuneConfig
    from tuning.search import run_search

    base = presets.preset("smoke").replace(data=config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64))
    run_dir, search_dir = tmp_path / "run", tmp_path / "search"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    search_dir.mkdir()
    (search_dir / "search_config.json").write_text("{}")
    strategy = tf.distribute.get_strategy()
    with pytest.raises(workdir_lib.WorkdirError, match=f"{run_dir} holds a training run .config.json., not a search"):
        run_search(run_dir, base, TuneConfig(tuner="random", max_trials=1, max_epochs=1), lambda: strategy)
    with pytest.raises(workdir_lib.WorkdirError, match="holds a search .search_config.json., not a training run"):
        train_and_evaluate(base, search_dir, strategy, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]
    assert sorted(p.name for p in search_dir.iterdir()) == ["search_config.json"]


def test_a_search_given_where_a_run_or_an_export_is_wanted_names_its_retrained_best(tmp_path):
    from pipeline.runs import workdir as workdir_lib
    from pipeline.serving import predict

    (tmp_path / "search_config.json").write_text("{}")
    with pytest.raises(
        workdir_lib.WorkdirError,
        match=f"holds a search, not a training run: its retrained best is {tmp_path / 'best_run'}",
    ):
        workdir_lib.require_finished(tmp_path, "finish it")
    (tmp_path / "best_run" / "export" / "1").mkdir(parents=True)
    with pytest.raises(
        predict.ModelNotFoundError, match=f"retrained best is exported in {tmp_path / 'best_run' / 'export'}$"
    ):
        predict.resolve_model_dir(tmp_path)


def test_a_retrained_run_of_an_earlier_best_is_kept_aside_and_one_of_the_best_resumes(tmp_path):
    from tuning.search import set_aside_if_retrained_for_another

    smoke = presets.preset("smoke")
    earlier = smoke.replace(model=dataclasses.replace(smoke.model, filters=(16, 128)))
    run_dir = tmp_path / "best_run"
    run_dir.mkdir()
    config_files.save(earlier, run_dir / "config.json")
    assert set_aside_if_retrained_for_another(run_dir, earlier) is None and run_dir.exists()
    kept = set_aside_if_retrained_for_another(run_dir, smoke)
    assert kept == tmp_path / "best_run.earlier-1" and not run_dir.exists()
    assert config_files.load_run_config(kept / "config.json") == config_files.validate(earlier)
    assert set_aside_if_retrained_for_another(run_dir, smoke) is None


def test_trials_png_lays_its_panels_in_rows_of_four_and_stars_the_oracles_best(tmp_path):
    from PIL import Image

    from tuning import results

    rows = [
        {"trial_id": str(i), "status": "COMPLETED", "val_accuracy": 0.5 + 0.01 * (i % 3), "epochs": 2, "seconds": 1.0}
        | {name: (i % 4) * 0.001 + 0.001 for name in results.MAIN_HYPERPARAMETERS}
        for i in range(12)
    ]
    results.plot_trials(rows, tmp_path / "trials.png", best_id="5")
    width, height = Image.open(tmp_path / "trials.png").size
    panels = 1 + len(results.MAIN_HYPERPARAMETERS)
    assert width == 100 * 4 * results.COLUMNS and height == round(100 * 3.4 * -(-panels // results.COLUMNS))
    results.plot_trials(rows, tmp_path / "unstarred.png")
    assert (tmp_path / "trials.png").read_bytes() != (tmp_path / "unstarred.png").read_bytes()


def test_trials_png_shows_trials_without_dropout_at_rate_zero_in_the_dropout_panel(tmp_path):
    from PIL import Image

    from tuning import results

    rows = [
        {"trial_id": str(i), "status": "COMPLETED", "val_accuracy": 0.5 + 0.01 * i, "epochs": 2, "seconds": 1.0}
        | ({"dropout": True, "dropout_rate": 0.3} if i % 2 else {"dropout": False, "dropout_rate": None})
        for i in range(4)
    ]
    assert [results._plotted(r, "dropout_rate") for r in rows] == [0.0, 0.3, 0.0, 0.3]
    # The best trial had no dropout: the panel of rates is drawn, and the best is starred at 0.
    results.plot_trials(rows, tmp_path / "trials.png", best_id="2")
    assert Image.open(tmp_path / "trials.png").size == (100 * 4 * 2, 340)


@pytest.mark.parametrize("tuner", ["random", "bayesian", "hyperband"])
def test_a_search_with_the_same_seed_draws_the_same_trials_the_default_seed_too(tmp_path, tuner):
    import keras_tuner as kt

    from tuning.budget import BudgetClock
    from tuning.oracle import TuneConfig, make_oracle

    def first_draws(seed: int) -> list[dict]:
        oracle = make_oracle(TuneConfig(tuner=tuner, seed=seed), BudgetClock(tmp_path, None))
        space = kt.HyperParameters()
        space.Int("filters", 8, 128, step=8)
        space.Float("learning_rate", 1e-3, 1.0, sampling="log")
        oracle.update_space(space)
        return [oracle.populate_space(f"{i:02d}")["values"] for i in range(3)]

    # KerasTuner reads a seed of 0 as none and draws one at random.
    assert first_draws(0) == first_draws(0)
    assert first_draws(1) == first_draws(1) != first_draws(0)
