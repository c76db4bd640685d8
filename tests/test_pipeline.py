"""The tf.data pipeline: shapes, ranges, batch arithmetic, determinism, augmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_images

from pipeline import presets
from pipeline.config import AugmentConfig
from pipeline.data import augment as augment_lib
from pipeline.data import input_pipeline as ip
from pipeline.data import sources as data_lib

LABELS = np.arange(200) % 10
IMAGES = make_images(LABELS, seed=1)
NO_AUGMENT = AugmentConfig(enabled=False)
STRONG = AugmentConfig(enabled=True, flip=True, max_shift=3, erase_probability=0.5)


def _first(ds, n=1):
    return [tuple(t.numpy() for t in batch) for batch in ds.take(n)]


def test_per_replica_batch_size():
    assert ip.per_replica_batch_size(128, 4) == 32
    assert ip.per_replica_batch_size(32, 1) == 32
    with pytest.raises(ValueError, match="global batch size 130 is not divisible by the 4 replicas"):
        ip.per_replica_batch_size(130, 4)


def test_train_batches_shapes_dtypes_range():
    images, labels = _first(ip.train_dataset(IMAGES, LABELS, 32, seed=0, epoch=0, augment=NO_AUGMENT))[0]
    assert images.shape == (32, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (32,) and labels.dtype == np.int64
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_train_order_is_seeded_and_reshuffled_per_epoch():
    def labels_of(seed, epoch):
        ds = ip.train_dataset(IMAGES, np.arange(200), 50, seed=seed, epoch=epoch, augment=NO_AUGMENT)
        return np.concatenate([b[1] for b in _first(ds, 4)])

    first = labels_of(0, 0)
    np.testing.assert_array_equal(first, labels_of(0, 0))
    assert sorted(first) == list(range(200))  # One epoch is a permutation.
    assert not np.array_equal(first, labels_of(0, 1))
    assert not np.array_equal(first, labels_of(1, 0))


def test_normalisation_matches_the_raw_pixels():
    ds = ip.train_dataset(IMAGES, np.arange(200), 200, seed=0, epoch=0, augment=NO_AUGMENT)
    images, order = _first(ds)[0]
    np.testing.assert_allclose(images[..., 0], IMAGES[order] / 255.0, atol=1e-6)


def test_augmentation_keeps_shapes_dtypes_labels_and_changes_pixels():
    plain = _first(ip.train_dataset(IMAGES, LABELS, 64, seed=0, epoch=0, augment=NO_AUGMENT))[0]
    augmented = _first(ip.train_dataset(IMAGES, LABELS, 64, seed=0, epoch=0, augment=STRONG))[0]
    assert augmented[0].shape == plain[0].shape and augmented[0].dtype == plain[0].dtype
    np.testing.assert_array_equal(augmented[1], plain[1])
    assert not np.allclose(augmented[0], plain[0])
    assert 0.0 <= augmented[0].min() and augmented[0].max() <= 1.0
    again = _first(ip.train_dataset(IMAGES, LABELS, 64, seed=0, epoch=0, augment=STRONG))[0]
    np.testing.assert_array_equal(augmented[0], again[0])


def test_shift_moves_content_without_losing_it():
    image = np.zeros((1, 28, 28, 1), np.float32)
    image[0, 10:14, 10:14] = 1.0
    config = AugmentConfig(flip=False, max_shift=2)
    shifted = augment_lib.augment_batch(tf.constant(image), config, tf.constant([1, 2], tf.int64)).numpy()
    assert shifted.sum() == image.sum()


def test_eval_is_deterministic_unaugmented_and_padded():
    ds = ip.eval_dataset(IMAGES[:70], LABELS[:70], 32, steps=3)
    batches = _first(ds, 3)
    assert len(list(ds)) == 3
    images = np.concatenate([b[0] for b in batches])[..., 0]
    weights = np.concatenate([b[2] for b in batches])
    np.testing.assert_allclose(images[:70], IMAGES[:70] / 255.0, atol=1e-6)
    assert weights.sum() == 70 and weights[70:].sum() == 0
    for x, y in zip(batches, _first(ds, 3), strict=False):
        np.testing.assert_array_equal(x[0], y[0])


def test_shards_cover_every_example_once():
    class Context:
        num_input_pipelines, input_pipeline_id = 3, 0

    seen = []
    for shard in range(3):
        Context.input_pipeline_id = shard
        steps = ip.eval_steps(200, 16, 3)
        for _, labels, weights in _first(ip.eval_dataset(IMAGES, np.arange(200), 16, steps, Context), steps):
            seen += list(labels[weights > 0])
    assert sorted(seen) == list(range(200))


def test_steps_per_epoch():
    assert ip.steps_per_epoch(1000, 128) == 7
    with pytest.raises(ValueError, match="smaller --global_batch_size"):
        ip.steps_per_epoch(100, 128)


def _flips_and_shifts(image, max_shift):
    """Every image that a flip (or none) and a shift of up to `max_shift` can make, by NumPy."""
    for source in (image, image[:, ::-1]):
        padded = np.pad(source, max_shift)
        for dy in range(2 * max_shift + 1):
            for dx in range(2 * max_shift + 1):
                yield (dy, dx, source is not image), padded[dy : dy + 28, dx : dx + 28]


def test_each_augmented_image_is_exactly_a_flip_and_shift_and_all_occur():
    images = ip.normalize(IMAGES[:64])
    config = AugmentConfig(flip=True, max_shift=2)
    augmented = augment_lib.augment_batch(images, config, tf.constant([5, 6], tf.int64)).numpy()[..., 0]
    seen = set()
    for original, result in zip(images.numpy()[..., 0], augmented, strict=True):
        matches = [how for how, candidate in _flips_and_shifts(original, 2) if np.array_equal(candidate, result)]
        assert matches, "an augmented image is not a flip and shift of its source"
        seen.update((flipped, dy) for dy, _, flipped in matches)
    assert {True, False} <= {flipped for flipped, _ in seen} and len({dy for _, dy in seen}) == 5


def test_index_shuffle_gives_the_order_of_shuffling_the_examples():
    # Runs trained before indices replaced examples in the shuffle must reproduce exactly.
    ours = ip.train_dataset(IMAGES, LABELS, 50, seed=3, epoch=2, augment=NO_AUGMENT)
    examples = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS.astype(np.int64)))
    reference = examples.shuffle(200, seed=ip.epoch_seed(3, 2, 0), reshuffle_each_iteration=True).repeat().batch(50)
    for (images, labels), (want_images, want_labels) in zip(_first(ours, 8), _first(reference, 8), strict=True):
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_allclose(images[..., 0], want_images / 255.0, atol=1e-6)


def test_datasets_run_without_tf_data_autotuning():
    # Destroying an epoch's iterator waited for the autotuning thread (see
    # `pipeline_options`); every training and evaluation dataset turns it off.
    train = ip.train_dataset(IMAGES, LABELS, 32, 0, 1, STRONG)
    evaluation = ip.eval_dataset(IMAGES, LABELS, 32, ip.eval_steps(len(LABELS), 32, 1))
    for ds in (train, evaluation, train.take(3)):
        assert ds.options().autotune.enabled is False
    assert len(_first(train, 2)) == 2


def _numbered(batch: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Image i filled with the value i + 1, labelled i % 10."""
    images = tf.ones([batch, 28, 28, 1]) * tf.range(1.0, batch + 1.0)[:, None, None, None]
    return images, tf.range(batch, dtype=tf.int64) % 10


