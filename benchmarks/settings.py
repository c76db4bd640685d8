"""Execution settings of the default model's training step.

Steps per execution, XLA (`jit_compile`), TensorFlow's thread pools, the
batch-norm kernel (ours fused, Keras' unfused) and where the ReLU and batch norm go. Thread
pools are fixed once TensorFlow starts, so every setting is measured in its own
child process (a `--quick` smoke test shares one among the settings with
default thread pools); the parent runs them in rotating turns (A B C, B C A, ...) and
reports medians, like every other comparison here.

  python -m benchmarks.settings --data_dir=../shared/data/fashion-mnist   # this comparison alone
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One execution setting: ModelConfig and TrainConfig overrides, thread pools."""

    model: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    threads: tuple[int, int] | None = None  # (intra-op, inter-op); None: TensorFlow's defaults.


SETTINGS: dict[str, Setting] = {
    "default preset: 16 steps/execution, TF thread defaults": Setting(),
    "1 step per execution": Setting(train={"steps_per_execution": 1}),
    "64 steps per execution": Setting(train={"steps_per_execution": 64}),
    "XLA: jit_compile=True": Setting(train={"jit_compile": True}),
    "threads: intra-op 2, inter-op 1": Setting(threads=(2, 1)),
    "threads: intra-op 1, inter-op 2": Setting(threads=(1, 2)),
    "Keras' own (unfused) BatchNormalization": Setting(model={"batch_norm_kernel": "keras"}),
    "ReLU before max-pooling (textbook order; same numbers)": Setting(model={"relu_after_pooling": False}),
    "batch norm before max-pooling (textbook order; other statistics)": Setting(
        model={"batch_norm_after_pooling": False}
    ),
}


def _child(names: list[str], data_dir: str | None, num_steps: int, batch: int | None) -> None:
    import tensorflow as tf

    threads = {SETTINGS[name].threads for name in names}
    assert len(threads) == 1, "settings sharing a process share its thread pools"
    (pools,) = threads
    if pools:
        tf.config.threading.set_intra_op_parallelism_threads(pools[0])
        tf.config.threading.set_inter_op_parallelism_threads(pools[1])
    import time

    from benchmarks.throughput import our_trainer
    from pipeline import presets
    from pipeline.data import sources as data_lib

    train, _, _ = data_lib.load_train_test(data_dir)
    for name in names:
        setting = SETTINGS[name]
        config = presets.preset("default")
        config = config.replace(
            model=dataclasses.replace(config.model, **setting.model),
            train=dataclasses.replace(config.train, **setting.train),
        )
        if batch:
            config = config.replace(train=dataclasses.replace(config.train, global_batch_size=batch))
        run = our_trainer(config, train.images, train.labels, num_steps)
        start = time.perf_counter()
        examples = run()
        print(json.dumps({"setting": name, "examples/s": examples / (time.perf_counter() - start)}), flush=True)


def _measure(names: list[str], data_dir: str | None, num_steps: int, batch: int | None) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.settings", *(f"--setting={n}" for n in names), f"--steps={num_steps}"]
    if batch:
        command.append(f"--batch={batch}")
    if data_dir:
        command.append(f"--data_dir={data_dir}")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"settings {names!r} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["setting"]: row["examples/s"] for row in rows}


def _process_groups(quick: bool) -> list[list[str]]:
    """Settings measured together in one child process.

    Measuring, each setting has a process of its own. A `--quick` smoke test
    runs the settings with TensorFlow's own thread pools in one process.
    """
    if not quick:
        return [[name] for name in SETTINGS]
    shared = [name for name, setting in SETTINGS.items() if setting.threads is None]
    return [shared, *([name] for name, setting in SETTINGS.items() if setting.threads is not None)]


def execution_settings(data_dir: str | None, quick: bool, peaks: dict[str, float]) -> list[dict]:
    """Default-model training examples/s per setting, alternating child processes, medians.

    `peaks` are `throughput.matmul_peaks`: each row is measured against the
    ceiling of the precision it trains in.
    """
    from benchmarks.common import rounds
    from benchmarks.throughput import ceiling, model_flops_per_example
    from pipeline import presets
    from pipeline.model import network as models
    from pipeline.training import precision

    flops = model_flops_per_example(models.build_model(presets.preset("default").model))
    # --quick: a smoke test of every setting at a small batch, not a measurement.
    num_steps, repeats, batch = (2, 1, 64) if quick else (96, 3, None)
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for order in rounds(_process_groups(quick), repeats):
        for group in order:
            for name, rate in _measure(group, data_dir, num_steps, batch).items():
                rates[name].append(rate)
    base = statistics.median(rates[next(iter(SETTINGS))])
    policy = precision.resolve_precision(presets.preset("default").train.precision)
    rows = []
    for name, values in rates.items():
        rate = statistics.median(values)
        rows.append(
            {
                "setting": name,
                "examples/s": rate,
                "vs default": rate / base,
                "precision": policy,
                "fraction of matmul peak": rate * flops / ceiling(peaks, policy),
            }
        )
    return rows


def _main(argv) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    if f.setting:
        _child(f.setting, f.data_dir, f.steps, f.batch)
        return
    from benchmarks.common import print_table
    from benchmarks.throughput import matmul_peaks

    print_table(execution_settings(f.data_dir, f.quick, matmul_peaks(f.quick)))


if __name__ == "__main__":
    from absl import app, flags

    from benchmarks.common import define_child_flags

    flags.DEFINE_multi_enum("setting", None, list(SETTINGS), "Measure only these settings (a child process).")
    define_child_flags(steps=96)
    app.run(_main)
