"""Optimiser, learning-rate schedule and the distributed train/eval steps.

One custom step serves every strategy (default, mirrored, multi-worker):
Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), while Keras 3 layers and optimisers work inside
`strategy.run`. Using the same step everywhere keeps metrics, checkpoints and
resume identical on one CPU and on a cluster.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from pipeline.config import TrainConfig


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to zero at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, decay: bool):
        self.peak, self.warmup_steps, self.total_steps, self.decay = peak, warmup_steps, total_steps, decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))
        if not self.decay:
            return self.peak * warm
        progress = tf.clip_by_value((step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 0.0, 1.0)
        return self.peak * warm * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps, decay=self.decay)


def peak_learning_rate(config: TrainConfig) -> float:
    """The configured rate, linearly scaled with the global batch when asked."""
    if config.scale_learning_rate:
        return config.learning_rate * config.global_batch_size / config.base_batch_size
    return config.learning_rate


def build_optimizer(config: TrainConfig, steps_per_epoch: int, policy: str) -> keras.optimizers.Optimizer:
    """Adam or AdamW (decoupled weight decay) with the configured schedule."""
    rate = WarmupCosine(
        peak_learning_rate(config),
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        total_steps=config.epochs * steps_per_epoch,
        decay=config.schedule == "cosine",
    )
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
        # Decaying BN scales/offsets and biases only hurts; decay kernels only.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    else:
        optimizer = keras.optimizers.Adam(rate)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _per_example_loss(labels, probabilities, label_smoothing: float):
    one_hot = tf.one_hot(labels, probabilities.shape[-1])
    return keras.losses.categorical_crossentropy(one_hot, probabilities, label_smoothing=label_smoothing)


def make_train_steps(strategy, model, optimizer, config: TrainConfig):
    """Returns `train_steps(iterator, n)`: n optimiser steps, summed statistics.

    Several steps per call amortise Python and dispatch overhead, which
    dominates small-batch CPU training. The result is [loss_sum, correct,
    count] summed over replicas and steps (running training averages, shown in
    the progress bar only).
    """

    def step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example = _per_example_loss(labels, probabilities, config.label_smoothing)
            # Divide by the *global* batch: replicas' gradients are summed.
            loss = tf.reduce_sum(per_example) / config.global_batch_size
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=False))
        return _statistics(labels, probabilities, per_example, tf.ones_like(per_example))

    if config.jit_compile:
        # Only the step is compiled: the loop around it reads an iterator.
        step = tf.function(step, jit_compile=True)
    return _looped(strategy, step)


def _looped(strategy, step):
    """Compiles `fn(iterator, n)` running `step` n times, summing its statistics."""

    @tf.function
    def run_steps(iterator, num_steps):
        totals = tf.zeros([3])
        for _ in tf.range(num_steps):
            per_replica = strategy.run(step, args=next(iterator))
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals

    return run_steps


def _statistics(labels, probabilities, per_example_loss, weights):
    correct = tf.cast(tf.equal(tf.argmax(probabilities, -1), labels), tf.float32)
    return tf.stack(
        [
            tf.reduce_sum(per_example_loss * weights),
            tf.reduce_sum(correct * weights),
            tf.reduce_sum(weights),
        ]
    )


def make_eval_steps(strategy, model):
    """Returns `eval_steps(iterator, n)`: [loss_sum, correct, count] in inference mode."""

    def step(images, labels, weights):
        probabilities = model(images, training=False)
        per_example = _per_example_loss(labels, probabilities, 0.0)
        return _statistics(labels, probabilities, per_example, weights)

    return _looped(strategy, step)


def summarize(totals) -> dict[str, float]:
    """[loss_sum, correct, count] to {"loss": mean loss, "accuracy": fraction}."""
    loss_sum, correct, count = (float(v) for v in totals)
    return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}
