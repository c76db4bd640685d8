"""Smoke test of the benchmark command (no timing assertions: benchmarks are not tests)."""

from __future__ import annotations

import json
import sys

import pytest
import tensorflow as tf
from conftest import run

from pipeline import config as config_lib
from pipeline.train import train_and_evaluate


@pytest.mark.slow
def test_quick_benchmarks_run_and_write_every_section(tiny_data_dir, tmp_path):
    base = config_lib.preset("smoke")
    config = base.replace(data=config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64))
    train_and_evaluate(config, tmp_path / "run", tf.distribute.get_strategy(), progress=False, make_report=False)
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        f"--data_dir={tiny_data_dir}",
        f"--runs=smoke={tmp_path / 'run'}",
        f"--export={tmp_path / 'run' / 'export' / '1'}",
        f"--out={out}",
        f"--record={tmp_path / 'BENCHMARKS.md'}",
        "--noscaling",  # Two workers vs one needs the real data's size; tests/test_distributed.py covers it.
    ]
    done = run(command, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = {key: section["rows"] for key, section in json.loads(out.read_text())["sections"].items()}
    sections = (
        "training_throughput",
        "input_headroom",
        "utilisation",
        "execution_settings",
        "time_to_accuracy",
        "serving",
    )
    for section in sections:
        assert results[section], section
    assert "vs tutorial" in done.stdout and "### 5. Serving" in done.stdout
    assert all(row["examples/s"] > 0 for row in results["training_throughput"] + results["execution_settings"])
    assert "XLA" in done.stdout and "unfused" in done.stdout and "one thread" in done.stdout
    assert "ReLU before max-pooling" in done.stdout
    # The smoke run averages 10 views; the table also shows the plain network's export.
    assert [row["path"] for row in results["serving"]] == [
        "SavedModel serving_default (flip_and_shift)",
        "SavedModel serving_default (none)",
        "Keras model.predict",
    ]
    # The record says where and when each section was measured, and re-renders without measuring.
    rendered = (tmp_path / "BENCHMARKS.md").read_text()
    assert "bf16 instructions" in rendered and "TensorFlow" in rendered and "## 5. Serving" in rendered
    from benchmarks import record

    assert record.render(record.load(out), {}).count("## ") == len(sections)
