"""A wall-clock search budget that survives interruptions.

`--time_budget` is the whole search's budget, not each process's: a search
killed after 50 of 60 minutes and rerun gets 10 more minutes, not 60.
DIR/budget.json holds the seconds already spent; each finished epoch updates
it, so a kill -9 loses at most one epoch of accounting.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.runs import workdir as workdir_lib

BUDGET_FILE = "budget.json"


class BudgetClock:
    """Counts search seconds across runs of the same search directory."""

    def __init__(self, directory: Path, budget_seconds: float | None):
        self.path = Path(directory) / BUDGET_FILE
        self.budget_seconds = budget_seconds
        self.spent_before = workdir_lib.read_json(self.path)["spent_seconds"] if self.path.exists() else 0.0
        self.started = time.time()

    def spent(self) -> float:
        """Seconds spent by this search so far, earlier runs included."""
        return self.spent_before + time.time() - self.started

    def deadline(self) -> float | None:
        """The `time.time()` after which no new trial or epoch starts; None without a budget."""
        if self.budget_seconds is None:
            return None
        return self.started + self.budget_seconds - self.spent_before

    def record(self) -> None:
        """Writes the seconds spent so far (atomically)."""
        workdir_lib.write_json(self.path, {"spent_seconds": self.spent()})
