"""Training-batch augmentation: pure functions of a float batch and a stateless seed.

Every function draws its randomness from the seed pair it is given, so an
epoch's augmented batches are the same wherever and whenever it is replayed
(resume, another worker count). None of it runs at evaluation.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.config import AugmentConfig
from pipeline.data import sources as data_lib


def _flip_and_shift(images: tf.Tensor, config: AugmentConfig, seeds: tf.Tensor, flip=None) -> tf.Tensor:
    """Horizontal flip and padded random crop (shift by up to `max_shift`) in one step.

    `flip` (bool [B]) says which images to mirror; None draws it at random.

    Each output image is R @ image @ C^T with one-hot row and column selectors
    R and C: a zero row of R or C is the zero padding, and a mirrored C is the
    flip. Two small batched matmuls run several times faster on CPU than the
    equivalent reverse, pad and two per-example gathers, and give bitwise the
    same images (each output is one pixel times 1.0 plus zeros).
    """
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    shift = config.max_shift
    offsets = tf.random.stateless_uniform([batch, 2], seeds[1], -shift, shift + 1, tf.int32)
    source_rows = offsets[:, :1] + tf.range(height)[tf.newaxis]
    source_cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]
    if config.flip:
        if flip is None:
            flip = tf.random.stateless_uniform([batch], seeds[0]) < 0.5
        source_cols = tf.where(flip[:, tf.newaxis], width - 1 - source_cols, source_cols)
    # one_hot of an index outside [0, size) is all zeros: the padding.
    rows = tf.one_hot(source_rows, height, dtype=images.dtype)
    cols = tf.one_hot(source_cols, width, dtype=images.dtype)
    return tf.matmul(tf.matmul(rows, images[..., 0]), cols, transpose_b=True)[..., tf.newaxis]


def _inside_boxes(top_left: tf.Tensor, bottom_right: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """bool [B, H, W]: which pixels lie in each image's box, given its float corners [B, 2] (bottom right excluded)."""
    y = tf.range(height, dtype=tf.float32)[tf.newaxis, :, tf.newaxis]
    x = tf.range(width, dtype=tf.float32)[tf.newaxis, tf.newaxis, :]
    top, left = top_left[:, 0, None, None], top_left[:, 1, None, None]
    bottom, right = bottom_right[:, 0, None, None], bottom_right[:, 1, None, None]
    return (y >= top) & (y < bottom) & (x >= left) & (x < right)


def _erase(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor, erasing=None) -> tf.Tensor:
    """Random erasing: zero one random rectangle in a fraction of the images; none where `erasing` is False."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    apply = tf.random.stateless_uniform([batch], seeds[0]) < config.erase_probability
    if erasing is not None:
        apply &= erasing
    side = tf.sqrt(config.erase_max_fraction)
    size = tf.random.stateless_uniform([batch, 2], seeds[1], 0.1, side) * [height, width]
    corner = tf.random.stateless_uniform([batch, 2], seeds[2]) * ([height, width] - size)
    erase = (_inside_boxes(corner, corner + size, height, width) & apply[:, None, None])[..., tf.newaxis]
    return tf.where(erase, tf.zeros_like(images), images)


def cutmix(images: tf.Tensor, labels: tf.Tensor, probability: float, seed: tf.Tensor):
    """CutMix: pastes a random box of a partner image into a fraction of the images.

    Each image's partner is the image at the mirrored position of the batch
    (the batch reversed): batches are shuffled samples, so that is a random
    pairing at no cost. The box keeps the image's aspect ratio, its area is
    drawn uniformly (CutMix's Beta(1, 1)) and it is clipped at the border;
    the target weighs the partner's label by the share of pixels actually
    pasted, so clipping never mislabels.

    Args:
      images: float [B, H, W, 1].
      labels: integer [B].
      probability: the chance that an image gets a box.
      seed: stateless seed pair.

    Returns:
      (images, targets): targets float32 [B, classes], each row summing to 1.
    """
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    apply = tf.random.stateless_uniform([batch], seeds[0]) < probability
    side = tf.sqrt(tf.random.stateless_uniform([batch, 1], seeds[1])) * [height, width]
    centre = tf.random.stateless_uniform([batch, 2], seeds[2]) * [height, width]
    top_left = tf.clip_by_value(tf.round(centre - side / 2), 0.0, [height, width])
    bottom_right = tf.clip_by_value(tf.round(centre + side / 2), 0.0, [height, width])
    inside = _inside_boxes(top_left, bottom_right, height, width) & apply[:, None, None]
    mixed = tf.where(inside[..., tf.newaxis], tf.reverse(images, [0]), images)
    pasted = tf.reduce_mean(tf.cast(inside, tf.float32), axis=[1, 2])[:, tf.newaxis]
    own, partner = tf.one_hot(labels, data_lib.NUM_CLASSES), tf.one_hot(tf.reverse(labels, [0]), data_lib.NUM_CLASSES)
    return mixed, own * (1.0 - pasted) + partner * pasted


def augment_batch(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor, flip=None, erasing=None) -> tf.Tensor:
    """Augments a float batch [B, H, W, 1]; deterministic for a given `seed` pair.

    `flip` (bool [B]), when given, says which images to mirror (`alternating_flips`).
    `erasing` (bool scalar), when given, turns random erasing off for the
    batch where False; the other augmentations draw as with it on.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if config.flip or config.max_shift:
        images = _flip_and_shift(images, config, seeds, flip)
    if config.erase_probability:
        images = _erase(images, config, seeds[2], erasing)
    return images


def alternating_flips(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Which examples epoch `epoch` (from 1) mirrors under `flip_mode="alternating"`.

    A fixed random half (drawn from `seed`) in odd epochs, the other half in
    even ones: every image is seen both ways in any two consecutive epochs.
    """
    first = np.random.default_rng(seed).random(num_examples) < 0.5
    return mirrored_in(first, epoch)


def mirrored_in(odd_epochs: np.ndarray | tf.Tensor, epoch):
    """Which images epoch `epoch` (an int or an int64 tensor) mirrors, of those `odd_epochs` mirrors in odd epochs."""
    return odd_epochs ^ (epoch % 2 == 0)


def erases_in(config: AugmentConfig, epoch, epochs: int):
    """Whether epoch `epoch` (from 1; an int or an int64 tensor) of `epochs` erases.

    Erasing stops for the final `erase_off_final_epochs`.
    """
    return epoch <= epochs - config.erase_off_final_epochs
