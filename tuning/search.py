"""`run_search`: the one library call behind `fmnist-tune`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import config as config_lib
from pipeline import config_files
from pipeline.runs import workdir as workdir_lib
from pipeline.runs.lock import WorkdirLock
from pipeline.training.driver import train_and_evaluate
from pipeline.training.preemption import StopSignal
from tuning import chief as chief_lib
from tuning import results
from tuning.oracle import TuneConfig
from tuning.tuner import build_tuner, describe_search, describe_searched

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)


def is_tuning_chief() -> bool:
    """KerasTuner's rule: the oracle chief, or a process not in a tuning cluster."""
    return "KERASTUNER_TUNER_ID" not in os.environ or os.environ["KERASTUNER_TUNER_ID"] == "chief"


def _trial_identity(base: config_lib.Config, tune: TuneConfig) -> dict:
    """What the trials depend on; a resumed search must match it.

    Left out, so a rerun may change them: `train.epochs` and
    `model.test_time_augmentation` shape only the retrained run (trials take
    their epochs from the tuner and validate single-view), and the time
    budget and the number of trials may be raised to extend a search
    (KerasTuner keeps neither in the oracle's state, so the rerun's values
    hold). Fields that change nothing in a run are compared as
    `config.as_compared` leaves them.
    """
    neutral = config_lib.Config()
    base = config_lib.as_compared(base)
    base = base.replace(
        train=dataclasses.replace(base.train, epochs=neutral.train.epochs),
        model=dataclasses.replace(base.model, test_time_augmentation=neutral.model.test_time_augmentation),
    )
    return {
        "base": config_files.to_dict(base),
        "tune": config_files.to_dict(
            dataclasses.replace(tune, time_budget_seconds=None, max_trials=TuneConfig().max_trials)
        ),
    }


def _check_same_search(directory: Path, base: config_lib.Config, tune: TuneConfig) -> None:
    path = directory / workdir_lib.KIND_FILES["search"]
    if path.exists():
        recorded = workdir_lib.read_json(path)
        previous = config_files.run_config_from_dict(recorded["base"], where=str(path))
        previous_tune = config_files.from_dict(TuneConfig, recorded["tune"], where=str(path))
        if _trial_identity(previous, previous_tune) != _trial_identity(base, tune):
            raise workdir_lib.WorkdirError(
                f"{directory} holds a different search ({path}); use a new --workdir, or the same flags to resume"
            )
    workdir_lib.write_json(path, {"base": config_files.to_dict(base), "tune": config_files.to_dict(tune)})


def write_results(directory: Path, tuner, base: config_lib.Config, tune: TuneConfig, best_trial) -> config_lib.Config:
    """Writes trials.{csv,md,png}, HParams logs and best_config.json (of `best_trial`); returns the best config."""
    rows = results.trial_rows(tuner.oracle)
    results.write_tables(rows, directory)
    results.plot_trials(rows, directory / "trials.png", best_trial.trial_id)
    results.write_hparams_logs(rows, directory / "tensorboard")
    best = results.best_config(best_trial, base, tune.search)
    config_files.save(best, directory / "best_config.json")
    return best


def set_aside_if_retrained_for_another(run_dir: Path, best: config_lib.Config) -> Path | None:
    """Moves `run_dir` aside when it retrained another config than `best`; returns where it went.

    A search extended after a retrain (more trials, a longer budget) can find
    a new best. The earlier retrained run is kept beside it, never deleted,
    and the new best retrains in `run_dir`; a run of `best` itself stays and resumes.
    """
    if not (run_dir / "config.json").exists():
        return None
    try:
        workdir_lib.check_resume_compatible(run_dir, best)
        return None
    except workdir_lib.WorkdirError:
        pass
    number = 1
    while (kept := run_dir.with_name(f"{run_dir.name}.earlier-{number}")).exists():
        number += 1
    run_dir.rename(kept)
    log.info("the best config changed since %s was retrained: that run is kept in %s", run_dir, kept)
    return kept


def check_base(base: config_lib.Config) -> None:
    """Raises ConfigError when `base` cannot be searched: trials are scored on validation images.

    A final fit (`data.validation_size` 0) holds out none, so there is nothing to choose on.
    """
    if base.data.validation_size == 0:
        raise config_lib.ConfigError(
            f"a search scores its trials on validation images and {base.name!r} holds out none "
            "(data.validation_size 0, a final fit): pass --validation_size=5000"
        )


def run_search(
    directory: str | Path,
    base: config_lib.Config,
    tune: TuneConfig,
    make_strategy: Callable[[], tf.distribute.Strategy],
    retrain_best: bool = False,
    stop: StopSignal | None = None,
) -> dict:
    """Runs (or resumes) a search; the chief writes the results and optionally retrains the best.

    The chief holds the directory's lock; tuner workers share it. A stop
    signal saves the running trial's step and raises `TrainingStopped`; a
    rerun continues that trial where it stopped.

    Args:
      directory: the search directory.
      base: the config the searched groups vary.
      tune: the search algorithm and its budget.
      make_strategy: makes the strategy trials (and the retrain) train
        under. The chief of a distributed search trains no trial, so it makes
        its strategy only to retrain: a strategy initialises every GPU the
        process sees, and those GPUs are its tuners' while they search.
      retrain_best: retrain the best config through `train_and_evaluate`.
      stop: the installed stop signal, if any.

    Returns:
      {"best_config": path, "best_val_accuracy": float, "trials": n} and, with
      `retrain_best`, the retrained run's metrics under "retrained".
    """
    check_base(base)
    directory = Path(directory)
    chief = is_tuning_chief()
    if chief:
        workdir_lib.check_kind(directory, "search", "fmnist-tune")
        workdir_lib.ensure_writable(directory)
    with WorkdirLock(directory) if chief else contextlib.nullcontext():
        if chief:
            _check_same_search(directory, base, tune)
        strategy = None if chief_lib.is_distributed_chief() else make_strategy()
        tuner = build_tuner(directory, base, tune, strategy, stop)
        if chief:
            log.info(describe_search(base, tune))
            if tuner.oracle.trials:
                log.info("resuming the search in %s: %s", directory, results.describe_recorded(tuner.oracle))
        tuner.search()
        if not chief:
            return {}
        scored = [t for t in tuner.oracle.get_best_trials(1) if t.score is not None]
        if not scored:
            raise workdir_lib.WorkdirError(
                f"no trial in {directory} has a score: the time budget ran out before any finished an epoch, or "
                "every trial failed (their search/trial_*/trial.json say why); raise --time_budget and rerun"
            )
        (best_trial,) = scored
        best = write_results(directory, tuner, base, tune, best_trial)
        summary = {
            "best_config": str(directory / "best_config.json"),
            "best_val_accuracy": best_trial.score,
            "trials": len(tuner.oracle.trials),
        }
        log.info(
            "best trial %s: val accuracy %.4f; %s; %s trains it for %d epoch%s",
            best_trial.trial_id,
            best_trial.score,
            describe_searched(best_trial.hyperparameters),
            summary["best_config"],
            best.train.epochs,
            "" if best.train.epochs == 1 else "s",
        )
        if retrain_best:
            set_aside_if_retrained_for_another(directory / "best_run", best)
            summary["retrained"] = train_and_evaluate(
                best, directory / "best_run", make_strategy() if strategy is None else strategy, stop=stop
            )
        workdir_lib.write_json(directory / "summary.json", summary)
        return summary
