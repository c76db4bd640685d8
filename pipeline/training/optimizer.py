"""The optimiser and its learning-rate schedule, built from `TrainConfig`."""

from __future__ import annotations

import contextlib
import math
import types

import keras
import tensorflow as tf

from pipeline.config import TrainConfig


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to zero at `total_steps`.

    Hand-written because Keras's `CosineDecay(warmup_target=..., warmup_steps=...)`
    differs during the warm-up by up to `peak / warmup_steps` (more than 1e-6 at
    every warm-up step; tests/test_optimizer.py measures it): its warm-up is
    `peak * step / warmup_steps`, so from zero its first step trains at rate 0,
    while this one reaches `peak * (step + 1) / warmup_steps`. After the
    warm-up both are the same cosine.
    """

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


class AllReplicasLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's dynamic loss scaling, with one overflow decision for all replicas.

    Keras's `LossScaleOptimizer` checks the gradients it is given for
    overflow. It is given each replica's own gradients (its inner optimizer
    sums them across replicas inside `apply`), so on its merge-call path the
    first replica's check decides for every replica and another replica's
    overflow reaches the weights; on its no-merge-call path each replica
    decides alone, and the inner optimizer's all-reduce inside only some
    replicas' branch would hang. Here the check is summed over the replicas
    (one scalar all-reduce per step): any replica not finite means every
    replica skips the step and halves its scale. The variables, and so the
    checkpoints, are Keras's.
    """

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflows = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
        return tf.equal(overflows, 0.0)


def peak_learning_rate(config: TrainConfig) -> float:
    """The configured rate, linearly scaled with the global batch when asked."""
    if config.scale_learning_rate:
        return config.learning_rate * config.global_batch_size / config.base_batch_size
    return config.learning_rate


def describe_learning_rate(config: TrainConfig) -> str:
    """The peak rate for the console, and how it relates to the batch it was chosen at."""
    peak = f"peak learning rate {peak_learning_rate(config):g}"
    if config.global_batch_size == config.base_batch_size:
        return peak
    if config.scale_learning_rate:
        return f"{peak} ({config.learning_rate:g} scaled from a global batch of {config.base_batch_size})"
    return (
        f"{peak}, chosen at a global batch of {config.base_batch_size}; --scale_learning_rate scales it to this batch"
    )


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> WarmupCosine:
    """The configured schedule over `config.epochs` epochs of `steps_per_epoch` optimiser steps."""
    return WarmupCosine(
        peak_learning_rate(config),
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        total_steps=config.epochs * steps_per_epoch,
        decay=config.schedule == "cosine",
    )


def describe_new_length(recorded: TrainConfig, config: TrainConfig, steps_per_epoch: int, step: int) -> str | None:
    """What resuming a run at optimizer `step` with other `epochs` does to its learning rate, or None.

    The schedule spans `config.epochs`, so a cosine decay is stretched (or
    compressed) from the resumed step on: a finished run extended this way
    restarts from a higher rate.
    """
    if recorded.epochs == config.epochs:
        return None
    before = float(learning_rate_schedule(recorded, steps_per_epoch)(step))
    after = float(learning_rate_schedule(config, steps_per_epoch)(step))
    change = f"the learning rate at optimizer step {step} goes from {before:.4g} to {after:.4g}"
    if before == after:
        change = f"the learning rate at optimizer step {step} stays {after:.4g}"
    return f"train.epochs {recorded.epochs} -> {config.epochs}: the schedule now spans {config.epochs} epochs; {change}"


def build_optimizer(config: TrainConfig, steps_per_epoch: int, policy: str) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD with Nesterov momentum, with the configured schedule.

    Weight decay (AdamW, SGD) applies to kernels only: decaying batch norm's
    scales and offsets, or biases, only hurts. With `ema_momentum` the
    optimiser also keeps a moving average of the weights.
    """
    rate = learning_rate_schedule(config, steps_per_epoch)
    # The average lives in the optimiser (checkpointed with it); the model's
    # variables keep the trained weights until `averaged_weights` swaps them.
    # `ema_overwrite_steps` is applied by the train step (`restart_from_average`).
    ema = dict(use_ema=config.ema_momentum is not None, ema_momentum=config.ema_momentum or 0.99)
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay, **ema)
    elif config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            rate, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay or None, **ema
        )
    else:
        optimizer = keras.optimizers.Adam(rate, **ema)
    if config.optimizer != "adam":
        # Shifts, scales and residual gates (`network.ResidualGate`) are not decayed.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "residual_scale"])
    if policy == "mixed_float16":
        optimizer = AllReplicasLossScaleOptimizer(optimizer)
    return optimizer


def _averaging(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer | None:
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # Under loss scaling.
    return inner if inner.use_ema else None


def restart_from_average(optimizer: keras.optimizers.Optimizer, variables, every: int | None):
    """A per-replica function: every `every` optimiser steps, `variables` take the moving average's values.

    The Lookahead scheme (`TrainConfig.ema_overwrite_steps`); call it after
    each update. Hand-written instead of Keras's `ema_overwrite_frequency`,
    which copies through a merge call inside a `cond`, and tf.distribute
    refuses that inside a replica's step (`strategy.run`). Every replica
    holds the same weights and average, so each copies its own.

    Returns:
      The function, or None without an average or without `every`.
    """
    averaging = _averaging(optimizer)
    if every is None or averaging is None:
        return None

    def restart():
        due = tf.equal(averaging.iterations % every, 0)
        # The average's variables, in the order of the weights (Keras's own
        # `SwapEMAWeights` reads the same attribute).
        averages = averaging._model_variables_moving_average
        for variable, average in zip(variables, averages, strict=True):
            variable.assign(tf.where(due, average, variable))

    return restart


@contextlib.contextmanager
def averaged_weights(optimizer: keras.optimizers.Optimizer):
    """Inside, the model's variables hold the optimiser's moving average (if it keeps one); after, the trained ones.

    Keras's own `SwapEMAWeights` callback does the swap, on every replica.
    Called outside any replica context (between compiled calls).
    """
    if _averaging(optimizer) is None:
        yield
        return
    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(types.SimpleNamespace(optimizer=optimizer))
    swap.on_test_begin()
    try:
        yield
    finally:
        swap.on_test_end()


def start_average_at(optimizer: keras.optimizers.Optimizer, variables) -> None:
    """Sets the moving average (if the optimiser keeps one) to `variables`' values: weights loaded from elsewhere.

    Keras starts the average at zero and takes the weights' values at
    optimiser step 0 only; weights loaded into a run whose step is already
    past 0 (a Hyperband trial continuing another) would otherwise be
    averaged with those zeros.
    """
    averaging = _averaging(optimizer)
    if averaging is not None:
        for variable, average in zip(variables, averaging._model_variables_moving_average, strict=True):
            average.assign(variable)


def keep_averaged_weights(optimizer: keras.optimizers.Optimizer, variables) -> None:
    """Puts the moving average into `variables` (the model's trainable ones) for good: the final model."""
    averaging = _averaging(optimizer)
    if averaging is not None:
        averaging.finalize_variable_values(variables)