def test_cutmix_pastes_a_box_of_the_partner_and_weighs_the_targets_by_its_pixels():
    images, labels = _numbered(40)
    mixed, targets = (t.numpy() for t in augment_lib.cutmix(images, labels, 1.0, tf.constant([3, 4], tf.int64)))
    assert targets.shape == (40, 10) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    boxed = 0
    for i in range(40):
        partner = 39 - i
        pasted = mixed[i, ..., 0] == partner + 1
        assert np.all(pasted | (mixed[i, ..., 0] == i + 1))  # Every pixel is the image's or its partner's.
        rows, cols = np.nonzero(pasted)
        if len(rows):  # One axis-aligned box.
            boxed += 1
            assert pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        share = pasted.mean()
        if labels[i] != labels[partner]:
            assert targets[i, labels[partner]] == pytest.approx(share, abs=1e-6)
            assert targets[i, labels[i]] == pytest.approx(1 - share, abs=1e-6)
    assert boxed > 30  # Areas are uniform in [0, 1]: few round to nothing.


def test_cutmix_is_off_at_probability_zero_and_repeats_for_a_seed():
    images, labels = _numbered(32)
    seed = tf.constant([1, 2], tf.int64)
    mixed, targets = augment_lib.cutmix(images, labels, 0.0, seed)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(targets, tf.one_hot(labels, 10))
    first, again = augment_lib.cutmix(images, labels, 0.5, seed), augment_lib.cutmix(images, labels, 0.5, seed)
    np.testing.assert_array_equal(first[0], again[0])
    changed = np.any(first[0].numpy() != images.numpy(), axis=(1, 2, 3)).mean()
    assert 0.25 < changed < 0.75


