"""A recipe's accuracy across seeds: each seed's row, and the median, min and max per recipe.

One seed is one draw: the same recipe lands a few tenths of a point apart
from seed to seed. So every accuracy the record states for a recipe is a
median over seeds, shown with the lowest and highest seed, and each seed's
own row stays in the record beside it.

The rows come from finished runs, either trained by the benchmark
(`benchmarks.recipes`) or named on the command line
(`python -m benchmarks.run --seed_runs=default=runs/d0,default=runs/d1,...`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pipeline.runs.workdir import validated

TARGET = 0.93
# A final fit (`data.validation_size` 0) has no validation accuracy to time or rank by.
NO_VALIDATION = "n/a (final fit)"


def read_run(workdir: str | Path) -> dict:
    """A finished run's config.json, history.json and metrics.json.

    Raises:
        ValueError: the workdir holds no finished run (the file it lacks is named).
    """
    workdir = Path(workdir)
    run = {}
    for name in ("config", "history", "metrics"):
        path = workdir / f"{name}.json"
        if not path.exists():
            raise ValueError(f"{workdir} holds no finished run ({path.name} is missing); train it to the end first")
        run[name] = json.loads(path.read_text())
    return run


def flat_config(config: dict, prefix: str = "") -> dict:
    """{"section.field": value} of a config dict."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Fields that may differ between the seeds of one recipe: the seed, and where the data was read from.
SEED_ONLY = ("train.seed", "data.data_dir")


def check_same_recipe(name: str, runs: list[dict]) -> None:
    """Raises ValueError unless the runs' configs differ in the seed alone."""
    first = flat_config(runs[0]["config"])
    for run in runs[1:]:
        other = flat_config(run["config"])
        differ = [k for k in sorted(set(first) | set(other)) if k not in SEED_ONLY and first.get(k) != other.get(k)]
        if differ:
            raise ValueError(f"the runs of {name!r} differ in {', '.join(differ)}, not only the seed; name them apart")


def require_held_out(workdir: str | Path, config) -> None:
    """Raises ValueError when the run is a final fit: it holds out no validation images to weigh it on."""
    if config.data.validation_size == 0:
        raise ValueError(
            f"{workdir} is a final fit (data.validation_size 0): it holds out no images to weigh it on; "
            "name runs that hold out a validation split"
        )


def validation_split(workdir: str | Path, config, data_dir: str | None):
    """The validation images a finished run held out, read from `data_dir` if given, else where it read them.

    Raises:
        ValueError: the run is a final fit, which holds out none.
    """
    import dataclasses

    from pipeline.data import sources

    require_held_out(workdir, config)
    data_config = dataclasses.replace(config.data, data_dir=data_dir) if data_dir else config.data
    return sources.load(data_config).validation


def time_to(history: list[dict], target: float) -> tuple[int, float] | None:
    """(epoch, cumulative seconds) of the first epoch whose validation accuracy reaches `target`."""
    hit = next((h for h in history if h["val_accuracy"] >= target), None)
    return (hit["epoch"], hit["elapsed_seconds"]) if hit else None


def run_row(name: str, run: dict, target: float = TARGET) -> dict:
    """One finished run's row: its seed, time to `target` validation accuracy, and its test accuracy."""
    history, metrics = run["history"], run["metrics"]
    held_out = validated(history)
    reached = time_to(history, target) if held_out else None
    unreached = "never" if held_out else NO_VALIDATION
    return {
        "recipe": name,
        "seed": run["config"]["train"]["seed"],
        f"epochs to {target:.0%} val": reached[0] if reached else unreached,
        f"seconds to {target:.0%} val": reached[1] if reached else unreached,
        "best val, single view (%)": (100 * max(h["val_accuracy"] for h in history) if held_out else NO_VALIDATION),
        "test as served (%)": 100 * metrics["test_accuracy"],
        "test single view (%)": 100 * metrics.get("test_accuracy_single_view", metrics["test_accuracy"]),
        "test loss": metrics["test_loss"],
        "gap (points)": 100 * metrics["generalization_gap"],
        "train seconds": metrics["train_seconds"],
        "precision": metrics["precision"],
    }


def spread(values: list[float]) -> str:
    """ "median [min, max]" of accuracies in percent."""
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def _median_or_none(values) -> float | str:
    """The median of the numbers among `values`; `NO_VALIDATION` when none is one (final fits)."""
    numbers = [value for value in values if isinstance(value, float | int)]
    return statistics.median(numbers) if numbers else NO_VALIDATION


def _unreached(validating: list) -> str:
    """What a median time to the target shows when no run reached it: "never", or no validation at all."""
    return "never" if validating else NO_VALIDATION


def summary(rows: list[dict]) -> list[dict]:
    """One row per recipe: medians over its seeds' rows, accuracies with [min, max]."""
    # The rows name their target ("seconds to 93% val"; smoke tests use a lower one).
    seconds_to = next(key for key in rows[0] if key.startswith("seconds to "))
    out = []
    for name in dict.fromkeys(row["recipe"] for row in rows):
        mine = [row for row in rows if row["recipe"] == name]
        entry = {
            "recipe": name,
            "seeds": len(mine),
            "test as served, median [min, max] (%)": spread([r["test as served (%)"] for r in mine]),
            "test single view, median [min, max] (%)": spread([r["test single view (%)"] for r in mine]),
            "best val, median (%)": _median_or_none(r["best val, single view (%)"] for r in mine),
            "train seconds, median": statistics.median(r["train seconds"] for r in mine),
            "precision": ", ".join(sorted({r["precision"] for r in mine})),
        }
        reached = [r[seconds_to] for r in mine if isinstance(r[seconds_to], float | int)]
        validating = [r for r in mine if r[seconds_to] != NO_VALIDATION]
        entry[f"seeds reaching {seconds_to[len('seconds to ') :]}"] = (
            f"{len(reached)}/{len(validating)}" if validating else NO_VALIDATION
        )
        entry[f"{seconds_to}, median"] = statistics.median(reached) if reached else _unreached(validating)
        for column in ("time to target vs reference", "train seconds vs reference"):
            ratios = [r[column] for r in mine if isinstance(r.get(column), float)]
            if ratios:
                entry[f"{column}, median"] = statistics.median(ratios)
            elif any(column in r for r in mine):  # Compared with a reference, but with nothing to time.
                entry[f"{column}, median"] = "n/a"
        out.append(entry)
    return out


def from_workdirs(groups: dict[str, list[str]]) -> tuple[list[dict], list[dict]]:
    """Each seed's row and the per-recipe summary of finished runs, grouped by recipe name.

    Raises:
        ValueError: a workdir holds no finished run, or a group's runs differ in more than the seed.
    """
    rows = []
    for name, workdirs in groups.items():
        runs = [read_run(workdir) for workdir in workdirs]
        check_same_recipe(name, runs)
        rows += [run_row(name, run) | {"workdir": str(workdir)} for run, workdir in zip(runs, workdirs, strict=True)]
    return rows, summary(rows)
