"""The oracle chief of a distributed search ends on a stop signal, not only when its tuners ask it to."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from pipeline.training.preemption import TrainingStopped
from tuning import chief


class _Stop:
    signum = int(signal.SIGTERM)

    def __init__(self, received=None):
        self.received = received


def test_the_chief_returns_when_its_search_ends_and_passes_on_what_it_raised():
    chief.serve(lambda: time.sleep(0.2), _Stop())

    def fails():
        raise RuntimeError("Number of consecutive failures exceeded the limit of 3.")

    with pytest.raises(RuntimeError, match="consecutive failures"):
        chief.serve(fails, _Stop())


def test_a_stopped_chief_answers_for_its_grace_then_stops_with_sigterms_exit_code():
    forever, stop = threading.Event(), _Stop()
    threading.Timer(0.3, lambda: setattr(stop, "received", int(signal.SIGTERM))).start()
    started = time.monotonic()
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM: the oracle's state is saved") as stopped:
        chief.serve(forever.wait, stop, grace=1.0)
    assert stopped.value.exit_code == 143
    assert 1.0 <= time.monotonic() - started < 5.0
    # A search that ends within the grace (its tuners' last reports in) ends as usual.
    chief.serve(lambda: time.sleep(0.5), _Stop(int(signal.SIGTERM)), grace=5.0)


def test_the_chief_returns_as_the_last_tuner_is_told_the_search_is_over(tmp_path):
    from keras_tuner.src.distribute.oracle_chief import exit_chief

    from tuning.budget import BudgetClock
    from tuning.oracle import TuneConfig, make_oracle

    oracle = make_oracle(TuneConfig(tuner="random", search=("filters",)), BudgetClock(tmp_path, None))
    oracle.ongoing_trials["tuner1"] = "3"
    oracle.tuner_ids.update({"tuner1", "tuner2"})
    forever = threading.Event()  # KerasTuner's server loop, which looks for the end every 20 s.

    def tuners_finish():
        oracle.ongoing_trials.clear()
        oracle.tuner_ids.discard("tuner1")
        time.sleep(0.3)
        assert not exit_chief(oracle)  # tuner2 has not been told yet.
        oracle.tuner_ids.discard("tuner2")

    threading.Timer(0.2, tuners_finish).start()
    started = time.monotonic()
    chief.serve(forever.wait, _Stop(), over=lambda: exit_chief(oracle))
    assert 0.5 <= time.monotonic() - started < 3.0
    assert exit_chief(oracle)


def test_a_tuner_stopped_between_trials_asks_for_no_other():
    import types

    import tensorflow as tf

    from pipeline.training.preemption import StopSignal
    from tuning.tuner import PipelineTuner

    stop = StopSignal()  # Not installed: the test raises its flag.
    tuner = types.SimpleNamespace(stop=stop, strategy=tf.distribute.get_strategy())
    PipelineTuner.pre_create_trial(tuner)
    stop.received = int(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM after its last trial ended") as stopped:
        PipelineTuner.pre_create_trial(tuner)
    assert stopped.value.exit_code == 143


def test_the_chief_knows_the_tuners_it_waits_for(monkeypatch):
    monkeypatch.setenv("FMNIST_SEARCH_TUNERS", "tuner1,tuner2")
    assert chief.expected_tuners() == {"tuner1", "tuner2"}
    monkeypatch.delenv("FMNIST_SEARCH_TUNERS")
    assert chief.expected_tuners() == set()


def test_the_chief_of_a_launched_search_leaves_the_gpus_to_its_tuners(monkeypatch):
    import tensorflow as tf

    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    growing, visible = [], []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, on: growing.append((gpu.name, on)))
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda devices, kind=None: visible.append((devices, kind)))
    # It retrains the best at the end: it keeps the GPUs and takes memory only as it needs it.
    chief.leave_gpus_to_tuners(retrains=True)
    assert growing == [(gpu.name, True) for gpu in gpus] and visible == []
    # It never trains: it hides them, so it opens no CUDA context there.
    growing.clear()
    chief.leave_gpus_to_tuners(retrains=False)
    assert visible == [([], "GPU")] and growing == []


@pytest.mark.parametrize("distributed", [True, False])
def test_a_distributed_chief_makes_its_strategy_only_to_retrain(monkeypatch, tmp_path, distributed):
    # A strategy initialises every GPU the process sees: the chief of a
    # distributed search trains no trial, and its tuners' GPUs stay theirs while they search.
    import types

    from pipeline import config as config_lib
    from pipeline import presets
    from tuning import search
    from tuning.oracle import TuneConfig

    if distributed:
        monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    else:
        for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
            monkeypatch.delenv(name, raising=False)
    base = presets.preset("smoke").replace(data=config_lib.DataConfig(validation_size=64))
    events = []
    best_trial = types.SimpleNamespace(score=0.9, trial_id="00", hyperparameters=None)
    oracle = types.SimpleNamespace(trials={}, get_best_trials=lambda n: [best_trial])
    tuner = types.SimpleNamespace(oracle=oracle, search=lambda: events.append("search"))

    def build_tuner(directory, base, tune, strategy, stop):
        events.append(("tuner", strategy))
        return tuner

    def make_strategy():
        events.append("strategy made")
        return "the strategy"

    monkeypatch.setattr(search, "build_tuner", build_tuner)
    monkeypatch.setattr(search, "write_results", lambda directory, tuner, base, tune, trial: base)
    monkeypatch.setattr(search, "describe_searched", lambda hp: "")
    monkeypatch.setattr(search, "train_and_evaluate", lambda c, d, strategy, stop: events.append(("retrain", strategy)))
    search.run_search(tmp_path, base, TuneConfig(tuner="random", max_trials=1), make_strategy, retrain_best=True)
    if distributed:
        assert events == [("tuner", None), "search", "strategy made", ("retrain", "the strategy")]
    else:  # Its own trials and the retrain share one strategy.
        assert events == ["strategy made", ("tuner", "the strategy"), "search", ("retrain", "the strategy")]