def test_cutmix_batches_carry_float_targets_and_leave_the_other_augmentations_as_they_were():
    strong_mixed = AugmentConfig(enabled=True, flip=True, max_shift=3, erase_probability=0.5, cutmix_probability=0.5)
    plain = _first(ip.train_dataset(IMAGES, LABELS, 64, seed=0, epoch=1, augment=STRONG))[0]
    mixed = _first(ip.train_dataset(IMAGES, LABELS, 64, seed=0, epoch=1, augment=strong_mixed))[0]
    assert mixed[1].shape == (64, 10) and mixed[1].dtype == np.float32
    # The batch is the one the same seed gives without CutMix: about half its
    # images got no box and are exactly what they would be without it.
    same = np.all(mixed[0] == plain[0], axis=(1, 2, 3)) & (mixed[1].max(axis=1) == 1.0)
    assert 0.25 < same.mean() < 0.9
    np.testing.assert_array_equal(mixed[1][same], np.eye(10, dtype=np.float32)[plain[1][same]])
    np.testing.assert_allclose(mixed[1].sum(axis=1), 1.0, atol=1e-6)


def test_erasing_stops_for_the_final_epochs_and_nothing_else_changes(tiny_data_dir):
    base = presets.preset("smoke")
    erasing = base.replace(
        data=dataclasses.replace(base.data, data_dir=str(tiny_data_dir), validation_size=64),
        augment=dataclasses.replace(base.augment, erase_probability=1.0, erase_off_final_epochs=1),
        train=dataclasses.replace(base.train, epochs=3),
    )
    never = erasing.replace(augment=dataclasses.replace(erasing.augment, erase_probability=0.0))
    dataset = data_lib.load(erasing.data)
    strategy = tf.distribute.get_strategy()
    with_erasing, without = (ip.distributed_datasets(c, strategy, dataset)[0] for c in (erasing, never))
    for epoch, erased in ((1, True), (2, True), (3, False)):
        (images, labels), (plain, plain_labels) = _first(with_erasing(epoch))[0], _first(without(epoch))[0]
        np.testing.assert_array_equal(labels, plain_labels)
        assert np.array_equal(images, plain) != erased, epoch
    assert augment_lib.erases_in(erasing.augment, 2, 3) and not augment_lib.erases_in(erasing.augment, 3, 3)


def test_a_run_s_stream_is_each_epoch_s_own_batches_in_turn():
    # Resumed 2 batches into epoch 2 of 4, erasing off in the last epoch,
    # alternating flips: each epoch's batches are those of that epoch's own
    # endless dataset, whatever epoch the stream started at.
    augment = AugmentConfig(enabled=True, flip=True, max_shift=2, erase_probability=0.5, erase_off_final_epochs=1)
    stream = ip.train_dataset(IMAGES, LABELS, 32, 7, 2, augment, start_batch=2, final_epoch=4, batches_per_epoch=6)
    # Endless, so tf.distribute keeps each step's static batch size (see `train_dataset`).
    assert stream.cardinality() == tf.data.INFINITE_CARDINALITY
    got = _first(stream, 4 + 6 + 6)
    for epoch, first, batches in ((2, 2, got[:4]), (3, 0, got[4:10]), (4, 0, got[10:])):
        own = augment if epoch < 4 else dataclasses.replace(augment, erase_probability=0.0)
        alone = ip.train_dataset(IMAGES, LABELS, 32, 7, epoch, own, start_batch=first)
        for (images, labels), (want_images, want_labels) in zip(batches, _first(alone, len(batches)), strict=True):
            np.testing.assert_array_equal(labels, want_labels)
            np.testing.assert_array_equal(images, want_images)
