"""Wall seconds until validation accuracy first reaches each threshold."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import seeds
from pipeline.runs.workdir import validated

THRESHOLDS = (0.906, 0.92, 0.93)


def time_to_accuracy(workdirs: dict[str, Path]) -> list[dict]:
    """Reads each finished run's history.json (cumulative epoch seconds)."""
    rows = []
    for name, workdir in workdirs.items():
        history = json.loads((Path(workdir) / "history.json").read_text())
        held_out, row = validated(history), {"run": name}
        unreached = "never" if held_out else seeds.NO_VALIDATION
        for threshold in THRESHOLDS:
            hit = next((h for h in history if h["val_accuracy"] >= threshold), None) if held_out else None
            row[f"to {threshold:.1%}"] = f"{hit['elapsed_seconds']:.0f}s (epoch {hit['epoch']})" if hit else unreached
        rows.append(row)
    return rows
