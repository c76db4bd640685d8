"""Comparison 6: two local workers (MultiWorkerMirroredStrategy) against one process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _epoch_rate(command: list[str], workdir: Path, examples: int) -> float:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = json.loads((workdir / "history.json").read_text())
    # Epoch 1 includes tracing; later epochs are the steady state.
    steady = history[1:] or history
    return examples / min(h["seconds"] for h in steady)


def two_workers_vs_one(data_dir: str, quick: bool) -> list[dict]:
    """Examples/s of the same global batch on one process and on two workers, alternating."""
    examples = 4096 if quick else 16384
    common = [
        "--preset=default",
        f"--data_dir={data_dir}",
        f"--max_train_examples={examples}",
        "--epochs=3",
        "--noexport",
        "--noreport",
        "--global_batch_size=128",
    ]
    rates = {"one process": [], "two workers (127.0.0.1)": []}
    for _ in range(1 if quick else 2):
        for name in rates:
            workdir = Path(tempfile.mkdtemp(prefix="fmnist-bench-"))
            # The running interpreter, not whatever `fmnist-train` is first on PATH.
            train = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", *common]
            command = (
                train
                if name == "one process"
                else [sys.executable, "-m", "launch.launch", "--num_workers=2", "--", *train]
            )
            rates[name].append(_epoch_rate(command, workdir, examples // 128 * 128))
    base = max(rates["one process"])
    return [{"setup": k, "examples/s": max(v), "vs one process": max(v) / base} for k, v in rates.items()]
