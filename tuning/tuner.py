"""KerasTuner search over the project's own training path; the result is a config.

Trials train with `pipeline.loop.fit` (our tf.data pipeline, custom
distributed step, checkpoints) under the strategy passed in, so a trial on a
multi-GPU host mirrors across its GPUs. The objective is validation accuracy
on the validation split; the test set is never touched here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import time
from pathlib import Path

import keras_tuner as kt
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.data import input_pipeline as ip
from pipeline.data import sources as data_lib
from pipeline.model import network as models
from pipeline.runs import final_model
from pipeline.runs import workdir as workdir_lib
from pipeline.training import loop, precision, restore
from pipeline.training import optimizer as optimizer_lib
from pipeline.training import state as train_state
from tuning import chief, search_space
from tuning.budget import BudgetClock
from tuning.oracle import OBJECTIVE, STOPPED, TuneConfig, make_oracle

log = logging.getLogger(__name__)


class PipelineHyperModel(kt.HyperModel):
    """The search space as a KerasTuner HyperModel: `hp` to a Config to a Keras model.

    `declare_hyperparameters` registers the whole space before the first
    trial (there is no `fit` call for KerasTuner to discover it from), so
    every oracle samples it from trial one.
    """

    def __init__(self, base: config_lib.Config, search: tuple[str, ...]):
        super().__init__(name="fmnist_cnn")
        self.base, self.search = base, search

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        search_space.config_from_hp(hp, self.base, self.search)

    def config(self, hp: kt.HyperParameters) -> config_lib.Config:
        """The trial's config: the hyperparameters mapped onto the base config."""
        return search_space.config_from_hp(hp, self.base, self.search)

    def build(self, hp: kt.HyperParameters):
        return models.build_model(self.config(hp).model)


class PipelineTuner(kt.Tuner):
    """Runs each trial through the project's training loop instead of `model.fit`."""

    def __init__(self, oracle, base: config_lib.Config, tune: TuneConfig, strategy, dataset, stop=None, **kwargs):
        # A stop signal saves the running trial's step and ends the search (`TrainingStopped`).
        self.tune, self.strategy, self.dataset, self.stop = tune, strategy, dataset, stop
        super().__init__(oracle, hypermodel=PipelineHyperModel(base, tune.search), **kwargs)

    def search(self, *fit_args, **fit_kwargs):
        if not chief.is_distributed_chief():
            return super().search(*fit_args, **fit_kwargs)
        # Imported here, as KerasTuner does: only a distributed chief needs gRPC.
        from keras_tuner.src.distribute import oracle_chief

        # Every tuner launched must hear that the search is over before the chief ends.
        expected = chief.expected_tuners()
        self.oracle.tuner_ids.update(expected)
        # Knowing every tuner, the chief sees the end (KerasTuner's own test of it) as the last one is told;
        # without, KerasTuner's own end holds.
        over = functools.partial(oracle_chief.exit_chief, self.oracle) if expected else None
        # A stopped tuner never asks the chief for another trial: the chief ends on its own stop.
        chief.serve(lambda: super(PipelineTuner, self).search(*fit_args, **fit_kwargs), self.stop, over=over)

    def pre_create_trial(self):
        # A stop between trials ends the search before it asks for another
        # (or, waiting for one, asks again), as it would end a trial.
        if self.stop is not None:
            self.stop.check(self.strategy, "its last trial ended", collective=False)

    def trial_config(self, hp: kt.HyperParameters) -> config_lib.Config:
        """The config a trial trains: the mapped hp with the trial's epoch budget."""
        config = self.hypermodel.config(hp)
        epochs = hp.values["tuner/epochs"] if "tuner/epochs" in hp.values else self.tune.max_epochs
        return config.replace(train=dataclasses.replace(config.train, epochs=epochs))

    def save(self):
        # Written whole and renamed into place, as the oracle's files are (`oracle._budgeted`).
        if not self._is_worker():
            self.oracle.save()
        workdir_lib.write_json(Path(self._get_tuner_fname()), self.get_state())

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        # KerasTuner writes the tuner's state file only as a trial ends, and a
        # rerun reloads the search only when that file exists: a search stopped
        # in its first trial would start afresh and give the stopped trial's id,
        # and its checkpoints, to new hyperparameters.
        self.save()
        values = trial.hyperparameters.values
        shown = describe_searched(trial.hyperparameters)
        epochs = self.trial_config(trial.hyperparameters).train.epochs
        after = f", continuing trial {values['tuner/trial_id']}" if values.get("tuner/trial_id") else ""
        log.info("trial %s: up to epoch %d%s; %s", trial.trial_id, epochs, after, shown)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        ended = self.oracle.get_trial(trial.trial_id)
        best = [t for t in self.oracle.get_best_trials(1) if t.score is not None]
        score = "no score" if ended.score is None else f"val accuracy {ended.score:.4f}"
        leader = f"; best so far {best[0].score:.4f} (trial {best[0].trial_id})" if best else ""
        log.info("trial %s %s: %s%s", trial.trial_id, ended.status.lower(), score, leader)

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        config = self.trial_config(hp)
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        policy = precision.resolve_precision(config.train.precision)
        steps_per_epoch = ip.steps_per_epoch(len(self.dataset.train), config.train.global_batch_size)
        state = train_state.build_state(
            config, self.strategy, policy, steps_per_epoch, trial_dir, self.dataset.train.images
        )
        restored = restore.restore(state, trial_dir, self.strategy, steps_per_epoch) or int(state.epoch_step.numpy())
        if not restored and "tuner/trial_id" in hp.values:
            self._warm_start(state, hp.values["tuner/trial_id"], hp.values["tuner/initial_epoch"], steps_per_epoch)
        started = time.time()

        def report(record) -> bool:
            # Every metric goes in here: once the objective has been reported,
            # KerasTuner ignores the dict run_trial returns.
            metrics = {
                "val_accuracy": record["val_accuracy"],
                "epochs": float(record["epoch"]),
                "seconds": time.time() - started,
            }
            reply = self.oracle.update_trial(trial.trial_id, metrics, step=record["epoch"])
            # The oracle (the chief's, in a distributed search) keeps the time budget.
            if reply.status == STOPPED and record["epoch"] < config.train.epochs:
                log.info("trial %s: the time budget is spent; it ends after epoch %d", trial.trial_id, record["epoch"])
            return reply.status == STOPPED

        history = loop.fit(
            config,
            self.strategy,
            state,
            self.dataset,
            [],
            trial_dir,
            progress=False,
            on_epoch_end=report,
            stop=self.stop,
        )
        final_model.save_final_model(state.model, trial_dir)
        if not history and not self.oracle.get_trial(trial.trial_id).metrics.exists(OBJECTIVE.name):
            # Restored past its last epoch, whose report a kill interrupted: no score, rather than 0.
            raise kt.errors.FailedTrialError("the trial trained no epoch and has no reported score")
        best = max((h["val_accuracy"] for h in history), default=0.0)
        return {"val_accuracy": best, "epochs": float(len(history)), "seconds": time.time() - started}

    def _warm_start(self, state, previous_trial: str, initial_epoch: int, steps_per_epoch: int) -> None:
        # Hyperband continues a promising trial: start from its final weights.
        latest = tf.train.latest_checkpoint(Path(self.get_trial_dir(previous_trial)) / final_model.FINAL_DIR)
        if latest:
            final_model.weights_checkpoint(state.model).restore(latest).expect_partial()
            state.epoch.assign(initial_epoch)
            state.optimizer.iterations.assign(initial_epoch * steps_per_epoch)
            optimizer_lib.start_average_at(state.optimizer, state.model.trainable_variables)


