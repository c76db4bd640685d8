"""Training driver: small named steps and one short `train_and_evaluate`.

The same code runs under the default strategy, MirroredStrategy and
MultiWorkerMirroredStrategy (see `pipeline.steps` for why it is a custom loop).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import data as data_lib
from pipeline import distribution, final_model, models, steps
from pipeline import input_pipeline as ip
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


def build_model(config: config_lib.Config, strategy, policy: str) -> keras.Model:
    """The configured model, seeded; call under `strategy.scope()`."""
    keras.utils.set_random_seed(config.train.seed)
    return models.build_model(config.model, dtype=policy, sync_batch_norm=strategy.num_replicas_in_sync > 1)


def build_state(
    config: config_lib.Config,
    strategy,
    policy: str,
    steps_per_epoch: int,
    out_dir: Path,
    model: keras.Model | None = None,
) -> TrainState:
    """Builds (or adopts) the model, then optimiser and counters, with checkpoint managers."""
    with strategy.scope():
        model = model or build_model(config, strategy, policy)
        optimizer = steps.build_optimizer(config.train, steps_per_epoch, policy)
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


def distributed_datasets(config: config_lib.Config, strategy, dataset: data_lib.Dataset):
    """Returns (train_fn(epoch) -> distributed dataset, eval_fn(split) -> (dataset, steps))."""
    replicas = strategy.num_replicas_in_sync
    per_replica = ip.per_replica_batch_size(config.train.global_batch_size, replicas)
    log.info(
        "global batch %d = %d replicas x per-replica batch %d", config.train.global_batch_size, replicas, per_replica
    )
    train = dataset.train
    # Batch-per-replica is what distribute_datasets_from_function expects.
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)

    def train_fn(epoch: int):
        return strategy.distribute_datasets_from_function(
            lambda ctx: ip.train_dataset(
                train.images, train.labels, per_replica, config.train.seed, epoch, config.augment, ctx
            ),
            options,
        )

    def eval_fn(split: data_lib.Split):
        pipelines = distribution.num_workers(strategy)
        replicas_per_pipeline = replicas // pipelines
        num_steps = ip.eval_steps(len(split), per_replica * replicas_per_pipeline, pipelines)
        ds = strategy.distribute_datasets_from_function(
            lambda ctx: ip.eval_dataset(
                split.images, split.labels, per_replica, num_steps * replicas_per_pipeline, ctx
            ),
            options,
        )
        return ds, num_steps

    return train_fn, eval_fn


def evaluate(strategy, eval_steps_fn, eval_fn, split: data_lib.Split) -> dict[str, float]:
    """Loss and accuracy over a whole split, inference mode, each example once."""
    ds, num_steps = eval_fn(split)
    return steps.summarize(eval_steps_fn(iter(ds), tf.constant(num_steps)))


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
            running = steps.summarize(totals)
            bar.update(done, [("loss", running["loss"]), ("accuracy", running["accuracy"])])
    return steps.summarize(totals)


def write_summaries(writers: dict, epoch: int, record: dict) -> None:
    """TensorBoard scalars for one epoch."""
    for split, writer in writers.items():
        with writer.as_default(step=epoch):
            tf.summary.scalar("loss", record[f"{split}_loss"])
            tf.summary.scalar("accuracy", record[f"{split}_accuracy"])
            if split == "train":
                tf.summary.scalar("learning_rate", record["learning_rate"])


def record_if_best(state: TrainState, record: dict) -> bool:
    if record["val_accuracy"] > float(state.best_val_accuracy.numpy()):
        state.best_val_accuracy.assign(record["val_accuracy"])
        state.best_epoch.assign(record["epoch"])
        return True
    return False


def should_stop(config: config_lib.Config, state: TrainState, epoch: int) -> bool:
    patience = config.train.early_stopping_patience
    return patience is not None and epoch - int(state.best_epoch.numpy()) >= patience
