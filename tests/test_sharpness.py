"""Sharpness-aware minimisation (`TrainConfig.sam_rho`): the gradients it takes, and training with it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run, smoke_train_command, subprocess_env

from pipeline import config as config_lib
from pipeline import config_files, presets
from pipeline.model import network
from pipeline.training import steps


def _by_hand(model, images, labels, train: config_lib.TrainConfig, ascent: int):
    """SAM's uphill step by hand: moves the weights along the first `ascent` images' gradient; returns it."""
    with tf.GradientTape() as tape:
        per_example = steps.per_example_loss(labels[:ascent], model(images[:ascent], training=True), 0.1)
        uphill = tape.gradient(tf.reduce_mean(per_example), model.trainable_variables)
    # Max-pooling routes gradients to the largest input, so the moved weights
    # must match to the last bit: the same arithmetic as the step.
    step = train.sam_rho / (tf.linalg.global_norm(uphill) + 1e-12)
    for variable, gradient in zip(model.trainable_variables, uphill, strict=True):
        variable.assign(variable + step * gradient)
    return uphill


def test_gradients_are_the_batchs_at_the_weights_moved_uphill_and_batch_norm_steps_once():
    train = dataclasses.replace(
        presets.preset("smoke").train, sam_rho=0.05, sam_ascent_fraction=0.25, global_batch_size=8, label_smoothing=0.1
    )
    keras.utils.set_random_seed(0)
    model = network.build_model(presets.preset("smoke").model)
    images = tf.random.uniform([8, 28, 28, 1], seed=1)
    labels = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    weights = [v.numpy() for v in model.trainable_variables]
    moving = [v.numpy() for v in model.non_trainable_variables]
    optimizer = keras.optimizers.SGD()

    grads, logits, per_example = steps._sharpness_aware_gradients(model, optimizer, images, labels, train)
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(model.trainable_variables, weights, strict=True)), (
        "SAM must leave the weights as they were"
    )
    statistics = [v.numpy() for v in model.non_trainable_variables]

    # The same by hand, from the same state (batch norm's statistics, dropout's
    # seeds): the ascent pass's state is undone, the batch's pass at the moved weights kept.
    def restore_state():
        for variable, value in zip(model.non_trainable_variables, moving, strict=True):
            variable.assign(value)

    restore_state()
    uphill = _by_hand(model, images, labels, train, ascent=2)
    restore_state()
    with tf.GradientTape() as tape:
        expected_logits = model(images, training=True)
        expected_per_example = steps.per_example_loss(labels, expected_logits, 0.1)
        loss = tf.reduce_sum(expected_per_example) / train.global_batch_size
    expected = tape.gradient(loss, model.trainable_variables)
    assert float(tf.linalg.global_norm(uphill)) > 0
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logits.numpy(), expected_logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_example.numpy(), expected_per_example.numpy(), rtol=1e-5, atol=1e-6)
    for got, variable in zip(statistics, model.non_trainable_variables, strict=True):
        np.testing.assert_allclose(got, variable.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [({"sam_rho": 0.0}, "train.sam_rho must be > 0"), ({"sam_ascent_fraction": 1.5}, "sam_ascent_fraction")],
)
def test_bad_sam_settings_are_refused(changes, message):
    config = presets.preset("smoke")
    with pytest.raises(config_lib.ConfigError, match=message):
        config_files.validate(config.replace(train=dataclasses.replace(config.train, **changes)))


@pytest.mark.parametrize("precision", ["auto", "mixed_float16"])
def test_mirrored_over_two_cpus_trains_with_sam(tiny_data_dir, tmp_path, precision):
    # Each replica moves uphill on its own batch (m-sharpness), so this is not
    # one replica's run. mixed_float16 scales the loss of both passes.
    script = f"""
import dataclasses, json
from pipeline.cluster import strategies
strategies.use_logical_cpus(2)
import tensorflow as tf
from pipeline import config as C, presets
from pipeline.training.driver import train_and_evaluate
base = presets.preset("smoke")
config = base.replace(data=C.DataConfig(data_dir={str(tiny_data_dir)!r}, validation_size=64),
                      train=dataclasses.replace(base.train, epochs=2, sam_rho=0.05, precision={precision!r}))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print(json.dumps(train_and_evaluate(config, {str(tmp_path / "run")!r}, strategy, progress=False)))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["replicas"] == 2 and np.isfinite(metrics["train_loss"]) and metrics["test_accuracy"] > 0.1
    if precision != "auto":
        assert metrics["precision"] == precision
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["sam_rho"] == 0.05


@pytest.mark.slow
def test_two_workers_train_with_sam(tiny_data_dir, tmp_path):
    # The step is the same function in every strategy; between processes the
    # uphill step stays each worker's own and only the gradients are summed.
    workdir = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "launch.launch", "--num_workers=2", "--"),
        *smoke_train_command(workdir, tiny_data_dir, "--sam_rho=0.05", "--max_train_examples=256", "--noexport"),
    ]
    done = run(command, timeout=600, env=dict(subprocess_env(), TMPDIR=str(tmp_path)))
    assert done.returncode == 0, done.stdout[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and np.isfinite(metrics["train_loss"])


def test_sam_trains_in_an_xla_compiled_step(tiny_data_dir, tmp_path):
    # `model.stateless_call` inside `jit_compile`, the setting GPU runs often use.
    workdir = tmp_path / "run"
    extra = ("--sam_rho=0.05", "--jit_compile", "--max_train_examples=256", "--noexport", "--noreport")
    done = run(smoke_train_command(workdir, tiny_data_dir, *extra), timeout=600, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert np.isfinite(metrics["train_loss"])
