"""Comparison 5: the exported SavedModel signature against Keras `model.predict`."""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf

from pipeline import input_pipeline as ip


def _latencies(call, repeats: int) -> list[float]:
    call()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def serving_speed(export_dir, keras_model, images: np.ndarray, quick: bool) -> list[dict]:
    """Batch-1 latency (p50, p99) and batch-256 throughput, alternating the two paths."""
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    one, many = images[:1], images[:256]
    paths = {
        "SavedModel serving_default": lambda x: serve(images=tf.constant(x))["probabilities"].numpy(),
        "Keras model.predict": lambda x: keras_model.predict(ip.normalize(x), verbose=0),
    }
    repeats = 30 if quick else 300
    lat = {name: [] for name in paths}
    thr = {name: [] for name in paths}
    for _ in range(3):
        for name, fn in paths.items():
            lat[name] += _latencies(lambda fn=fn: fn(one), repeats // 3)
            thr[name] += [256 / t for t in _latencies(lambda fn=fn: fn(many), max(3, repeats // 30))]
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
