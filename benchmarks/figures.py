"""The record's figure: each recipe's seeds, test accuracy as served against training time, per machine.

Drawn from the recipe sections of `benchmarks/results.json` (`recipe_seeds*`), measuring nothing. A
recipe measured in several sections on one machine is drawn from its newest, as the README's table is.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import record as record_lib

ACCURACY = "test as served (%)"
SECONDS = "train seconds"
# One colour per recipe, in the order the README lists them.
COLOURS = {"seed": "tab:gray", "reference": "tab:blue", "fast": "tab:orange", "default": "tab:green", "best": "tab:red"}


def newest_runs(record: dict) -> dict[str, dict[str, list[dict]]]:
    """{machine: {recipe: that recipe's seed rows from its newest section on that machine}}.

    Among sections measured on the same day, the one with the most seeds of
    the recipe wins, then the later in the record's order (a recipe's own
    section, `recipe_seeds_fast`, over the one measuring every recipe).
    """
    rank = {key: i for i, key in enumerate(record_lib.ORDER)}
    best: dict[tuple[str, str], tuple[tuple, list[dict]]] = {}
    for key, section in record["sections"].items():
        if not record_lib.base_key(key).startswith("recipe_seeds") or section.get("quick"):
            continue
        by_recipe: dict[str, list[dict]] = {}
        for row in section["rows"]:
            if isinstance(row.get(ACCURACY), (int, float)) and isinstance(row.get(SECONDS), (int, float)):
                by_recipe.setdefault(row["recipe"], []).append(row)
        machine = record_lib.processor(section["machine"])
        for recipe, rows in by_recipe.items():
            preference = (section["measured"], len(rows), rank.get(record_lib.base_key(key), len(rank)))
            if (machine, recipe) not in best or preference > best[machine, recipe][0]:
                best[machine, recipe] = (preference, rows)
    runs: dict[str, dict[str, list[dict]]] = {}
    for (machine, recipe), (_, rows) in best.items():
        runs.setdefault(machine, {})[recipe] = rows
    return runs


def draw_recipes(record: dict, path: Path) -> Path | None:
    """Writes the figure to `path` (PNG); None, and nothing written, when the record has no recipe runs."""
    runs = newest_runs(record)
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), sharey=True, squeeze=False)
    for ax, (machine, recipes) in zip(axes[0], sorted(runs.items()), strict=True):
        for recipe, rows in sorted(
            recipes.items(), key=lambda item: list(COLOURS).index(item[0]) if item[0] in COLOURS else 99
        ):
            seconds = [row[SECONDS] for row in rows]
            accuracy = [row[ACCURACY] for row in rows]
            colour = COLOURS.get(recipe, "black")
            ax.scatter(seconds, accuracy, color=colour, s=28, alpha=0.8, label=f"{recipe} ({len(rows)} seeds)")
            ax.annotate(recipe, (max(seconds), max(accuracy)), textcoords="offset points", xytext=(6, 2), fontsize=9)
        ax.set_xscale("log")
        ax.set_title(machine, fontsize=10)
        ax.set_xlabel("training seconds (log scale; 2 cores)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("test accuracy as served (%)")
    fig.suptitle("Each seed of each recipe: test accuracy against training time", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
