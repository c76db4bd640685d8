"""Pure functions from uint8 arrays to `tf.data.Dataset`s.

Examples stay uint8 until after batching: the data held in memory is four
times smaller than float32, and normalising (and augmenting) a whole batch at
once is one vectorised op instead of one small op per example.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from pipeline.cluster import strategies
from pipeline.config import AugmentConfig, Config
from pipeline.data import augment as augment_lib
from pipeline.data import sources as data_lib

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


def pipeline_options() -> tf.data.Options:
    """Options of every training and evaluation dataset: tf.data's autotuning off.

    The pipeline runs many times faster than any model here consumes
    (benchmark record, input pipeline), so it needs no tuning: without it a
    parallel map uses one call per core and prefetching grows its own buffer.
    And each epoch's validation iterates its dataset anew: with autotuning on,
    destroying an iterator waited for the autotuning thread, and about half
    the epochs stalled for seconds with the processor idle.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
    """The only place the global batch is divided among replicas.

    Raises:
      ValueError: when `num_replicas` does not divide `global_batch_size`, since
        an uneven split would silently change the effective batch.
    """
    if global_batch_size < 1 or num_replicas < 1:
        raise ValueError(f"batch size {global_batch_size} and replicas {num_replicas} must be >= 1")
    if global_batch_size % num_replicas:
        lower = global_batch_size - global_batch_size % num_replicas
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {num_replicas} "
            f"replicas; use a multiple of {num_replicas}, e.g. {lower or num_replicas}"
        )
    return global_batch_size // num_replicas


