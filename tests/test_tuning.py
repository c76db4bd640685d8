"""KerasTuner search: hp to config mapping, a tiny search, resume, chief with workers."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner as kt
import pytest
from conftest import REPO, run, subprocess_env

from pipeline import config as config_lib
from pipeline import config_files, presets
from tuning.search_space import GROUPS, config_from_hp


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_empty_hyperparameters_give_the_base_config(name):
    base = presets.preset(name)
    assert config_from_hp(kt.HyperParameters(), base) == base


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_searched_range_contains_the_presets_value(name):
    base = presets.preset(name)
    hp = kt.HyperParameters()
    assert config_from_hp(hp, base, search=GROUPS) == base  # The defaults are the preset's values.
    for parameter in hp.space:
        if not hp.is_active(parameter):
            continue
        value = hp.values[parameter.name]
        kinds = kt.engine.hyperparameters
        if isinstance(parameter, kinds.Boolean):
            assert value in (True, False)
        elif isinstance(parameter, kinds.Choice | kinds.Fixed):
            assert value in getattr(parameter, "values", [value]), (name, parameter.name)
        else:
            assert parameter.min_value <= value <= parameter.max_value, (name, parameter.name, value)
    rates = [p for p in hp.space if p.name == "learning_rate"]
    assert rates[0].min_value == pytest.approx(base.train.learning_rate / 10)
    assert rates[0].max_value == pytest.approx(base.train.learning_rate * 3)


def test_fixed_values_override_only_their_field():
    base = presets.preset("default")
    hp = kt.HyperParameters()
    config_from_hp(hp, base)
    hp.values.update(filters_1=96, dropout=False)
    config = config_from_hp(hp, base)
    first, _, last = base.model.filters
    assert config.model == dataclasses.replace(base.model, filters=(first, 96, last), dropout=None)
    assert config.replace(model=base.model) == base
    hp.values.update(dropout=True, dropout_rate=0.4, learning_rate=1e-3)
    config = config_from_hp(hp, base)
    assert config.model.dropout == 0.4 and config.train.learning_rate == 1e-3


def test_groups_not_searched_stay_fixed():
    hp = kt.HyperParameters()
    config_from_hp(hp, presets.preset("default"), search=("filters", "dropout"))
    fixed = {p.name for p in hp.space if isinstance(p, kt.engine.hyperparameters.Fixed)}
    assert {"kernel_size", "learning_rate", "batch_norm", "dense_units"} <= fixed
    assert not {"filters_0", "dropout"} & fixed
    with pytest.raises(config_lib.ConfigError, match="unknown search group"):
        config_from_hp(kt.HyperParameters(), presets.preset("default"), search=("colour",))
    assert "dropout" in GROUPS


def _tune(workdir, data_dir, *extra):
    return [
        "fmnist-tune",
        f"--workdir={workdir}",
        "--preset=smoke",
        f"--data_dir={data_dir}",
        "--tuner=random",
        "--max_epochs=1",
        "--search_space=filters,dropout",
        *extra,
    ]


def test_two_trial_search_writes_a_config_that_fmnist_train_accepts(tiny_data_dir, tmp_path):
    done = run(_tune(tmp_path / "tune", tiny_data_dir, "--max_trials=2"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    tune = tmp_path / "tune"
    for name in ("best_config.json", "trials.csv", "trials.md", "trials.png", "summary.json"):
        assert (tune / name).exists(), name
    rows = list(csv.DictReader((tune / "trials.csv").open()))
    assert len(rows) == 2
    assert all(row["epochs"] == "1" and float(row["seconds"]) > 0 and row["val_accuracy"] for row in rows)
    # The console names each trial by the id in trials.csv and search/trial_<id>, not by KerasTuner's count from 1.
    for row in rows:
        assert f"trial {row['trial_id']}: up to epoch 1; " in done.stderr
        assert f"trial {row['trial_id']} completed: val accuracy {float(row['val_accuracy']):.4f}" in done.stderr
    assert "Search: Running Trial" not in done.stdout and "retracing" not in done.stderr
    # What the search runs, before it runs; and the winner by its searched values and what trains it.
    header = "random search of filters,dropout around 'smoke': up to 2 trials (--max_trials) of 1 epoch each"
    assert done.stderr.index(header) < done.stderr.index("trial 0: up to epoch 1")
    top = max(float(row["val_accuracy"]) for row in rows)
    assert any(
        f"best trial {row['trial_id']}: val accuracy {top:.4f}; filters_0=" in done.stderr
        for row in rows
        if float(row["val_accuracy"]) == top
    )
    assert f"{tune / 'best_config.json'} trains it for 1 epoch\n" in done.stderr
    assert list((tune / "tensorboard").iterdir())
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            f"--workdir={tmp_path / 'run'}",
            f"--config={tune / 'best_config.json'}",
            "--epochs=1",
            "--noexport",
            "--noreport",
        ],
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    best = config_files.load_file(tune / "best_config.json")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == config_files.to_dict(best.model)
    # More trials extend the search: the two finished ones are kept, not redone.
    more = run(_tune(tune, tiny_data_dir, "--max_trials=3"), timeout=600)
    assert more.returncode == 0, more.stderr[-3000:]
    again = list(csv.DictReader((tune / "trials.csv").open()))
    kept = {row["trial_id"]: row for row in again}
    assert len(kept) == 3 and all(kept[row["trial_id"]] == row for row in rows), again
    assert more.stderr.count(" completed: val accuracy") == 1


@pytest.mark.slow
def test_interrupted_search_resumes(tiny_data_dir, tmp_path):
    command = _tune(tmp_path / "tune", tiny_data_dir, "--max_trials=4", "--max_epochs=2")
    child = subprocess.Popen(
        command, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "tune" / "search").glob("trial_1/checkpoints/ckpt-1*")):
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = [
        p
        for p in (tmp_path / "tune" / "search").glob("trial_*/trial.json")
        if json.loads(p.read_text())["status"] == "COMPLETED"
    ]
    assert 1 <= len(finished) < 4
    done = run(command, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The resume is announced in our words, not KerasTuner's own print.
    assert "Reloading" not in done.stdout + done.stderr
    assert f"resuming the search in {tmp_path / 'tune'}: " in done.stderr
    assert f"{len(finished)} completed" in done.stderr
    assert json.loads((tmp_path / "tune" / "summary.json").read_text())["trials"] == 4
    assert len((tmp_path / "tune" / "trials.csv").read_text().splitlines()) == 5


@pytest.mark.slow
@pytest.mark.parametrize("stopped", ["trial_0", "trial_1"])
def test_sigterm_saves_the_running_trial_and_the_rerun_redoes_no_finished_trial(long_data_dir, tmp_path, stopped):
    tune = tmp_path / "tune"
    extra = ["--max_trials=3", "--max_epochs=2", "--max_train_examples=11520", "--validation_size=64"]
    command = _tune(tune, long_data_dir, *extra)
    child = subprocess.Popen(command, env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def status(trial: str) -> str | None:
        try:
            return json.loads((tune / "search" / trial / "trial.json").read_text())["status"]
        except (FileNotFoundError, json.JSONDecodeError):  # Not written yet.
            return None

    def hyperparameters(trial: str) -> dict:
        return json.loads((tune / "search" / trial / "trial.json").read_text())["hyperparameters"]["values"]

    deadline = time.time() + 300
    earlier_done = stopped == "trial_0" or status("trial_0") == "COMPLETED"
    while not (earlier_done and list((tune / "search" / stopped).glob("history.json"))):
        assert time.time() < deadline and child.poll() is None
        time.sleep(0.05)
        earlier_done = stopped == "trial_0" or status("trial_0") == "COMPLETED"
    time.sleep(0.3)  # Into the stopped trial's second epoch.
    finished = (tune / "search" / "trial_0" / "trial.json").read_text()
    values = hyperparameters(stopped)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr.decode()[-3000:]
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith("error: search stopped by SIGTERM") and "in progress" in last, last
    done = run(command, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {tune / 'search' / stopped}" in done.stderr and "epoch 2 in progress" in done.stderr
    # The stopped trial continues with its own hyperparameters, even when it was the search's first.
    assert hyperparameters(stopped) == values and status(stopped) == "COMPLETED"
    if stopped != "trial_0":
        assert (tune / "search" / "trial_0" / "trial.json").read_text() == finished  # Not trained again.
    assert json.loads((tune / "summary.json").read_text())["trials"] == 3


@pytest.mark.slow
def test_chief_with_two_workers_completes(tiny_data_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "launch.launch",
        "--tuner_workers=2",
        "--",
        *_tune(tmp_path / "tune", tiny_data_dir, "--max_trials=3"),
    ]
    done = run(command, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "[tuner0]" in done.stdout and "[tuner1]" in done.stdout
    # KerasTuner prints a conditional hyperparameter's value as trials cross the wire; none reaches the console.
    assert not [line for line in done.stdout.splitlines() if line.endswith("] True")], done.stdout[-3000:]
    summary = json.loads((tmp_path / "tune" / "summary.json").read_text())
    assert summary["trials"] == 3 and (tmp_path / "tune" / "best_config.json").exists()
    # The oracle's state holds no trial as running, so a rerun (a requeued job) sends none out again.
    assert json.loads((tmp_path / "tune" / "search" / "oracle.json").read_text())["ongoing_trials"] == {}
    again = run(command, timeout=600)
    assert again.returncode == 0 and not re.search(r"\] trial \d+: up to epoch", again.stdout), again.stdout[-3000:]


@pytest.mark.slow
def test_two_workers_end_a_timed_search_on_the_chiefs_clock_with_every_trial_completed(tiny_data_dir, tmp_path):
    # Each process starts its own clock when it starts. A worker that stopped
    # trials by its own would fail those the chief still hands out, and three
    # failures in a row end a KerasTuner search with an error.
    tune = tmp_path / "tune"
    budget = ["--max_trials=100000", "--time_budget=25"]
    launch = [sys.executable, "-m", "launch.launch", "--tuner_workers=2", "--"]
    done = run([*launch, *_tune(tune, tiny_data_dir, *budget)], timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    statuses = [json.loads(path.read_text())["status"] for path in (tune / "search").glob("trial_*/trial.json")]
    assert len(statuses) >= 2 and set(statuses) == {"COMPLETED"}, statuses
    assert json.loads((tune / "summary.json").read_text())["trials"] == len(statuses)


@pytest.mark.parametrize("name", ["hyperband", "bayesian", "random"])
def test_every_oracle_samples_the_search_space_from_the_first_trial(tiny_data_dir, tmp_path, name):
    from pipeline.cluster import strategies
    from tuning.oracle import TuneConfig
    from tuning.tuner import build_tuner

    base = presets.preset("smoke")
    base = base.replace(data=dataclasses.replace(base.data, data_dir=str(tiny_data_dir)))
    tune = TuneConfig(tuner=name, max_epochs=9, time_budget_seconds=3600.0, search=("filters", "dropout"))
    tuner = build_tuner(tmp_path, base, tune, strategies.make_strategy("default"))
    trial = tuner.oracle.create_trial("tuner0")
    assert trial.status == "RUNNING"
    assert {"filters_0", "filters_1", "dropout", "learning_rate"} <= set(trial.hyperparameters.values)


def test_the_tuners_stdout_drops_only_whole_lines_it_names():
    import io

    from launch.common import WithoutLines

    stream = io.StringIO()
    out = WithoutLines(stream, ("True",))
    for text in ("Tr", "ue", "\n", "True is kept\n", "\r 1/9 [==", "\r 9/9 [====]\n", "True", "\n", "False\n"):
        out.write(text)
        if text.startswith("\r"):
            assert stream.getvalue().endswith(text)  # A progress bar is passed on at once.
    assert stream.getvalue() == "True is kept\n\r 1/9 [==\r 9/9 [====]\nFalse\n"
    out.write("Tru")
    out.flush()  # A line that never ends is not lost.
    assert stream.getvalue().endswith("False\nTru")


def test_a_hyperband_trial_continuing_another_starts_its_weight_average_at_the_weights_it_loads(
    tiny_data_dir, tmp_path
):
    import numpy as np
    import tensorflow as tf

    from pipeline.cluster import strategies
    from pipeline.data import input_pipeline as ip
    from pipeline.runs import final_model
    from pipeline.training import state as train_state
    from tuning.oracle import TuneConfig
    from tuning.tuner import build_tuner

    base = presets.preset("smoke")
    base = base.replace(
        data=dataclasses.replace(base.data, data_dir=str(tiny_data_dir)),
        train=dataclasses.replace(base.train, ema_momentum=0.99),
    )
    strategy = strategies.make_strategy("default")
    tuner = build_tuner(tmp_path, base, TuneConfig(tuner="hyperband", max_epochs=3, search=("filters",)), strategy)
    steps = ip.steps_per_epoch(len(tuner.dataset.train), base.train.global_batch_size)
    images = tuner.dataset.train.images

    def state_in(directory):
        return train_state.build_state(base, strategy, "float32", steps, directory, images)

    parent = state_in(tmp_path / "parent")
    for variable in parent.model.trainable_variables:
        variable.assign(tf.random.stateless_normal(variable.shape, seed=[1, 2]))
    final_model.save_final_model(parent.model, Path(tuner.get_trial_dir("0000")))
    child = state_in(tmp_path / "child")
    tuner._warm_start(child, "0000", initial_epoch=1, steps_per_epoch=steps)
    assert int(child.optimizer.iterations.numpy()) == steps
    averages = child.optimizer._model_variables_moving_average
    for weight, loaded, average in zip(
        child.model.trainable_variables, parent.model.trainable_variables, averages, strict=True
    ):
        np.testing.assert_array_equal(weight.numpy(), loaded.numpy())
        np.testing.assert_array_equal(average.numpy(), loaded.numpy())  # Not Keras's zeros.


def test_once_the_budget_is_spent_the_oracle_ends_the_running_trial_and_hands_out_no_other(
    tiny_data_dir, tmp_path, caplog, monkeypatch
):
    from pipeline.cluster import strategies
    from tuning import search
    from tuning import tuner as tuning_tuner
    from tuning.oracle import TuneConfig

    base = presets.preset("smoke")
    base = base.replace(data=dataclasses.replace(base.data, data_dir=str(tiny_data_dir)))
    tune = TuneConfig(tuner="random", max_trials=3, max_epochs=2, time_budget_seconds=3600.0, search=("filters",))
    built = []

    def tuner_whose_budget_ends_with_the_first_report(*args, **kwargs):
        built.append(tuning_tuner.build_tuner(*args, **kwargs))
        clock, recorded = built[-1].oracle.clock, []
        record = clock.record
        clock.record = lambda: (recorded.append(True), record())
        clock.deadline = lambda: time.time() - 1 if recorded else None
        return built[-1]

    monkeypatch.setattr(search, "build_tuner", tuner_whose_budget_ends_with_the_first_report)
    with caplog.at_level("INFO", logger="tuning"):
        summary = search.run_search(tmp_path, base, tune, lambda: strategies.make_strategy("default"))
    oracle = built[0].oracle
    (trial,) = oracle.trials.values()
    # The trial the budget ran out in keeps the score of the epoch it trained: completed, not failed.
    assert trial.status == "COMPLETED" and trial.score == summary["best_val_accuracy"]
    assert trial.metrics.get_last_value("epochs") == 1
    assert "the time budget is spent; it ends after epoch 1" in caplog.text
    # Nor is a trial queued for retry (one a stopped search was running) handed out once the budget is spent.
    oracle._retry_queue.append(trial.trial_id)
    assert oracle.create_trial("tuner0").status == "STOPPED" and oracle._retry_queue == [trial.trial_id]
