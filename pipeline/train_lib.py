"""The training library: the distributed train and eval steps, and the epoch loop `fit`.

`pipeline.train.train_and_evaluate` drives these functions with the state of
`pipeline.train_state`; the tuner runs `fit` for each trial.

One custom step serves every strategy (default, mirrored, multi-worker):
Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), while Keras 3 layers and optimisers work inside
`strategy.run`. The same step everywhere keeps metrics, checkpoints and
resume identical on one CPU and on a cluster.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import data as data_lib
from pipeline import distribution, models, preemption, train_state
from pipeline import input_pipeline as ip
from pipeline import workdir as workdir_lib

log = logging.getLogger(__name__)


def per_example_loss(labels, logits, label_smoothing: float):
    """Cross-entropy of integer `labels` against `logits`, with label smoothing."""
    one_hot = tf.one_hot(labels, logits.shape[-1])
    return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True, label_smoothing=label_smoothing)


def _statistics(labels, logits, per_example_loss, weights):
    correct = tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32)
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


def make_train_steps(strategy, model, optimizer, config: config_lib.TrainConfig, policy: str):
    """Returns `train_steps(iterator, n, totals)`: n optimiser steps, their statistics added to `totals`.

    Several steps per call amortise Python and dispatch overhead, which
    dominates small-batch CPU training. The result is [loss_sum, correct,
    count] summed over replicas and steps (running training averages, shown in
    the progress bar only). `policy` is the model's dtype policy, which with
    `config.all_reduce_dtype` decides the dtype gradients are summed in.
    """
    reduce_dtype = distribution.gradient_all_reduce_dtype(config.all_reduce_dtype, policy, strategy)

    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = per_example_loss(labels, logits, config.label_smoothing)
            # Divide by the *global* batch: replicas' gradients are summed.
            loss = tf.reduce_sum(per_example) / config.global_batch_size
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        if reduce_dtype is not None:
            # The optimiser all-reduces the gradients in the dtype it is given
            # and casts each to its variable's dtype before the update.
            grads = [tf.cast(g, reduce_dtype) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=False))
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


def release_in_background(holder: list) -> None:
    """Drops the iterator in `holder` (its only reference) on another thread.

    Destroying a tf.data iterator waits for its autotuning thread to wake,
    which took seconds with the processor idle. Our datasets turn autotuning
    off (`input_pipeline.pipeline_options`), but the per-device datasets
    that tf.distribute builds around them autotune regardless, so each
    epoch's iterators are destroyed off the training thread. The thread is
    not a daemon: the interpreter waits for it at exit, since killing a
    thread inside TensorFlow's destructor aborts the process.
    """
    threading.Thread(target=holder.clear, name="release-iterator").start()


def summarize(totals) -> dict[str, float]:
    """[loss_sum, correct, count] to {"loss": mean loss, "accuracy": fraction}."""
    loss_sum, correct, count = (float(v) for v in totals)
    return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}


def evaluate(strategy, eval_steps_fn, eval_fn, split: data_lib.Split) -> dict[str, float]:
    """Loss and accuracy over a whole split, inference mode, each example once."""
    ds, num_steps = eval_fn(split)
    iterator = [iter(ds)]
    totals = eval_steps_fn(iterator[0], tf.constant(num_steps), tf.zeros([3], tf.float64))
    release_in_background(iterator)
    return summarize(totals)


def write_summaries(writers: dict, epoch: int, record: dict) -> None:
    """TensorBoard scalars for one epoch."""
    for split, writer in writers.items():
        with writer.as_default(step=epoch):
            tf.summary.scalar("loss", record[f"{split}_loss"])
            tf.summary.scalar("accuracy", record[f"{split}_accuracy"])
            if split == "train":
                tf.summary.scalar("learning_rate", record["learning_rate"])


def record_if_best(state: train_state.TrainState, record: dict) -> bool:
    """Remembers `record` as the best epoch when its validation accuracy is the highest so far."""
    if record["val_accuracy"] > float(state.best_val_accuracy.numpy()):
        state.best_val_accuracy.assign(record["val_accuracy"])
        state.best_epoch.assign(record["epoch"])
        return True
    return False


def should_stop(config: config_lib.Config, state: train_state.TrainState, epoch: int) -> bool:
    """Early stopping: `patience` epochs since the best one."""
    patience = config.train.early_stopping_patience
    return patience is not None and epoch - int(state.best_epoch.numpy()) >= patience


def train_epoch(
    config: config_lib.Config,
    strategy,
    state: train_state.TrainState,
    train_steps_fn,
    dataset,
    steps_per_epoch: int,
    progress: bool,
    stop: preemption.StopSignal | None,
    seconds_before: float,
) -> dict[str, float]:
    """Trains the rest of one epoch in compiled calls of `steps_per_execution` steps.

    After every call: show progress; when a stop was requested on any worker,
    save the position and raise `TrainingStopped`; every
    `checkpoint_every_steps` steps, save the position.
    """
    chunk, every = config.train.steps_per_execution, config.train.checkpoint_every_steps
    iterator = [iter(dataset)]  # The only reference, for `release_in_background`.
    bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "accuracy"]) if progress else None
    done, totals = int(state.epoch_step.numpy()), state.epoch_totals.numpy()
    started, last_saved = time.perf_counter(), done
    while done < steps_per_epoch:
        n = min(chunk, steps_per_epoch - done)
        totals = train_steps_fn(iterator[0], tf.constant(n), tf.constant(totals, tf.float64)).numpy()
        done += n
        if bar:
            running = summarize(totals)
            bar.update(done, [("loss", running["loss"]), ("accuracy", running["accuracy"])])
        # At the epoch's end `fit` asks, after validating and checkpointing the epoch.
        stopping = done < steps_per_epoch and stop is not None and stop.agreed(strategy)
        if stopping or (done < steps_per_epoch and every and done - last_saved >= every):
            state.epoch_step.assign(done)
            state.epoch_totals.assign(totals)
            state.epoch_seconds.assign(seconds_before + time.perf_counter() - started)
            path = train_state.save(state)
            last_saved = done
            if stopping:
                if bar:
                    print(flush=True)  # End the progress bar's line.
                raise preemption.TrainingStopped(_stopped_message(stop, state, path), stop.signum)
    release_in_background(iterator)
    return summarize(totals)


def _stopped_message(stop: preemption.StopSignal, state: train_state.TrainState, path: str) -> str:
    name = signal.Signals(stop.signum).name
    return (
        f"stopped by {name} at optimizer step {int(state.optimizer.iterations.numpy())} "
        f"({train_state.describe_position(state)}); checkpoint {path}; rerun the same command to resume"
    )


def fit(
    config: config_lib.Config,
    strategy,
    state: train_state.TrainState,
    dataset: data_lib.Dataset,
    history: list[dict],
    out_dir: Path,
    progress: bool,
    on_epoch_end=None,
    deadline: float | None = None,
    stop: preemption.StopSignal | None = None,
) -> list[dict]:
    """Trains from the restored position to `config.train.epochs`, checkpointing each epoch.

    Args:
      config: the run's configuration.
      strategy: the distribution strategy the state was built under.
      state: from `train_state.build_state`, restored by `train_state.restore`.
      dataset: the three splits.
      history: the records of the epochs already completed.
      out_dir: where this process writes checkpoints and TensorBoard logs.
      progress: show a progress bar and a line per epoch.
      on_epoch_end: optional `fn(record)` called after each epoch (tuning).
      deadline: optional `time.time()` after which no new epoch starts.
      stop: the installed `StopSignal`, if any: a requested stop saves a
        checkpoint at the next step boundary and raises `TrainingStopped`.

    Returns:
      The full per-epoch history, earlier invocations' epochs included.
    """
    steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
    train_steps = make_train_steps(strategy, state.model, state.optimizer, config.train, state.policy)
    eval_steps = make_eval_steps(strategy, models.single_view(state.model))
    train_fn, eval_fn = ip.distributed_datasets(config, strategy, dataset)
    writers = {s: tf.summary.create_file_writer(str(out_dir / "tensorboard" / s)) for s in ("train", "val")}
    elapsed = history[-1]["elapsed_seconds"] if history else 0.0
    for epoch in range(int(state.epoch.numpy()) + 1, config.train.epochs + 1):
        start_step = int(state.epoch_step.numpy())
        if start_step == 0 and should_stop(config, state, epoch - 1):
            log.info("early stopping: no better validation accuracy since epoch %d", int(state.best_epoch.numpy()))
            break
        if start_step == 0 and deadline is not None and time.time() > deadline:
            log.info("time budget reached before epoch %d", epoch)
            break
        start, seconds_before = time.perf_counter(), float(state.epoch_seconds.numpy())
        if progress:
            print(f"Epoch {epoch}/{config.train.epochs}", flush=True)
        running = train_epoch(
            config,
            strategy,
            state,
            train_steps,
            train_fn(epoch, start_step),
            steps_per_epoch,
            progress,
            stop,
            seconds_before,
        )
        val = evaluate(strategy, eval_steps, eval_fn, dataset.validation)
        seconds = seconds_before + time.perf_counter() - start
        elapsed += seconds
        record = {
            "epoch": epoch,
            "train_loss": running["loss"],
            "train_accuracy": running["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "learning_rate": float(np.asarray(state.optimizer.learning_rate)),
            "seconds": seconds,
            "elapsed_seconds": elapsed,
        }
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs",
            epoch,
            record["train_loss"],
            record["train_accuracy"],
            val["loss"],
            val["accuracy"],
            seconds,
        )
        if record_if_best(state, record):
            with workdir_lib.writing("the best weights", out_dir / "best"):
                state.best_manager.save(checkpoint_number=epoch)
        history.append(record)
        write_summaries(writers, epoch, record)
        state.epoch.assign(epoch)
        for variable in (state.epoch_step, state.epoch_totals, state.epoch_seconds):
            variable.assign(tf.zeros_like(variable))
        # History before checkpoint: a crash between the two re-runs the epoch
        # and the history is truncated to the checkpoint's epoch on resume.
        if distribution.is_chief(strategy):
            workdir_lib.write_json(out_dir / "history.json", history)
        path = train_state.save(state)
        if on_epoch_end:
            on_epoch_end(record)
        if stop is not None and epoch < config.train.epochs and stop.agreed(strategy):
            raise preemption.TrainingStopped(_stopped_message(stop, state, path), stop.signum)
    return history
