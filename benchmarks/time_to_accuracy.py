"""Wall seconds until validation accuracy first reaches each threshold."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import seeds

THRESHOLDS = (0.906, 0.92, 0.93)


def time_to_accuracy(workdirs: dict[str, Path]) -> list[dict]:
    """Reads each finished run's history.json (cumulative epoch seconds)."""
    rows = []
    for name, workdir in workdirs.items():
        history = json.loads((Path(workdir) / "history.json").read_text())
        row = {"run": name}
        for threshold in THRESHOLDS:
            if not seeds.validated(history):
                row[f"to {threshold:.1%}"] = seeds.NO_VALIDATION
                continue
            hit = next((h for h in history if h["val_accuracy"] >= threshold), None)
            row[f"to {threshold:.1%}"] = f"{hit['elapsed_seconds']:.0f}s (epoch {hit['epoch']})" if hit else "never"
        rows.append(row)
    return rows
