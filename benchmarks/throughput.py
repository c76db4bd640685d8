"""Comparisons 1-3: training throughput, input headroom, hardware utilisation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import alternate, median_rates
from pipeline import config as config_lib
from pipeline import presets
from pipeline.data import augment as augment_lib
from pipeline.data import input_pipeline as ip
from pipeline.model import network as models
from pipeline.training import optimizer as optimizer_lib
from pipeline.training import precision, steps

# The recommended setting of the seed model: batch 256 at the tutorial's
# learning rate, in the precision `auto` picks. Adam's step has about the
# same size at any batch, so eight times fewer steps memorise the training
# set more slowly and the tutorial's recipe, which overfits, ends higher;
# scaling the rate with the batch (the square-root rule for Adam, or the
# linear rule with a warm-up) validated lower (the record's candidate recipes).
RECOMMENDED = {"global_batch_size": 256, "precision": "auto", "steps_per_execution": 16}
RECOMMENDED_ROW = "ours recommended: batch 256 at the same learning rate, precision auto"
# Batches each pipeline yields before its timed ones.
_WARM_UP_BATCHES = 5


def our_trainer(config: config_lib.Config, images, labels, num_steps: int):
    """A callable training `num_steps` steps of our pipeline; returns examples done."""
    strategy = tf.distribute.get_strategy()
    policy = precision.resolve_precision(config.train.precision)
    model = models.build_model(config.model, dtype=policy)
    optimizer = optimizer_lib.build_optimizer(config.train, num_steps, policy)
    train_steps = steps.make_train_steps(strategy, model, optimizer, config.train, policy)
    batch = config.train.global_batch_size
    iterator = iter(ip.train_dataset(images, labels, batch, 0, 0, config.augment))
    chunk = config.train.steps_per_execution
    zeros = tf.zeros([3], tf.float64)
    # Trace and warm up outside the timing. The step count is a tensor, so
    # fewer steps than a whole call trace the same function.
    train_steps(iterator, tf.constant(min(chunk, num_steps)), zeros)

    def run() -> int:
        done = 0
        while done < num_steps:
            n = min(chunk, num_steps - done)
            train_steps(iterator, tf.constant(n), zeros)
            done += n
        return done * batch

    return run


def _tutorial_trainer(images, labels, num_examples: int):
    """The tutorial's way: model.fit on float64 NumPy / 255, batch 32, softmax output."""
    model = keras.Sequential([models.build_model(presets.preset("seed").model), keras.layers.Softmax()])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = images[:num_examples].astype(np.float64)[..., None] / 255.0
    y = labels[:num_examples]
    model.fit(x[:320], y[:320], batch_size=32, epochs=1, verbose=0)  # Warm-up.

    def run() -> int:
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        return len(y) // 32 * 32

    return run


