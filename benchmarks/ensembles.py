"""Averaging finished runs on validation: how much of each run's error the others share.

Averaging the predictions of independently trained networks is the standard
way to buy accuracy with more compute. It can only fix the images the
networks disagree on, so the table also counts the validation errors every
run makes (no average of these runs fixes them) and those any run makes.
Each run is scored as it is served (float32, its test-time views).

  python -m benchmarks.run --ensemble_runs=fast=runs/fast_s0,fast=runs/fast_s1 --nothroughput ...
"""

from __future__ import annotations

import collections
import statistics
from pathlib import Path

import numpy as np

from benchmarks import seeds as seeds_lib

_CONFUSIONS = 4  # The commonest (label, prediction) pairs among the errors every run makes.


def _served_probabilities(workdir: Path, data_dir: str | None):
    """(run config, validation labels, [N, 10] served probabilities) of one finished run."""
    from pipeline import config_files
    from pipeline.runs import final_model

    config = config_files.load_run_config(workdir / "config.json")
    validation = seeds_lib.validation_split(workdir, config, data_dir)
    model = final_model.load_final_model(workdir, config)
    return config, validation.labels.astype(np.int64), final_model.predict_probabilities(model, validation.images)


def ensemble_row(
    name: str, probabilities: list[np.ndarray], labels: np.ndarray, seeds: list[int], class_names: tuple[str, ...]
) -> dict:
    """One group's row: each run's accuracy and errors, their average's, and the errors they share.

    Args:
      name: the group's name.
      probabilities: one [N, classes] array per run, all on the same images.
      labels: [N] class ids.
      seeds: each run's seed, in the order of `probabilities`.
      class_names: the name of each class id.
    """
    wrong = [p.argmax(axis=1) != labels for p in probabilities]
    each = [100 * (1 - float(w.mean())) for w in wrong]
    predicted = np.mean(probabilities, axis=0).argmax(axis=1)
    averaged = 100 * float(np.mean(predicted == labels))
    shared = np.logical_and.reduce(wrong)
    confusions = collections.Counter(zip(labels[shared], predicted[shared], strict=True)).most_common(_CONFUSIONS)
    return {
        "runs": name,
        "seeds": ",".join(str(seed) for seed in seeds),
        "val as served, each (%)": ", ".join(f"{value:.2f}" for value in each),
        "val as served, median (%)": statistics.median(each),
        "val, runs averaged (%)": averaged,
        "averaged vs median (points)": averaged - statistics.median(each),
        "errors, each": ", ".join(str(int(w.sum())) for w in wrong),
        "errors every run makes": int(shared.sum()),
        "errors any run makes": int(np.logical_or.reduce(wrong).sum()),
        f"commonest errors every run makes (label as averaged prediction), top {_CONFUSIONS}": ", ".join(
            f"{class_names[label]} as {class_names[guess]} {count}" for (label, guess), count in confusions
        ),
        "validation images": len(labels),
    }


def ensemble_rows(groups: dict[str, list[str]], data_dir: str | None) -> list[dict]:
    """One row per named group of finished runs (two or more, on the same validation split).

    Raises:
      ValueError: a group's runs hold out different validation images.
    """
    from pipeline.data import sources

    rows = []
    for name, workdirs in groups.items():
        runs = [_served_probabilities(Path(workdir), data_dir) for workdir in workdirs]
        splits = {(r[0].data.validation_size, r[0].data.split_seed, r[0].data.order) for r in runs}
        if len(splits) > 1 or any(not np.array_equal(r[1], runs[0][1]) for r in runs):
            raise ValueError(
                f"--ensemble_runs: the runs of {name} hold out different validation images; "
                "name runs with the same data settings"
            )
        seeds = [r[0].train.seed for r in runs]
        rows.append(ensemble_row(name, [r[2] for r in runs], runs[0][1], seeds, sources.CLASS_NAMES))
    return rows