def normalize(images: tf.Tensor) -> tf.Tensor:
    """uint8 [..., 28, 28] (channel optional) to float32 [..., 28, 28, 1] in [0, 1].

    Shared by training, evaluation and the exported serving model, so the
    server sees exactly the preprocessing the model was trained with.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 3:
        images = images[..., tf.newaxis]
    return tf.cast(images, tf.float32) / 255.0


def _shard(images: np.ndarray, labels: np.ndarray, context: tf.distribute.InputContext | None):
    """Each input pipeline (one per worker) keeps its own contiguous shard."""
    if context is None or context.num_input_pipelines == 1:
        return images, labels
    shards = np.array_split(np.arange(len(labels)), context.num_input_pipelines)
    mine = shards[context.input_pipeline_id]
    return images[mine], labels[mine]


def epoch_seed(seed: int, epoch: int, shard_id: int) -> int:
    """The shuffle and augmentation seed of one epoch of one input pipeline."""
    return seed * 1_000_003 + epoch * 1009 + shard_id


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: AugmentConfig,
    context: tf.distribute.InputContext | None = None,
    prefetch: bool = True,
    start_batch: int = 0,
    final_epoch: int | None = None,
    batches_per_epoch: int | None = None,
) -> tf.data.Dataset:
    """Shuffled, augmented, normalised training batches: one endless epoch, or a run's epochs in turn.

    Args:
      images: uint8 [N, 28, 28].
      labels: integer [N].
      batch_size: batch size of this dataset: the per-replica batch times the
        replicas this pipeline feeds (see `per_replica_batch_size`).
      seed: the run's seed.
      epoch: the (first) epoch; folded into the seeds, so epoch k shuffles and
        augments the same way whether or not the run was interrupted before it.
      augment: augmentation settings.
      context: the input context under a distribution strategy.
      prefetch: overlap input preparation with the training step.
      start_batch: batches of `epoch` already trained (a run resumed
        mid-epoch): the stream starts with the next one, shuffled and
        augmented exactly as in an uninterrupted epoch.
      final_epoch: None for an endless stream in `epoch`'s order (its
        shuffle repeats afresh); else the run's last epoch: the stream starts
        with `batches_per_epoch` batches of each epoch from `epoch` to it, and
        stops erasing in the final `augment.erase_off_final_epochs`
        (`augment.erases_in`).
      batches_per_epoch: with `final_epoch`, the batches of each epoch.

    Returns:
      Dataset of (float32 [B, 28, 28, 1], int64 [B]); with CutMix the labels
      are float32 targets [B, classes] (`cutmix`).
    """
    images, labels = _shard(images, labels, context)
    shard_id = context.input_pipeline_id if context else 0
    num_examples = len(labels)
    flips = None
    if augment.enabled and augment.flip and augment.flip_mode == "alternating":
        # The half mirrored in odd epochs is drawn once per run (epoch 0's seed).
        flips = tf.constant(augment_lib.alternating_flips(num_examples, epoch_seed(seed, 0, shard_id), 1))
    erasing = None
    if final_epoch is not None and augment.erase_off_final_epochs:
        erasing = lambda e: augment_lib.erases_in(augment, e, final_epoch)  # noqa: E731
    # The shard stays in memory as two tensors and only indices flow through
    # the pipeline: a scalar per example through shuffle and batch, then one
    # gather per batch. It needs no cache and runs as fast as caching and
    # shuffling the images (benchmark record, input pipeline). tf.data's
    # shuffle order depends only on the seed and buffer size, so this is
    # exactly the order of shuffling the examples themselves.
    images = tf.constant(images)
    labels = tf.constant(labels.astype(np.int64))

    def batches_of(e: int) -> tf.data.Dataset:
        """(epoch, batch number, indices) of epoch `e`'s batches: index datasets only, nothing traced."""
        # Shuffle the whole shard before batching so every batch is a fresh
        # random sample; repeat after shuffle so epochs do not blend. The
        # seed stays a Python int: tf.data compares a tensor seed in Python,
        # which fails inside a traced function when the global seed is 0.
        ds = tf.data.Dataset.range(num_examples)
        ds = ds.shuffle(num_examples, seed=epoch_seed(seed, e, shard_id), reshuffle_each_iteration=True).repeat()
        # Fixed-size batches: every replica takes the same number of steps.
        skip = start_batch if e == epoch else 0
        ds = ds.batch(batch_size, drop_remainder=True).skip(skip)
        if final_epoch is not None:
            ds = ds.take(batches_per_epoch - skip)
        return tf.data.Dataset.zip(tf.data.Dataset.from_tensors(tf.constant(e, tf.int64)).repeat(), ds.enumerate(skip))

    def prepare(e, i, index):
        batch = tf.gather(images, index), tf.gather(labels, index)
        if flips is not None:
            batch += (augment_lib.mirrored_in(tf.gather(flips, index), e),)
        # Seeds are per batch and stateless.
        batch_seed = tf.stack([epoch_seed(seed, e, shard_id), i])
        return prepare_train(batch, augment, batch_seed, erasing(e) if erasing else None)

    # One dataset for the whole run, the epochs in turn: building a dataset
    # traces its functions, a noticeable part of a short epoch on a CPU and
    # more of one on an accelerator, and a single iterator prepares the next
    # epoch's first batches while this one ends and validates.
    ds = batches_of(epoch)
    for later in range(epoch + 1, (epoch if final_epoch is None else final_epoch) + 1):
        ds = ds.concatenate(batches_of(later))
    # Endless, though nothing reads past the run's last batch: tf.distribute
    # treats a finite dataset as one that may end in a partial batch, checks
    # every step for data on every worker and drops the batch's static size,
    # which changes the step's kernels (batch-norm statistics differed in
    # their last bit from a worker's own iterator).
    ds = ds.repeat()
    # Normalise and augment whole batches (vectorised), after the gather from
    # the raw uint8 arrays so each epoch sees new augmentations.
    ds = ds.map(lambda e, batch: prepare(e, *batch), num_parallel_calls=AUTOTUNE)
    return (ds.prefetch(AUTOTUNE) if prefetch else ds).with_options(pipeline_options())


def prepare_train(batch, augment: AugmentConfig, seed, erasing=None):
    """Normalises a gathered uint8 batch and, when enabled, augments it with the per-batch `seed`.

    `batch` is (images, labels) or, with alternating flips, (images, labels, flips).
    `erasing` (a bool scalar), when given, turns random erasing off for the batch.
    Returns (images, labels), or with CutMix (images, float targets [B, classes]).
    """
    images, labels, *flip = batch
    images = normalize(images)
    if augment.enabled:
        images = augment_lib.augment_batch(images, augment, seed, flip[0] if flip else None, erasing)
        if augment.cutmix_probability:
            # A stream of its own: the other augmentations draw as without it.
            mix_seed = tf.random.experimental.stateless_fold_in(seed, 1)
            images, labels = augment_lib.cutmix(images, labels, augment.cutmix_probability, mix_seed)
    return images, labels