def training_throughput(images, labels, quick: bool) -> list[dict]:
    """Seed model examples/s: tutorial vs ours at batch 32 vs our recommended settings.

    Each turn is one whole epoch over the training set, as the tutorial's user
    runs it (`fit` with its per-epoch set-up included). Shorter `fit` calls
    would flatter us: the set-up of a call weighs more, and the tutorial's
    first calls in a process run far slower than its later ones.
    """
    n = 2048 if quick else len(labels)
    seed = presets.preset("seed")
    recommended = seed.replace(train=dataclasses.replace(seed.train, **RECOMMENDED))
    contenders = {
        "tutorial: model.fit float64 NumPy, batch 32": _tutorial_trainer(images, labels, n),
        "ours: tf.data + custom step, batch 32, float32": our_trainer(seed, images, labels, n // 32),
        RECOMMENDED_ROW: our_trainer(recommended, images, labels, n // 256),
    }
    rates = alternate(contenders, repeats=2 if quick else 3)
    base = rates["tutorial: model.fit float64 NumPy, batch 32"]
    policies = {name: "float32" for name in rates}
    policies[RECOMMENDED_ROW] = precision.resolve_precision("auto")
    return [
        {"setting": k, "precision": policies[k], "examples/s": v, "vs tutorial": v / base} for k, v in rates.items()
    ]


def _pipeline_reader(make_dataset: Callable[[], tf.data.Dataset], batches: int, batch: int):
    """A turn that builds its pipeline, warms it up, then times `batches` batches of it.

    The iterator lives only for its own turn: a live iterator of another
    contender keeps threads of its own busy (a parallel map refilling, an
    autotuning thread waking) and slowed the pipeline being timed.
    """

    def run() -> float:
        iterator = iter(make_dataset())
        for _ in range(_WARM_UP_BATCHES):  # The shuffle buffer fills, the threads start.
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        seconds = time.perf_counter() - start
        del iterator
        return batches * batch / seconds

    return run


def _example_pipeline(images, labels, batch: int, augment, cache: bool, per_example: bool) -> tf.data.Dataset:
    """The alternatives to ours: every example (not an index) goes through shuffle, then batch.

    With `per_example`, augmentation is mapped over single examples before batching.
    """
    seed = tf.constant([0, 0], tf.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64)))
    ds = (ds.cache() if cache else ds).shuffle(len(labels), seed=0).repeat()
    if per_example:
        one = lambda x, y: (augment_lib.augment_batch(ip.normalize(x[None]), augment, seed)[0], y)  # noqa: E731
        return ds.map(one).batch(batch).prefetch(tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True).enumerate()
    ds = ds.map(lambda i, b: ip.prepare_train(b, augment, tf.stack([0, i])), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _one_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1  # Parallel map and prefetch get one thread.
    return dataset.with_options(options)


def input_headroom(images, labels, model_rate: float, quick: bool) -> list[dict]:
    """Input pipeline alone, with and without each step, against the model's consumption.

    Each turn times one pipeline alone (`_pipeline_reader`), in rotating
    turns; the rate is the median turn's.
    """
    batch, batches = 128, 50 if quick else 400
    augment = config_lib.AugmentConfig()

    def ours():
        return ip.train_dataset(images, labels, batch, 0, 0, augment)

    contenders = {
        "ours: shuffle indices, gather batches, parallel vectorised augment, prefetch": ours,
        "ours without prefetch": lambda: ip.train_dataset(images, labels, batch, 0, 0, augment, prefetch=False),
        "ours on one thread (no parallel map)": lambda: _one_thread(ours()),
        "examples, not indices, through cache and shuffle, then batch": lambda: _example_pipeline(
            images, labels, batch, augment, cache=True, per_example=False
        ),
        "the same without cache": lambda: _example_pipeline(
            images, labels, batch, augment, cache=False, per_example=False
        ),
        "augment mapped per example": lambda: _example_pipeline(
            images, labels, batch, augment, cache=True, per_example=True
        ),
    }
    # Per-example augmentation is two orders of magnitude slower: fewer batches keep its turn short.
    turns = {
        k: _pipeline_reader(make, batches // 10 if "per example" in k else batches, batch)
        for k, make in contenders.items()
    }
    rates = median_rates(turns, repeats=2 if quick else 3)
    return [{"pipeline": k, "examples/s": v, "headroom vs model": v / model_rate} for k, v in rates.items()]


def model_flops_per_example(model: keras.Model) -> float:
    """Training FLOPs per example: 3x the forward multiply-adds x 2 of conv and dense layers."""
    forward = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k_h, k_w = layer.kernel_size
            forward += 2.0 * h * w * c_out * k_h * k_w * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            forward += 2.0 * layer.input.shape[-1] * layer.units
    return 3.0 * forward


def matmul_peak(quick: bool, dtype=tf.float32) -> float:
    """Measured matrix-multiply FLOP/s of this machine in `dtype` (a ceiling).

    The fastest of three timed windows: another process only ever slows a
    window, and a ceiling should be the least disturbed rate.
    """
    size = 1024 if quick else 2048
    a = tf.cast(tf.random.uniform([size, size]), dtype)
    matmul = tf.function(lambda m: tf.matmul(m, m))
    matmul(a).numpy()
    repeats = 5 if quick else 20
    fastest = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            result = matmul(a)
        result.numpy()
        fastest = min(fastest, time.perf_counter() - start)
    return 2.0 * size**3 * repeats / fastest


def matmul_peaks(quick: bool) -> dict[str, float]:
    """The matmul ceiling of each precision a row can train in, keyed by dtype policy.

    Under `mixed_bfloat16` the convolutions and matmuls run in bfloat16, so
    such rows are measured against the bfloat16 matmul rate; it is measured
    where the processor lists bf16 instructions (elsewhere bf16 is emulated).
    """
    from benchmarks.record import machine

    peaks = {"float32": matmul_peak(quick)}
    here = machine()
    if here["avx512_bf16"] or here["amx_bf16"]:
        peaks["mixed_bfloat16"] = matmul_peak(quick, tf.bfloat16)
    return peaks


def ceiling(peaks: dict[str, float], policy: str) -> float:
    """The matmul ceiling for a row trained under dtype policy `policy`."""
    return peaks.get(policy, peaks["float32"])


def utilisation(rates: list[dict], peaks: dict[str, float]) -> list[dict]:
    """Achieved model FLOP/s of each training setting as a fraction of the matmul ceiling of its precision.

    `rates` are `training_throughput`'s rows, the tutorial first. A last row
    shows what 3x the tutorial's rate would take on this machine.
    """
    flops = model_flops_per_example(models.build_model(presets.preset("seed").model))
    goal = {"setting": "3x the tutorial", "examples/s": 3.0 * rates[0]["examples/s"], "precision": "float32"}
    return [
        {
            "setting": r["setting"],
            "precision": r["precision"],
            "GFLOP/s": r["examples/s"] * flops / 1e9,
            "fraction of matmul peak": r["examples/s"] * flops / ceiling(peaks, r["precision"]),
        }
        for r in [*rates, goal]
    ] + [
        {
            "setting": f"{policy} matmul ceiling (measured)",
            "precision": policy,
            "GFLOP/s": peak / 1e9,
            "fraction of matmul peak": 1.0,
        }
        for policy, peak in peaks.items()
    ]
