"""The training library: state and checkpoints, the distributed steps, the epoch loop.

`pipeline.train.train_and_evaluate` drives these functions; the tuner calls
`build_state`, `restore` and `fit` for each trial.

One custom step serves every strategy (default, mirrored, multi-worker):
Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), while Keras 3 layers and optimisers work inside
`strategy.run`. The same step everywhere keeps metrics, checkpoints and
resume identical on one CPU and on a cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import data as data_lib
from pipeline import distribution, final_model, models
from pipeline import input_pipeline as ip
from pipeline import optimizer as optimizer_lib
from pipeline import workdir as workdir_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds, and the objects that use it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    epoch: tf.Variable  # Completed epochs.
    best_val_accuracy: tf.Variable
    best_epoch: tf.Variable
    manager: tf.train.CheckpointManager
    best_manager: tf.train.CheckpointManager


def build_state(config: config_lib.Config, strategy, policy: str, steps_per_epoch: int, out_dir: Path) -> TrainState:
    """Builds the seeded model, the optimiser and the counters, with their checkpoint managers."""
    with strategy.scope():
        keras.utils.set_random_seed(config.train.seed)
        model = models.build_model(config.model, dtype=policy, sync_batch_norm=strategy.num_replicas_in_sync > 1)
        optimizer = optimizer_lib.build_optimizer(config.train, steps_per_epoch, policy)
        # Build slots now so a restore fills them instead of deferring.
        optimizer.build(model.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        best = tf.Variable(-1.0, trainable=False, name="best_val_accuracy")
        best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    # The model is tracked as in `final_model.weights_checkpoint`: single-view,
    # so the test-time views can change after training.
    checkpoint = tf.train.Checkpoint(
        model=models.single_view(model),
        optimizer=optimizer,
        epoch=epoch,
        best_val_accuracy=best,
        best_epoch=best_epoch,
        random_states=random_states(model),
    )
    manager = tf.train.CheckpointManager(checkpoint, out_dir / "checkpoints", max_to_keep=2)
    best_manager = tf.train.CheckpointManager(final_model.weights_checkpoint(model), out_dir / "best", max_to_keep=1)
    return TrainState(model, optimizer, epoch, best, best_epoch, manager, best_manager)


def random_states(model: keras.Model) -> dict[str, tf.Variable]:
    """The dropout layers' random-number states, by layer name.

    Keras 3 keeps them in `SeedGenerator` objects that TensorFlow's checkpoint
    does not track, so without this a resumed run would replay the dropout
    masks of the first epoch instead of continuing the sequence, and would
    not match an uninterrupted run.
    """
    return {
        layer.name: layer.seed_generator.state
        for layer in model.layers
        if isinstance(getattr(layer, "seed_generator", None), keras.random.SeedGenerator)
    }


def restore(state: TrainState, workdir: Path, strategy) -> int:
    """Restores the newest checkpoint in the chief's workdir; returns completed epochs.

    Every worker reads the chief's checkpoint (the workdir must be shared on a
    multi-host cluster); a consistency check stops workers that disagree.
    """
    latest = tf.train.latest_checkpoint(workdir / "checkpoints")
    if latest:
        state.manager.checkpoint.restore(latest).assert_existing_objects_matched()
        log.info("resumed from %s (epoch %d completed)", latest, int(state.epoch.numpy()))
    _check_workers_agree(strategy, int(state.epoch.numpy()))
    return int(state.epoch.numpy())


def _check_workers_agree(strategy, epoch: int) -> None:
    if distribution.num_workers(strategy) > 1:
        value = tf.constant([epoch, epoch * epoch], tf.float32)
        per_replica = strategy.run(lambda: value)
        total, squares = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
        n = strategy.num_replicas_in_sync
        if abs(n * squares - total * total) > 0.5:
            raise workdir_lib.WorkdirError(
                "workers restored different epochs: the workdir must be on a file system every "
                "worker can read (NFS, GCS, a shared volume)"
            )


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


def make_train_steps(strategy, model, optimizer, config: config_lib.TrainConfig):
    """Returns `train_steps(iterator, n)`: n optimiser steps, summed statistics.

    Several steps per call amortise Python and dispatch overhead, which
    dominates small-batch CPU training. The result is [loss_sum, correct,
    count] summed over replicas and steps (running training averages, shown in
    the progress bar only).
    """

    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = per_example_loss(labels, logits, config.label_smoothing)
            # Divide by the *global* batch: replicas' gradients are summed.
            loss = tf.reduce_sum(per_example) / config.global_batch_size
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=False))
        return _statistics(labels, logits, per_example, tf.ones_like(per_example))

    if config.jit_compile:
        # Only the step is compiled: the loop around it reads an iterator.
        train_step = tf.function(train_step, jit_compile=True)
    return _looped(strategy, train_step)


def make_eval_steps(strategy, model):
    """Returns `eval_steps(iterator, n)`: [loss_sum, correct, count] in inference mode."""

    def eval_step(images, labels, weights):
        logits = model(images, training=False)
        per_example = per_example_loss(labels, logits, 0.0)
        return _statistics(labels, logits, per_example, weights)

    return _looped(strategy, eval_step)


def summarize(totals) -> dict[str, float]:
    """[loss_sum, correct, count] to {"loss": mean loss, "accuracy": fraction}."""
    loss_sum, correct, count = (float(v) for v in totals)
    return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}


def evaluate(strategy, eval_steps_fn, eval_fn, split: data_lib.Split) -> dict[str, float]:
    """Loss and accuracy over a whole split, inference mode, each example once."""
    ds, num_steps = eval_fn(split)
    return summarize(eval_steps_fn(iter(ds), tf.constant(num_steps)))


def train_epoch(train_steps_fn, dataset, steps_per_epoch: int, chunk: int, progress: bool) -> dict[str, float]:
    """One epoch in chunks of `chunk` steps; shows a progress bar when asked."""
    iterator = iter(dataset)
    bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "accuracy"]) if progress else None
    totals, done = np.zeros(3), 0
    while done < steps_per_epoch:
        n = min(chunk, steps_per_epoch - done)
        totals += train_steps_fn(iterator, tf.constant(n)).numpy()
        done += n
        if bar:
            running = summarize(totals)
            bar.update(done, [("loss", running["loss"]), ("accuracy", running["accuracy"])])
    return summarize(totals)


def write_summaries(writers: dict, epoch: int, record: dict) -> None:
    """TensorBoard scalars for one epoch."""
    for split, writer in writers.items():
        with writer.as_default(step=epoch):
            tf.summary.scalar("loss", record[f"{split}_loss"])
            tf.summary.scalar("accuracy", record[f"{split}_accuracy"])
            if split == "train":
                tf.summary.scalar("learning_rate", record["learning_rate"])


def record_if_best(state: TrainState, record: dict) -> bool:
    """Remembers `record` as the best epoch when its validation accuracy is the highest so far."""
    if record["val_accuracy"] > float(state.best_val_accuracy.numpy()):
        state.best_val_accuracy.assign(record["val_accuracy"])
        state.best_epoch.assign(record["epoch"])
        return True
    return False


def should_stop(config: config_lib.Config, state: TrainState, epoch: int) -> bool:
    """Early stopping: `patience` epochs since the best one."""
    patience = config.train.early_stopping_patience
    return patience is not None and epoch - int(state.best_epoch.numpy()) >= patience


def fit(
    config: config_lib.Config,
    strategy,
    state: TrainState,
    dataset: data_lib.Dataset,
    history: list[dict],
    out_dir: Path,
    progress: bool,
    on_epoch_end=None,
    deadline: float | None = None,
) -> list[dict]:
    """Trains from the restored epoch to `config.train.epochs`, checkpointing each epoch.

    Args:
      config: the run's configuration.
      strategy: the distribution strategy the state was built under.
      state: from `build_state`, restored by `restore`.
      dataset: the three splits.
      history: the records of the epochs already completed.
      out_dir: where this process writes checkpoints and TensorBoard logs.
      progress: show a progress bar and a line per epoch.
      on_epoch_end: optional `fn(record)` called after each epoch (tuning).
      deadline: optional `time.time()` after which no new epoch starts.

    Returns:
      The full per-epoch history, earlier invocations' epochs included.
    """
    steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
    train_steps = make_train_steps(strategy, state.model, state.optimizer, config.train)
    eval_steps = make_eval_steps(strategy, models.single_view(state.model))
    train_fn, eval_fn = ip.distributed_datasets(config, strategy, dataset)
    writers = {s: tf.summary.create_file_writer(str(out_dir / "tensorboard" / s)) for s in ("train", "val")}
    elapsed = history[-1]["elapsed_seconds"] if history else 0.0
    for epoch in range(int(state.epoch.numpy()) + 1, config.train.epochs + 1):
        if should_stop(config, state, epoch - 1):
            log.info("early stopping: no better validation accuracy since epoch %d", int(state.best_epoch.numpy()))
            break
        if deadline is not None and time.time() > deadline:
            log.info("time budget reached before epoch %d", epoch)
            break
        start = time.perf_counter()
        if progress:
            print(f"Epoch {epoch}/{config.train.epochs}", flush=True)
        running = train_epoch(train_steps, train_fn(epoch), steps_per_epoch, config.train.steps_per_execution, progress)
        val = evaluate(strategy, eval_steps, eval_fn, dataset.validation)
        seconds = time.perf_counter() - start
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
            state.best_manager.save(checkpoint_number=epoch)
        history.append(record)
        write_summaries(writers, epoch, record)
        state.epoch.assign(epoch)
        # History before checkpoint: a crash between the two re-runs the epoch
        # and the history is truncated to the checkpoint's epoch on resume.
        if distribution.is_chief(strategy):
            workdir_lib.write_json(out_dir / "history.json", history)
        state.manager.save(checkpoint_number=epoch)
        if on_epoch_end:
            on_epoch_end(record)
    return history
