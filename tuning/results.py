"""What a search leaves for a person: trials table, plots, HParams logs, best config."""

from __future__ import annotations

import collections
import csv
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorboard.plugins.hparams import api as hparams_api  # noqa: E402

from pipeline import config as config_lib  # noqa: E402
from tuning import search_space  # noqa: E402

MAIN_HYPERPARAMETERS = (
    "filters_0",
    "filters_1",
    "filters_2",
    "kernel_size",
    "dropout_rate",
    "learning_rate",
    "weight_decay",
    "dense_units",
    "augment_shift",
)
# Searched on a log scale (`search_space`), so plotted on one.
LOG_SCALE = ("learning_rate", "weight_decay")
COLUMNS = 4  # Panels per row of trials.png.


def _id_order(trial) -> tuple:
    # The order the ids count: KerasTuner pads them to the digits of
    # `max_trials`, which an extended search raises ("8", then "09", "10").
    return (0, int(trial.trial_id), "") if trial.trial_id.isdigit() else (1, 0, trial.trial_id)


def describe_recorded(oracle) -> str:
    """The oracle's trials by status, e.g. "3 trials recorded (2 completed, 1 running)"."""
    counts = collections.Counter(str(trial.status).lower() for trial in oracle.trials.values())
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    total = len(oracle.trials)
    return f"{total} trial{'' if total == 1 else 's'} recorded ({statuses})"


def trial_rows(oracle) -> list[dict]:
    """One row per finished trial: id, status, objective, epochs, seconds, hyperparameters."""
    rows = []
    for trial in sorted(oracle.trials.values(), key=_id_order):
        metrics = trial.metrics
        row = {
            "trial_id": trial.trial_id,
            "status": trial.status,
            "val_accuracy": trial.score,
            "epochs": int(metrics.get_last_value("epochs")) if metrics.exists("epochs") else None,
            "seconds": round(metrics.get_last_value("seconds"), 1) if metrics.exists("seconds") else None,
        }
        row.update({k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")})
        rows.append(row)
    return rows


def write_tables(rows: list[dict], directory: Path) -> None:
    """trials.csv and trials.md, best first."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    ordered = sorted(rows, key=lambda r: -(r["val_accuracy"] or 0.0))
    with (directory / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(ordered)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in ordered:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    (directory / "trials.md").write_text("\n".join(lines) + "\n")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _plotted(row: dict, name: str):
    """The value of hyperparameter `name` in `row` as its panel shows it: a trial without dropout at rate 0."""
    if name == "dropout_rate" and row.get("dropout") is False:
        return 0.0
    return row.get(name)


def plot_trials(rows: list[dict], path: Path, best_id: str | None = None) -> None:
    """Validation accuracy per trial, and against each main hyperparameter, coloured by epochs trained.

    Hyperband's trials train for different numbers of epochs, and a short
    trial scores lower for its length alone, so each length has its colour.
    The best trial (`best_id`, the oracle's) is starred in every panel.
    """
    done = [r for r in rows if r["val_accuracy"] is not None]
    names = [n for n in MAIN_HYPERPARAMETERS if len({_plotted(r, n) for r in done} - {None}) > 1]
    panels = 1 + len(names)
    columns = min(panels, COLUMNS)
    grid = (-(-panels // columns), columns)
    fig, axes = plt.subplots(*grid, figsize=(4 * columns, 3.4 * grid[0]), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    per_trial, by_name = axes.flat[0], dict(zip(names, axes.flat[1:panels], strict=True))
    lengths = sorted({r["epochs"] for r in done}, key=lambda e: e or 0)
    for colour, length in enumerate(lengths):
        trials = [(i, r) for i, r in enumerate(done) if r["epochs"] == length]
        style = dict(
            linestyle="none", marker="o", alpha=0.7, color=f"C{colour}", label=f"{length} epoch{'s' * (length != 1)}"
        )
        per_trial.plot([i for i, _ in trials], [r["val_accuracy"] for _, r in trials], **style)
        for name, ax in by_name.items():
            points = [(_plotted(r, name), r["val_accuracy"]) for _, r in trials if _plotted(r, name) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], **style)
    for best_index, best in [(i, r) for i, r in enumerate(done) if r["trial_id"] == best_id]:
        label = f"best (trial {best['trial_id']})"
        star = dict(marker="*", markersize=14, color="black", linestyle="none", label=label)
        per_trial.plot([best_index], [best["val_accuracy"]], **star)
        for name, ax in by_name.items():
            if _plotted(best, name) is not None:
                ax.plot([_plotted(best, name)], [best["val_accuracy"]], **star)
    per_trial.set(xlabel="trial (in the order of their ids)", ylabel="validation accuracy", title="per trial")
    per_trial.legend(fontsize=8)
    per_trial.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for name, ax in by_name.items():
        ax.set(xlabel=f"{name} (0: no dropout)" if name == "dropout_rate" else name, title=f"by {name}")
        if name in LOG_SCALE:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # Decades only: no crowded labels.
    for ax in axes.flat[:panels]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_hparams_logs(rows: list[dict], directory: Path) -> None:
    """One TensorBoard run per trial for the HParams dashboard."""
    for row in rows:
        if row["val_accuracy"] is None:
            continue
        values = {k: v for k, v in row.items() if k not in ("trial_id", "status", "val_accuracy", "epochs", "seconds")}
        with tf.summary.create_file_writer(str(directory / f"trial_{row['trial_id']}")).as_default():
            hparams_api.hparams(values, trial_id=str(row["trial_id"]))
            tf.summary.scalar("val_accuracy", row["val_accuracy"], step=row["epochs"] or 0)


def best_config(best, base: config_lib.Config, search) -> config_lib.Config:
    """The config of trial `best`, with the base's full training length (trials are short)."""
    config = search_space.config_from_hp(best.hyperparameters, base, search)
    return config.replace(name=f"tuned-{base.name}", train=dataclasses.replace(config.train, epochs=base.train.epochs))
