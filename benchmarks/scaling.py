"""Two local workers against one process, where a step's time goes, and predicted scaling.

Every run trains the reference recipe (benchmarks/reference_default.json, the
fixed recipe the comparisons measure against) at the same global batch of 128.
The collectives are timed alone in a two-worker cluster by
`python -m benchmarks.collectives` (started here through fmnist-launch).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REFERENCE = Path(__file__).with_name("reference_default.json")
GLOBAL_BATCH = 128
# Per-message latency assumed for each network in the scaling table: loopback
# latency here says nothing about a real network.
NETWORKS = {
    "10 Gb/s Ethernet (TCP)": (10e9, 50e-6),
    "25 Gb/s Ethernet (TCP)": (25e9, 25e-6),
    "100 Gb/s (RDMA)": (100e9, 5e-6),
}
WORKER_COUNTS = (2, 4, 8, 16, 64)
DEFAULT_SETUP = "two workers as launched by default (pinned, own input, gradients in the recipe's all-reduce dtype)"
GLOBAL_STATISTICS_SETUP = "two workers, global batch-norm statistics"


def _train_command(workdir: Path, data_dir: str, examples: int, *extra: str) -> list[str]:
    # The running interpreter, not whatever `fmnist-train` is first on PATH.
    return [
        sys.executable,
        "-m",
        "launch.train",
        f"--workdir={workdir}",
        f"--config={REFERENCE}",
        f"--data_dir={data_dir}",
        f"--max_train_examples={examples}",
        f"--global_batch_size={GLOBAL_BATCH}",
        "--epochs=3",
        "--noexport",
        "--noreport",
        *extra,
    ]


def _launch(num_workers: int, command: list[str], *launch_flags: str) -> list[str]:
    return [sys.executable, "-m", "launch.launch", f"--num_workers={num_workers}", *launch_flags, "--", *command]


def _epoch_rate(command: list[str], workdir: Path, examples: int) -> float:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:6])} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    history = json.loads((workdir / "history.json").read_text())
    steady = history[1:] or history  # Epoch 1 includes tracing.
    return examples / min(h["seconds"] for h in steady)


def two_workers_vs_one(data_dir: str, quick: bool) -> list[dict]:
    """Examples/s of one process and of two local workers, alternating rounds, medians."""
    examples = 2048 if quick else 16384
    examples -= examples % GLOBAL_BATCH
    two = lambda w, *flags, launch=(): _launch(2, _train_command(w, data_dir, examples, *flags), *launch)  # noqa: E731
    setups = {
        "one process": lambda w: _train_command(w, data_dir, examples),
        DEFAULT_SETUP: two,
        "two workers, gradients summed in float32": lambda w: two(w, "--all_reduce_dtype=float32"),
        "two workers, not pinned to cores": lambda w: two(w, launch=("--nopin_cores",)),
        "two workers, input through tf.distribute's iterator": lambda w: two(w, "--input_distribution=tf_distribute"),
        GLOBAL_STATISTICS_SETUP: lambda w: two(w, "--batch_norm_statistics=global"),
    }
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for round_number in range(1, (1 if quick else 3) + 1):
        for name, command in setups.items():
            workdir = Path(tempfile.mkdtemp(prefix="fmnist-bench-"))
            rates[name].append(_epoch_rate(command(workdir), workdir, examples))
            shutil.rmtree(workdir)
            print(f"  round {round_number}, {name}: {rates[name][-1]:,.0f} examples/s", flush=True)
    base = statistics.median(rates["one process"])
    return [
        {"setup": name, "examples/s": statistics.median(r), "vs one process": statistics.median(r) / base}
        for name, r in rates.items()
    ]


def collective_costs(data_dir: str, quick: bool) -> dict:
    """Runs benchmarks.collectives in a two-worker cluster; returns the chief's measurements."""
    script = [
        sys.executable,
        "-m",
        "benchmarks.collectives",
        f"--repeats={10 if quick else 50}",
        f"--data_dir={data_dir}",
    ]
    command = _launch(2, script)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("[worker 0] {")]
    if done.returncode or not lines:
        raise RuntimeError(f"benchmarks.collectives failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(lines[-1].split("] ", 1)[1])


def step_breakdown(rows: list[dict], costs: dict) -> list[dict]:
    """Where a two-worker step's time goes, from the measured step and the collectives timed alone."""
    rate = {row["setup"]: row["examples/s"] for row in rows}
    step = 1e3 * GLOBAL_BATCH / rate[DEFAULT_SETUP]
    synced = 1e3 * GLOBAL_BATCH / rate[GLOBAL_STATISTICS_SETUP]
    dtype, sent = costs["all_reduce_dtype"], costs["all_reduce_bytes"]
    parts = [
        ("measured step, two workers as launched by default", step),
        ("compute: one worker's train step alone (batch 64, its share of the cores)", costs["compute_ms"]),
        (f"gradient all-reduce as training runs it, packed, {dtype} ({sent / 1e6:.2f} MB)", costs["all_reduce_ms"]),
        (f"gradient all-reduce, packed, float32 ({costs['gradient_bytes'] / 1e6:.2f} MB)", costs["packed_ms"]),
        (f"gradient all-reduce, float32, one collective per variable ({costs['variables']})", costs["unpacked_ms"]),
        ("batch-norm synchronisation (global statistics: measured step minus default step)", synced - step),
        ("the rest: input, dispatch, once-per-call reduces", step - costs["compute_ms"] - costs["all_reduce_ms"]),
    ]
    return [{"part": name, "ms per step": value} for name, value in parts]


def scaling_table(costs: dict, steps_per_execution: int) -> list[dict]:
    """Predicted efficiency of N workers on real networks, from the measured compute and gradient bytes.

    Weak scaling: every worker keeps a batch of 64, so its compute per step
    stays `compute_ms` and the global batch is 64 x N. B is the gradient
    bytes in the dtype training all-reduces them in. A ring all-reduce of
    B bytes over N workers sends 2(N-1)/N x B per worker and takes 2(N-1)
    latency-bound hops, for each of k collectives per step:

      T_comm = 2(N-1)/N x B / bandwidth + k x 2(N-1) x alpha
      efficiency = T_compute / (T_compute + T_comm)      (no overlap assumed)

    k is 1 (the packed gradients) plus the statistics and batch-norm averaging
    reduces, once per compiled call of `steps_per_execution` steps.
    """
    compute, data = costs["compute_ms"] / 1e3, costs["all_reduce_bytes"]
    k = 1 + 2 / steps_per_execution
    rows = []
    for name, (bits_per_second, alpha) in NETWORKS.items():
        row = {"network (latency per message)": f"{name} ({alpha * 1e6:.0f} us)"}
        for n in WORKER_COUNTS:
            comm = 2 * (n - 1) / n * data * 8 / bits_per_second + k * 2 * (n - 1) * alpha
            row[f"{n} workers"] = compute / (compute + comm)
        rows.append(row)
    return rows
