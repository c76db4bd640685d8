"""Trials per hour of one tuner against a chief with two tuner workers, same time budget.

Both searches run the same random search of one-epoch trials of the reference
recipe on 16,384 training images; the workers run under
`fmnist-launch --tuner_workers=2`, which gives each its share of the cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.scaling import REFERENCE


def _tune_command(workdir: Path, data_dir: str, budget: int, quick: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "launch.tune",
        f"--workdir={workdir}",
        f"--config={REFERENCE}",
        f"--data_dir={data_dir}",
        "--tuner=random",
        "--max_epochs=1",
        *(["--max_train_examples=512", "--validation_size=128"] if quick else ["--max_train_examples=16384"]),
        f"--time_budget={budget}",
        "--max_trials=100000",  # The budget, not a trial cap, ends both searches.
        "--search_space=filters,dropout,learning_rate",
    ]


def _trials(command: list[str], workdir: Path) -> int:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:6])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads((workdir / "summary.json").read_text())["trials"]


def trials_per_hour(data_dir: str, quick: bool) -> list[dict]:
    """One tuner, then a chief with two tuner workers, each for the same budget; trials completed."""
    budget = 30 if quick else 240
    rows = []
    for name, launch in (
        ("one tuner", []),
        (
            "chief + 2 tuner workers (fmnist-launch --tuner_workers=2)",
            [sys.executable, "-m", "launch.launch", "--tuner_workers=2", "--"],
        ),
    ):
        workdir = Path(tempfile.mkdtemp(prefix="fmnist-tune-rate-")) / "tune"
        trials = _trials([*launch, *_tune_command(workdir, data_dir, budget, quick)], workdir)
        shutil.rmtree(workdir.parent)
        rows.append({"search": name, "budget (s)": budget, "trials": trials, "trials per hour": trials * 3600 / budget})
    for row in rows:
        row["vs one tuner"] = row["trials per hour"] / rows[0]["trials per hour"]
    return rows