def eval_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    steps: int,
    context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Unshuffled, unaugmented batches with a weight of 0 on padding examples.

    Every pipeline yields exactly `steps` full batches, padded with weight-0
    examples, so all workers run the same number of collective steps and
    every real example is counted exactly once.

    Returns:
      Dataset of (float32 [B, 28, 28, 1], int64 [B], float32 [B] weights).
    """
    images, labels = _shard(images, labels, context)
    pad = steps * batch_size - len(labels)
    if pad < 0:
        raise ValueError(f"{steps} steps of {batch_size} cannot hold {len(labels)} examples")
    weights = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels.astype(np.int64), np.zeros(pad, np.int64)])
    ds = tf.data.Dataset.from_tensor_slices((images, labels, weights)).cache()
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, y, w: (normalize(x), y, w), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(pipeline_options())


def eval_steps(num_examples: int, pipeline_batch_size: int, num_pipelines: int) -> int:
    """Steps that cover the largest shard of `num_examples` split over pipelines."""
    largest_shard = -(-num_examples // num_pipelines)
    return max(1, -(-largest_shard // pipeline_batch_size))


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Training steps per epoch: full global batches only."""
    if num_examples < global_batch_size:
        raise ValueError(
            f"only {num_examples} training examples for a global batch of {global_batch_size}; "
            "use a smaller --global_batch_size"
        )
    return num_examples // global_batch_size


def distributed_datasets(config: Config, strategy, dataset: data_lib.Dataset):
    """Returns (train_fn, eval_fn).

    `train_fn(epoch, start_step)` is the distributed dataset of the rest of
    the run: the batches of epochs `epoch` to `config.train.epochs` in turn,
    starting `start_step` steps into `epoch`. `eval_fn(split)` is (dataset,
    steps) of a split, built once per split and iterated afresh each time.
    """
    replicas = strategy.num_replicas_in_sync
    per_replica = per_replica_batch_size(config.train.global_batch_size, replicas)
    log.debug(
        "global batch %d = %d replicas x per-replica batch %d", config.train.global_batch_size, replicas, per_replica
    )
    train = dataset.train
    # Batch-per-replica is what distribute_datasets_from_function expects.
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    direct = strategies.direct_input_context(strategy) if config.train.input_distribution == "auto" else None

    def distribute(dataset_fn):
        # The same function and input context either way, so the same batches.
        return dataset_fn(direct) if direct else strategy.distribute_datasets_from_function(dataset_fn, options)

    # Each step takes one batch per replica from its worker's pipeline.
    replicas_per_pipeline = replicas // strategies.num_workers(strategy)
    batches_per_epoch = steps_per_epoch(len(train), config.train.global_batch_size) * replicas_per_pipeline

    def train_fn(epoch: int, start_step: int = 0):
        return distribute(
            lambda ctx: train_dataset(
                train.images,
                train.labels,
                per_replica,
                config.train.seed,
                epoch,
                config.augment,
                ctx,
                start_batch=start_step * replicas_per_pipeline,
                final_epoch=config.train.epochs,
                batches_per_epoch=batches_per_epoch,
            )
        )

    built: dict[int, tuple] = {}

    def eval_fn(split: data_lib.Split):
        # Validation runs every epoch: the dataset is built once (the split is
        # kept beside it, so its id names no other split).
        if id(split) not in built:
            pipelines = strategies.num_workers(strategy)
            num_steps = eval_steps(len(split), per_replica * replicas_per_pipeline, pipelines)
            ds = distribute(
                lambda ctx: eval_dataset(
                    split.images, split.labels, per_replica, num_steps * replicas_per_pipeline, ctx
                )
            )
            built[id(split)] = (split, ds, num_steps)
        return built[id(split)][1:]

    return train_fn, eval_fn
