"""What a training checkpoint holds: the state built for a run, saving it, and where it stands.

Checkpoints are numbered by optimizer step (`checkpoints/ckpt-<step>`): one at
the end of every epoch, and mid-epoch ones when training is stopped by a
signal or `train.checkpoint_every_steps` asks for them. Besides the model,
optimiser and counters, a checkpoint holds the position inside the epoch
(optimizer steps, running loss and accuracy sums, seconds), so a run resumed
mid-epoch ends exactly as an uninterrupted one. `training.restore` reads them back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.cluster import strategies
from pipeline.data import input_pipeline as ip
from pipeline.model import network as models
from pipeline.model import views
from pipeline.runs import final_model
from pipeline.runs import workdir as workdir_lib
from pipeline.training import optimizer as optimizer_lib

CHECKPOINTS = "checkpoints"


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds, and the objects that use it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    epoch: tf.Variable  # Completed epochs.
    best_val_accuracy: tf.Variable
    best_epoch: tf.Variable
    # Position inside the epoch in progress: optimizer steps done (0 at an
    # epoch boundary), [loss_sum, correct, count] so far, and seconds spent.
    epoch_step: tf.Variable
    epoch_totals: tf.Variable
    epoch_seconds: tf.Variable
    topology: tf.Variable  # [workers, replicas in all] writing the checkpoints.
    manager: tf.train.CheckpointManager
    best_manager: tf.train.CheckpointManager
    policy: str = "float32"  # The model's Keras dtype policy.
    # The network alone (shared weights, no test-time views), built once: what
    # checkpoints hold and per-epoch validation evaluates.
    network: keras.Model | None = None
    checkpoint_every_steps: int | None = None
    restored_topology: tuple[int, int] | None = None  # The restored checkpoint's, if it recorded one.

    def core(self) -> tf.train.Checkpoint:
        """The checkpoint's fields that every checkpoint has had."""
        return tf.train.Checkpoint(
            model=self.network,
            optimizer=self.optimizer,
            epoch=self.epoch,
            best_val_accuracy=self.best_val_accuracy,
            best_epoch=self.best_epoch,
            random_states=random_states(self.model),
        )

    def position(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            step=self.epoch_step, totals=self.epoch_totals, seconds=self.epoch_seconds, topology=self.topology
        )


def build_state(
    config: config_lib.Config,
    strategy,
    policy: str,
    steps_per_epoch: int,
    out_dir: Path,
    train_images: np.ndarray | None = None,
) -> TrainState:
    """Builds the seeded model, the optimiser and the counters, with their checkpoint managers.

    `train_images` (uint8 [N, 28, 28]) are needed when the first convolution
    is initialised from the data (`ModelConfig.stem_init`).
    """
    with strategy.scope():
        keras.utils.set_random_seed(config.train.seed)
        sync = strategy.num_replicas_in_sync > 1 and config.train.batch_norm_statistics == "global"
        model = models.build_model(config.model, dtype=policy, sync_batch_norm=sync)
        if config.model.stem_init != "default":
            if train_images is None:
                raise ValueError(f"model.stem_init={config.model.stem_init} needs the training images")
            models.initialize_stem(model, config.model, ip.normalize(train_images[: models.WHITENING_SAMPLE]).numpy())
        optimizer = optimizer_lib.build_optimizer(config.train, steps_per_epoch, policy)
        # Build slots now so a restore fills them instead of deferring.
        optimizer.build(model.trainable_variables)
        counters = dict(
            epoch=tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
            best_val_accuracy=tf.Variable(-1.0, trainable=False, name="best_val_accuracy"),
            best_epoch=tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch"),
            epoch_step=tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_step"),
            epoch_totals=tf.Variable(tf.zeros([3], tf.float64), trainable=False, name="epoch_totals"),
            epoch_seconds=tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_seconds"),
            topology=tf.Variable(topology_of(strategy), dtype=tf.int64, trainable=False, name="topology"),
        )
    state = TrainState(
        model,
        optimizer,
        **counters,
        manager=None,
        best_manager=None,
        policy=policy,
        network=views.single_view(model),
        checkpoint_every_steps=config.train.checkpoint_every_steps,
    )
    # The model is tracked single-view (as in `final_model.weights_checkpoint`),
    # so the test-time views can change after training.
    checkpoint = state.core()
    checkpoint.position = state.position()
    state.manager = _manager(state, checkpoint, out_dir / CHECKPOINTS, last_step=0)
    state.best_manager = tf.train.CheckpointManager(
        final_model.weights_checkpoint(state.network), out_dir / "best", max_to_keep=1
    )
    return state


def _manager(state: TrainState, checkpoint, directory, last_step: int) -> tf.train.CheckpointManager:
    """The checkpoint manager: 2 kept, and (`checkpoint_every_steps`) an interval in optimizer steps.

    `save(periodic=True)` asks the manager's own interval whether a periodic
    checkpoint is due: `checkpoint_every_steps` optimizer steps after the last
    checkpoint of any kind (`last_step`, the restored step on resume).
    """
    every = state.checkpoint_every_steps
    return tf.train.CheckpointManager(
        checkpoint,
        directory,
        max_to_keep=2,
        step_counter=state.optimizer.iterations if every else None,
        checkpoint_interval=every,
        last_checkpoint_step=last_step if every else None,
    )


def reset_manager(state: TrainState, last_step: int) -> None:
    """A new checkpoint manager: it reads the state file anew and counts its interval from `last_step`."""
    state.manager = _manager(state, state.manager.checkpoint, state.manager.directory, last_step)


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


def topology_of(strategy) -> list[int]:
    """[workers, replicas in all] that `strategy` trains on."""
    return [strategies.num_workers(strategy), strategy.num_replicas_in_sync]


def describe_position(state: TrainState) -> str:
    """Where training stands, for the console: "epoch 3 completed" or "epoch 4 in progress, 17 steps into it"."""
    step = int(state.epoch_step.numpy())
    if step:
        return f"epoch {int(state.epoch.numpy()) + 1} in progress, {step} steps into it"
    return f"epoch {int(state.epoch.numpy())} completed"


def check_epochs_ahead(state: TrainState, epochs: int) -> None:
    """Refuses `epochs` that end before the restored position (a run cannot be shortened below it).

    Training stops at `epochs`, so fewer epochs than the checkpoint already
    holds (or than the epoch in progress) would leave weights trained longer
    than the config the run records says.

    Raises:
      WorkdirError: naming the position and the smallest `--epochs` that resumes it.
    """
    needed = int(state.epoch.numpy()) + (1 if int(state.epoch_step.numpy()) else 0)
    if epochs < needed:
        raise workdir_lib.WorkdirError(
            f"--epochs={epochs} ends before this workdir's checkpoint ({describe_position(state)}); "
            f"pass --epochs={needed} or more to resume it, or use a new --workdir"
        )


def save(state: TrainState, periodic: bool = False) -> str | None:
    """Saves a checkpoint numbered by optimizer step; a full or unwritable disk is a one-line error.

    With `periodic`, only when the manager's interval says one is due
    (`checkpoint_every_steps`); returns None when none was written. A forced
    save at the step of the last checkpoint returns that checkpoint. The
    checkpoint is written to a temporary name and renamed into place by
    TensorFlow, so a failed save leaves every earlier checkpoint intact.
    """
    if periodic and not state.checkpoint_every_steps:
        return None
    directory = state.manager.directory
    with workdir_lib.writing("a checkpoint", directory):
        path = state.manager.save(checkpoint_number=int(state.optimizer.iterations.numpy()), check_interval=periodic)
    return path if path is not None or periodic else state.manager.latest_checkpoint