def describe_searched(hp: kt.HyperParameters) -> str:
    """A trial's searched values, `name=value` each: neither those fixed at the base config nor Hyperband's own."""
    fixed = {p.name for p in hp.space if isinstance(p, kt.engine.hyperparameters.Fixed)}
    searched = {k: v for k, v in hp.values.items() if k not in fixed and not k.startswith("tuner/")}
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in searched.items())


def describe_search(base: config_lib.Config, tune: TuneConfig) -> str:
    """One line saying what a search will run: the groups, the trials and their epochs, the budget."""

    def epochs(n: int) -> str:
        return f"{n} epoch{'s' * (n != 1)}"

    if tune.tuner == "hyperband":
        trials = f"Hyperband's brackets of trials, up to {epochs(tune.max_epochs)} each (--max_epochs)"
    else:
        trials = f"up to {tune.max_trials} trials (--max_trials) of {epochs(tune.max_epochs)} each (--max_epochs)"
    budget = tune.time_budget_seconds
    budget = f"; no trial or epoch starts after {budget:g} s in all (--time_budget)" if budget else ""
    return (
        f"{tune.tuner} search of {','.join(tune.search)} around {base.name!r}: {trials}, scored by validation "
        f"accuracy{budget}; the best config is written with {epochs(base.train.epochs)} (--epochs)"
    )


def build_tuner(directory: Path, base: config_lib.Config, tune: TuneConfig, strategy, stop=None) -> PipelineTuner:
    """Creates (or reloads, to resume) the tuner whose state lives in DIRECTORY/search."""
    dataset = data_lib.load(base.data)
    # KerasTuner prints its own line when it reloads a search; `run_search` says so in ours.
    with contextlib.redirect_stdout(io.StringIO()):
        return PipelineTuner(
            make_oracle(tune, BudgetClock(directory, tune.time_budget_seconds)),
            base,
            tune,
            strategy,
            dataset,
            stop=stop,
            directory=str(directory),
            project_name="search",
            overwrite=False,
        )
