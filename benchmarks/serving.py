"""The exported SavedModel signature against Keras `model.predict`."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from benchmarks.common import latencies
from pipeline.data import input_pipeline as ip


def _signature(export_dir):
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    return lambda x: serve(images=tf.constant(x))["probabilities"].numpy()


def serving_speed(exports: dict, keras_model, images: np.ndarray, quick: bool) -> list[dict]:
    """Batch-1 latency (p50, p99) and batch-256 throughput, alternating the paths.

    Args:
      exports: row name -> exported version directory (its `serving_default`).
      keras_model: the Keras model of the first export, for `model.predict`.
    """
    one, many = images[:1], images[:256]
    paths = {name: _signature(directory) for name, directory in exports.items()}
    paths["Keras model.predict"] = lambda x: keras_model.predict(ip.normalize(x), verbose=0)
    repeats = 30 if quick else 300
    lat = {name: [] for name in paths}
    thr = {name: [] for name in paths}
    for _ in range(3):
        for name, fn in paths.items():
            lat[name] += latencies(lambda fn=fn: fn(one), repeats // 3)
            thr[name] += [256 / t for t in latencies(lambda fn=fn: fn(many), max(3, repeats // 30))]
    rows = []
    for name in paths:
        rows.append(
            {
                "path": name,
                "p50 ms (batch 1)": 1e3 * statistics.median(lat[name]),
                "p99 ms (batch 1)": 1e3 * float(np.percentile(lat[name], 99)),
                "examples/s (batch 256)": statistics.median(thr[name]),
            }
        )
    return rows


def export_against_keras(export: str, images: np.ndarray, quick: bool) -> list[dict]:
    """`serving_speed` of a run's export, the same weights exported without test-time views, and Keras."""
    from pipeline import config_files
    from pipeline.runs.final_model import load_final_model
    from pipeline.serving.export import export_run

    workdir = Path(export).resolve().parents[1]
    config = config_files.load_run_config(workdir / "config.json")
    model = load_final_model(workdir, config)
    views = config.model.test_time_augmentation
    exports = {f"SavedModel serving_default ({views})": export}
    with tempfile.TemporaryDirectory() as scratch:
        if views != "none":
            # The same weights without test-time views: what the views cost.
            exports["SavedModel serving_default (none)"] = export_run(workdir, scratch, test_time_augmentation="none")
        return serving_speed(exports, model, images, quick)
