"""The search's oracle: KerasTuner's own, keeping one time budget and writing its state safely.

`TuneConfig` says which oracle and how far it searches; `make_oracle`
builds it. The oracle runs in the chief (or the single process) and is the
only clock a search obeys.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Literal

import keras_tuner as kt

from pipeline.runs import workdir as workdir_lib
from tuning import search_space
from tuning.budget import BudgetClock

log = logging.getLogger(__name__)
OBJECTIVE = kt.Objective("val_accuracy", direction="max")
STOPPED = kt.engine.trial.TrialStatus.STOPPED


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The search itself; saved with its base config in DIR/search_config.json."""

    tuner: Literal["hyperband", "bayesian", "random"] = "hyperband"
    max_trials: int = 30  # Bayesian and random; Hyperband derives its own count.
    max_epochs: int = 12  # Epochs of a full trial (Hyperband's largest bracket).
    hyperband_factor: int = 3
    # Wall-clock seconds for the whole search, across resumes (tuning/budget.py):
    # no new trial or epoch starts after it.
    time_budget_seconds: float | None = None
    search: tuple[str, ...] = search_space.GROUPS
    seed: int = 0


def _budgeted(oracle_class):
    """An oracle subclass that keeps the search's time budget: the only clock a search obeys.

    The oracle runs in the chief (or the single process), so it alone keeps
    the budget's accounts: every reported epoch updates DIR/budget.json. Each
    tuner process started at its own moment, so a clock of their own would
    disagree with the chief's; instead the oracle answers a tuner's epoch
    report with STOPPED once the budget is spent (`PipelineTuner.run_trial`
    then ends the trial after that epoch), and hands out no trial after it.
    """

    class BudgetedOracle(oracle_class):
        clock: BudgetClock | None = None

        # KerasTuner writes its state files in place, so a search killed
        # mid-write leaves an empty oracle.json or trial.json that its resume
        # cannot read. Ours are written whole and renamed into place.
        def save(self):
            workdir_lib.write_json(Path(self._get_oracle_fname()), self.get_state())

        def _save_trial(self, trial):
            workdir_lib.write_json(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", trial.get_state())

        @kt.synchronized
        def end_trial(self, trial):
            super().end_trial(trial)
            # KerasTuner writes its state before it drops the trial from the
            # running ones; a search resumed from that state (a requeued
            # distributed search) would send the finished trial out again.
            self.save()

        def budget_spent(self) -> bool:
            deadline = self.clock.deadline()
            return deadline is not None and time.time() > deadline

        def create_trial(self, tuner_id):
            # Before KerasTuner's own choice, which hands out a trial queued for
            # retry (one a stopped search was running) without asking
            # `populate_space`. A tuner's own ongoing trial is its to finish.
            if tuner_id not in self.ongoing_trials and self.budget_spent():
                log.info("time budget reached: no new trials")
                self.tuner_ids.discard(tuner_id)  # As KerasTuner does for a stopped tuner: the chief may exit.
                return kt.engine.trial.Trial(self.get_space(), trial_id=str(len(self.trials)), status=STOPPED)
            return super().create_trial(tuner_id)

        def get_best_trials(self, num_trials=1):
            # Ties go to the trial that started first. KerasTuner keeps the
            # order of `self.trials`, which a resumed search fills in the order
            # the trial files are found, so a rerun could name another best
            # (and `--retrain_best` retrain it).
            started = {trial_id: i for i, trial_id in enumerate(self.start_order)}
            trials = list(self.trials.values())
            scored = [t for t in trials if t.status == kt.engine.trial.TrialStatus.COMPLETED and t.score is not None]
            scored.sort(key=lambda t: (-t.score, started.get(t.trial_id, len(started)), t.trial_id))
            return (scored + [t for t in trials if t not in scored])[:num_trials]

        def update_trial(self, trial_id, metrics, step=0):
            self.clock.record()
            trial = super().update_trial(trial_id, metrics, step=step)
            if not self.budget_spent():
                return trial
            # A copy says STOPPED to the tuner; the oracle's own record stays
            # RUNNING until the tuner ends the trial with its score.
            return kt.engine.trial.Trial(trial.hyperparameters, trial_id=trial.trial_id, status=STOPPED)

    return BudgetedOracle


def make_oracle(tune: TuneConfig, clock: BudgetClock):
    """The KerasTuner oracle for `tune.tuner`, with the time budget applied."""
    # KerasTuner's oracles take a seed of 0 for none and draw a random one, so
    # a search with the default seed would not repeat: every seed is shifted by one.
    seed = tune.seed + 1
    if tune.tuner == "hyperband":
        oracle = _budgeted(kt.oracles.HyperbandOracle)(
            OBJECTIVE, max_epochs=tune.max_epochs, factor=tune.hyperband_factor, seed=seed
        )
    elif tune.tuner == "bayesian":
        oracle = _budgeted(kt.oracles.BayesianOptimizationOracle)(OBJECTIVE, max_trials=tune.max_trials, seed=seed)
    else:
        oracle = _budgeted(kt.oracles.RandomSearchOracle)(OBJECTIVE, max_trials=tune.max_trials, seed=seed)
    oracle.clock = clock
    # Each tuner says what its trials do (`PipelineTuner.on_trial_begin`), in
    # the trial ids of the results; KerasTuner's display counts from 1.
    oracle.verbose = 0
    return oracle
