"""The learning-rate schedule and the optimiser built from TrainConfig."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.training.optimizer import (
    WarmupCosine,
    build_optimizer,
    describe_new_length,
    learning_rate_schedule,
    restart_from_average,
)


def test_warmup_then_cosine_to_zero():
    schedule = WarmupCosine(peak=1.0, warmup_steps=10, total_steps=110, decay=True)
    rate = lambda step: float(schedule(step))  # noqa: E731
    # Linear warm-up: the first step already moves the weights, step 9 reaches the peak.
    np.testing.assert_allclose([rate(s) for s in range(10)], [(s + 1) / 10 for s in range(10)], rtol=1e-6)
    # Cosine from the peak at the end of warm-up to zero at total_steps, and zero after.
    for step in (10, 35, 60, 85, 110, 150):
        progress = min(1.0, (step - 10) / 100)
        assert math.isclose(rate(step), 0.5 * (1 + math.cos(math.pi * progress)), abs_tol=1e-6), step
    constant = WarmupCosine(peak=2.0, warmup_steps=0, total_steps=100, decay=False)
    assert float(constant(0)) == float(constant(99)) == 2.0


def test_schedule_follows_the_config():
    train = dataclasses.replace(config_lib.TrainConfig(), epochs=4, warmup_epochs=0.5, learning_rate=0.1)
    schedule = learning_rate_schedule(train, steps_per_epoch=20)
    assert (schedule.peak, schedule.warmup_steps, schedule.total_steps, schedule.decay) == (0.1, 10, 80, True)
    scaled = dataclasses.replace(train, scale_learning_rate=True, global_batch_size=512, base_batch_size=128)
    assert learning_rate_schedule(scaled, 20).peak == 0.4


def test_every_preset_scales_its_rate_from_its_own_batch():
    from pipeline import presets
    from pipeline.training.optimizer import describe_learning_rate, peak_learning_rate

    for name in presets.PRESETS:
        train = presets.preset(name).train
        assert train.base_batch_size == train.global_batch_size, name
        scaled = dataclasses.replace(train, scale_learning_rate=True)
        assert peak_learning_rate(scaled) == train.learning_rate, name
        half = dataclasses.replace(scaled, global_batch_size=train.global_batch_size // 2)
        assert peak_learning_rate(half) == pytest.approx(train.learning_rate / 2), name
    default = presets.preset("default").train
    assert describe_learning_rate(default) == "peak learning rate 0.4"
    small = dataclasses.replace(default, global_batch_size=128)
    assert describe_learning_rate(small) == (
        "peak learning rate 0.4, chosen at a global batch of 512; --scale_learning_rate scales it to this batch"
    )
    scaled = dataclasses.replace(small, scale_learning_rate=True)
    assert describe_learning_rate(scaled) == "peak learning rate 0.1 (0.4 scaled from a global batch of 512)"


def test_a_new_length_names_the_rate_before_and_after_at_the_resumed_step():
    recorded = config_lib.TrainConfig(epochs=4, warmup_epochs=0.0, learning_rate=1.0)
    assert describe_new_length(recorded, recorded, 10, 40) is None
    # A finished cosine (rate 0 at step 40) stretched to 8 epochs resumes half way down: 0.5.
    longer = dataclasses.replace(recorded, epochs=8)
    assert describe_new_length(recorded, longer, 10, 40) == (
        "train.epochs 4 -> 8: the schedule now spans 8 epochs; "
        "the learning rate at optimizer step 40 goes from 0 to 0.5"
    )
    constant = dataclasses.replace(recorded, schedule="constant")
    assert describe_new_length(constant, dataclasses.replace(constant, epochs=8), 10, 40).endswith("stays 1")


def test_resumed_optimizer_continues_the_schedule_mid_way(tmp_path):
    train = dataclasses.replace(config_lib.TrainConfig(), epochs=3, warmup_epochs=1.0)
    variable = keras.Variable(np.ones(3, np.float32), name="w")

    def optimizer_at(steps: int):
        optimizer = build_optimizer(train, steps_per_epoch=10, policy="float32")
        optimizer.build([variable])
        for _ in range(steps):
            optimizer.apply_gradients([(tf.ones(3), variable)])
        return optimizer

    # Mid-way through the cosine phase: 17 of 30 steps.
    before = optimizer_at(17)
    path = tf.train.Checkpoint(optimizer=before).save(str(tmp_path / "ckpt"))
    resumed = optimizer_at(0)
    tf.train.Checkpoint(optimizer=resumed).restore(path).assert_existing_objects_matched()
    assert int(resumed.iterations.numpy()) == 17
    expected = float(learning_rate_schedule(train, 10)(17))
    assert math.isclose(float(resumed.learning_rate), expected, rel_tol=1e-6)
    assert math.isclose(float(resumed.learning_rate), float(before.learning_rate), rel_tol=1e-6)
    assert 0 < expected < train.learning_rate


def test_average_overwrites_the_weights_every_n_steps():
    # Lookahead through Keras's EMA: the weights restart from the average every 3 steps.
    train = dataclasses.replace(
        config_lib.TrainConfig(),
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        warmup_epochs=0.0,
        learning_rate=0.1,
        ema_momentum=0.5,
        ema_overwrite_steps=3,
    )
    variable = keras.Variable(np.zeros(1, np.float32), name="w")
    optimizer = build_optimizer(train, steps_per_epoch=10, policy="float32")
    optimizer.build([variable])
    restart = restart_from_average(optimizer, [variable], train.ema_overwrite_steps)
    weight, average = 0.0, None
    for step in range(7):
        optimizer.apply_gradients([(tf.ones(1), variable)])
        restart()
        weight -= 0.1
        average = weight if average is None else 0.5 * average + 0.5 * weight
        if (step + 1) % 3 == 0:
            weight = average
        assert math.isclose(float(variable.numpy()[0]), weight, rel_tol=1e-5), step
    assert weight != average  # Step 7 moved the weights off the average again.
    assert restart_from_average(optimizer, [variable], None) is None


def test_keras_cosine_decay_with_warmup_differs_from_the_schedule_by_more_than_1e_6():
    # The schedule is hand-written only because Keras's differs: this measures by how much.
    peak, warmup, total = 0.4, 107, 107 * 31
    ours = WarmupCosine(peak, warmup_steps=warmup, total_steps=total, decay=True)
    keras_schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - warmup, warmup_target=peak, warmup_steps=warmup
    )
    # Keras's schedule takes one step at a time: map it over the steps in one compiled call.
    steps = tf.range(total + 1)
    theirs = tf.function(lambda s: tf.map_fn(keras_schedule, s, fn_output_signature=tf.float32))(steps)
    difference = np.abs(ours(steps).numpy() - theirs.numpy())
    # Keras's warm-up is peak * step / warmup_steps: step 0 trains at rate 0.
    assert float(keras_schedule(0)) == 0.0 and math.isclose(float(ours(0)), peak / warmup, rel_tol=1e-6)
    assert difference.max() > 1e-6 and difference[:warmup].max() == difference.max()
    assert difference[warmup:].max() < 1e-6, "after the warm-up both are the same cosine"
