"""The record's figure: each recipe's seeds, test accuracy as served against training time, per machine.

Drawn from the rows `benchmarks.record.newest_recipe_runs` picks from `benchmarks/results.json`,
measuring nothing.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

# The recipe rows' columns the figure plots.
ACCURACY = "test as served (%)"
SECONDS = "train seconds"
# One colour per recipe, in the order the README lists them.
COLOURS = {"seed": "tab:gray", "reference": "tab:blue", "fast": "tab:orange", "default": "tab:green", "best": "tab:red"}


def draw_recipes(runs: dict[str, dict[str, list[dict]]], path: Path) -> Path | None:
    """Writes the figure of {machine: {recipe: seed rows}} to `path` (PNG); None, and nothing written, without runs."""
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
        # Long machine names (a processor held with ONEDNN_MAX_CPU_ISA says so) wrap inside their panel.
        ax.set_title("\n".join(textwrap.wrap(machine, 70)), fontsize=10)
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
