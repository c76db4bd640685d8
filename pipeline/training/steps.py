"""The distributed train and eval steps: one custom step for every strategy.

One custom step serves every strategy (default, mirrored, multi-worker):
Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), while Keras 3 layers and optimisers work inside
`strategy.run`. The same step everywhere keeps metrics, checkpoints and
resume identical on one CPU and on a cluster. `pipeline.training.loop`
runs these steps epoch by epoch.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.cluster import strategies
from pipeline.training import optimizer as optimizer_lib


def per_example_loss(labels, logits, label_smoothing: float):
    """Cross-entropy of `labels` against `logits`, with label smoothing.

    `labels` are integer classes [B] or float targets [B, classes] (CutMix's
    mixed labels, `augment.cutmix`).
    """
    targets = labels if labels.dtype.is_floating else tf.one_hot(labels, logits.shape[-1])
    return keras.losses.categorical_crossentropy(targets, logits, from_logits=True, label_smoothing=label_smoothing)


def _statistics(labels, logits, per_example_loss, weights):
    # Against float targets, the class with the larger share is the answer.
    classes = tf.argmax(labels, -1) if labels.dtype.is_floating else labels
    correct = tf.cast(tf.equal(tf.argmax(logits, -1), classes), tf.float32)
    return tf.stack(
        [
            tf.reduce_sum(per_example_loss * weights),
            tf.reduce_sum(correct * weights),
            tf.reduce_sum(weights),
        ]
    )


def _looped(strategy, step, after=None):
    """Compiles `fn(iterator, n, totals)`: runs `step` n times, adding its statistics to `totals`.

    Each replica sums its own steps' statistics in a sync-on-read variable,
    and reading it sums over the replicas: one all-reduce per call instead of
    one per step. The running totals (float64) go in and come out of every
    call and the first replica adds its steps to them one by one, so with one
    replica they are summed in the same order however the steps are split
    into calls (`steps_per_execution` may change when a run resumes).

    Args:
      strategy: the distribution strategy.
      step: the per-replica step; returns [loss_sum, correct, count].
      after: optional per-replica function run once at the end of each call.
    """
    with strategy.scope():
        local = tf.Variable(
            tf.zeros([3], tf.float64),
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )

    def start(totals):
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        local.assign(tf.where(first, totals, tf.zeros_like(totals)))

    def step_and_add(*batch):
        local.assign_add(tf.cast(step(*batch), tf.float64))

    @tf.function
    def run_steps(iterator, num_steps, totals):
        strategy.run(start, args=(totals,))
        for _ in tf.range(num_steps):
            strategy.run(step_and_add, args=next(iterator))
        if after is not None:
            strategy.run(after)
        return local.read_value()

    return run_steps


def _average_moving_statistics(strategy, model):
    """A per-replica function that sets every batch-norm moving statistic to its mean over the replicas.

    With per-replica batch statistics each replica's moving statistics follow
    its own batches. They are linear in the batch moments, so their mean is
    the moving average of the replicas' mean moments; averaging once per call
    (one packed all-reduce) keeps every replica, and so every checkpoint and
    evaluation, identical.
    """
    variables = [
        v
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
        for v in (layer.moving_mean, layer.moving_variance)
    ]
    if strategy.num_replicas_in_sync == 1 or not variables:
        return None

    def average():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
        for variable, mean in zip(variables, means, strict=True):
            variable.assign(mean)

    return average


def _batch_loss(optimizer, per_example, global_batch_size: int):
    # Divided by the *global* batch: replicas' gradients are summed.
    return optimizer.scale_loss(tf.reduce_sum(per_example) / global_batch_size)


def _gradients_at(model, weights, images, labels, label_smoothing: float, to_loss):
    """Gradients of `to_loss(per-example losses)` at `weights` (`model.trainable_variables` order), model untouched.

    Returns (gradients, logits, per-example losses, the non-trainable values
    the call would have assigned: batch norm's moving statistics, dropout's
    seed state).
    """
    non_trainable = [v.value for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        logits, updated = model.stateless_call(weights, non_trainable, images, training=True)
        per_example = per_example_loss(labels, logits, label_smoothing)
        loss = to_loss(per_example)
    return tape.gradient(loss, weights), logits, per_example, updated


def _sharpness_aware_gradients(model, optimizer, images, labels, config: config_lib.TrainConfig):
    """SAM's gradients (`TrainConfig.sam_rho`): the batch's gradients at the weights moved uphill by `sam_rho`.

    The uphill step is this replica's (SAM's m-sharpness), from the first
    `sam_ascent_fraction` of its batch; that pass's batch-norm and dropout
    state is discarded, so the moving statistics advance once per step, with
    the whole batch, as without SAM. Returns (gradients, logits, per-example
    losses) of the whole batch.
    """
    weights = [tf.identity(v.value) for v in model.trainable_variables]
    size = tf.shape(images)[0]
    ascent = tf.maximum(1, tf.cast(tf.math.ceil(config.sam_ascent_fraction * tf.cast(size, tf.float32)), tf.int32))

    def mean_loss(per_example):
        # Only the direction counts; loss scaling (mixed_float16) keeps it out of underflow.
        return optimizer.scale_loss(tf.reduce_mean(per_example))

    smoothing = config.label_smoothing
    uphill, *_ = _gradients_at(model, weights, images[:ascent], labels[:ascent], smoothing, mean_loss)
    step = config.sam_rho / (tf.linalg.global_norm(uphill) + 1e-12)
    moved = [w + tf.cast(step, w.dtype) * g for w, g in zip(weights, uphill, strict=True)]
    batch_loss = functools.partial(_batch_loss, optimizer, global_batch_size=config.global_batch_size)
    grads, logits, per_example, updated = _gradients_at(model, moved, images, labels, smoothing, batch_loss)
    for variable, value in zip(model.non_trainable_variables, updated, strict=True):
        variable.assign(value)
    return grads, logits, per_example


def make_train_steps(strategy, model, optimizer, config: config_lib.TrainConfig, policy: str):
    """Returns `train_steps(iterator, n, totals)`: n optimiser steps, their statistics added to `totals`.

    Several steps per call amortise Python and dispatch overhead, which
    dominates small-batch CPU training. The result is [loss_sum, correct,
    count] summed over replicas and steps (running training averages, shown in
    the progress bar only). `policy` is the model's dtype policy, which with
    `config.all_reduce_dtype` decides the dtype gradients are summed in.
    """
    reduce_dtype = strategies.gradient_all_reduce_dtype(config.all_reduce_dtype, policy, strategy)
    restart = optimizer_lib.restart_from_average(optimizer, model.trainable_variables, config.ema_overwrite_steps)

    def train_step(images, labels):
        if config.sam_rho is None:
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                per_example = per_example_loss(labels, logits, config.label_smoothing)
                scaled = _batch_loss(optimizer, per_example, config.global_batch_size)
            grads = tape.gradient(scaled, model.trainable_variables)
        else:
            grads, logits, per_example = _sharpness_aware_gradients(model, optimizer, images, labels, config)
        if reduce_dtype is not None:
            # The optimiser all-reduces the gradients in the dtype it is given
            # and casts each to its variable's dtype before the update.
            grads = [tf.cast(g, reduce_dtype) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=False))
        if restart is not None:
            restart()
        return _statistics(labels, logits, per_example, tf.ones_like(per_example))

    if config.jit_compile:
        # Only the step is compiled: the loop around it reads an iterator.
        train_step = tf.function(train_step, jit_compile=True)
    return _looped(strategy, train_step, after=_average_moving_statistics(strategy, model))


def make_eval_steps(strategy, model):
    """Returns `eval_steps(iterator, n, totals)`: [loss_sum, correct, count] in inference mode."""

    def eval_step(images, labels, weights):
        logits = model(images, training=False)
        per_example = per_example_loss(labels, logits, 0.0)
        return _statistics(labels, logits, per_example, weights)

    return _looped(strategy, eval_step)


def summarize(totals) -> dict[str, float]:
    """[loss_sum, correct, count] to {"loss": mean loss, "accuracy": fraction}."""
    loss_sum, correct, count = (float(v) for v in totals)
    return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}
