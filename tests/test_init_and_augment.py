"""What the time-to-accuracy techniques compute: initialisations, frozen BN scale, alternating flips."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import presets
from pipeline.data import augment as augment_lib
from pipeline.data import input_pipeline as ip
from pipeline.model import network as models
from pipeline.model.batch_norm import FusedBatchNormalization
from pipeline.training.optimizer import build_optimizer

RNG = np.random.default_rng(0)
# Smooth, correlated images: neighbouring pixels share a random low-resolution field.
IMAGES = np.kron(RNG.random((200, 7, 7, 1)), np.ones((1, 4, 4, 1))) + 0.05 * RNG.random((200, 28, 28, 1))


def test_whitening_kernel_decorrelates_patches_to_unit_variance():
    kernel = models.whitening_kernel(IMAGES, 3, 32)
    assert kernel.shape == (3, 3, 1, 18)  # 9 eigenvectors, both signs.
    np.testing.assert_allclose(kernel[..., 9:], -kernel[..., :9])
    outputs = tf.nn.conv2d(IMAGES.astype("float32"), kernel[..., :9], 1, "VALID").numpy().reshape(-1, 9)
    covariance = np.cov(outputs, rowvar=False)
    # Identity up to the small ridge added to each eigenvalue.
    np.testing.assert_allclose(np.diag(covariance), 1.0, atol=0.05)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0.0, atol=1e-3)


def test_whitening_kernel_uses_half_the_filters_when_fewer_than_two_per_direction():
    assert models.whitening_kernel(IMAGES, 3, 8).shape == (3, 3, 1, 8)


def test_initialize_stem_writes_the_whitening_filters_and_keeps_the_rest():
    config = dataclasses.replace(presets.preset("smoke").model, stem_init="whitening", filters=(24, 16))
    model = models.build_model(config)
    before = model.get_layer(models.STEM).kernel.numpy().copy()
    models.initialize_stem(model, config, IMAGES)
    after = model.get_layer(models.STEM).kernel.numpy()
    np.testing.assert_allclose(after[..., :18], models.whitening_kernel(IMAGES, 3, 24), rtol=1e-6)
    np.testing.assert_array_equal(after[..., 18:], before[..., 18:])


def test_partial_identity_copies_the_input_channels_through():
    x = tf.random.stateless_normal([2, 9, 9, 6], [1, 2])
    conv = keras.layers.Conv2D(10, 3, padding="same", use_bias=False, kernel_initializer=models.PartialIdentity(seed=1))
    y = conv(x).numpy()
    np.testing.assert_allclose(y[..., :6], x.numpy(), atol=1e-6)
    assert np.abs(y[..., 6:]).mean() > 0.1  # The remaining filters stay random.
    # Fewer outputs than inputs: the first `out` channels are copied.
    narrow = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, kernel_initializer=models.PartialIdentity())
    np.testing.assert_allclose(narrow(x).numpy(), x.numpy()[..., :4], atol=1e-6)


def test_identity_init_skips_the_stem():
    config = dataclasses.replace(presets.preset("smoke").model, conv_init="identity")
    model = models.build_model(config)
    kernel = model.get_layer("block1_conv0").kernel.numpy()
    np.testing.assert_array_equal(kernel[1, 1, :8, :8], np.eye(8))
    assert np.count_nonzero(model.get_layer(models.STEM).kernel.numpy()) == 3 * 3 * 8


def test_frozen_batch_norm_scale_is_a_scale_of_one():
    inputs = tf.random.stateless_normal([16, 7, 7, 8], [1, 2]) * 3.0 + 2.0
    frozen, keras_frozen = FusedBatchNormalization(scale=False), keras.layers.BatchNormalization(scale=False)
    for layer in (frozen, keras_frozen):
        layer.build(inputs.shape)
        layer.beta.assign(tf.range(8, dtype=tf.float32))
    assert frozen.gamma is None and len(frozen.trainable_weights) == 1
    np.testing.assert_allclose(frozen(inputs, training=True), keras_frozen(inputs, training=True), atol=1e-4)
    np.testing.assert_allclose(frozen(inputs, training=False), keras_frozen(inputs, training=False), atol=1e-4)


def test_alternating_flips_show_every_image_both_ways_in_consecutive_epochs():
    first, second, third = (augment_lib.alternating_flips(1000, seed=3, epoch=e) for e in (1, 2, 3))
    assert 400 < first.sum() < 600
    np.testing.assert_array_equal(second, ~first)
    np.testing.assert_array_equal(third, first)


def test_alternating_flip_mode_mirrors_the_chosen_images():
    images = RNG.integers(0, 255, (64, 28, 28), dtype=np.uint8)
    augment = config_lib.AugmentConfig(max_shift=0, flip_mode="alternating")
    for epoch in (1, 2):
        batch_images, labels = next(iter(ip.train_dataset(images, np.arange(64), 64, 5, epoch, augment)))
        flips = augment_lib.alternating_flips(64, ip.epoch_seed(5, 0, 0), epoch)[labels.numpy()]
        originals = ip.normalize(images[labels.numpy()]).numpy()
        expected = np.where(flips[:, None, None, None], originals[:, :, ::-1], originals)
        np.testing.assert_array_equal(batch_images.numpy(), expected)


def test_sgd_uses_nesterov_momentum_and_decays_kernels_only():
    train = config_lib.TrainConfig(
        optimizer="sgd", momentum=0.8, weight_decay=0.1, schedule="constant", warmup_epochs=0
    )
    optimizer = build_optimizer(train, 10, "float32")
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.nesterov and optimizer.momentum == 0.8
    kernel, beta = (
        keras.Variable(np.ones(3, "float32"), name="kernel"),
        keras.Variable(np.ones(3, "float32"), name="beta"),
    )
    optimizer.apply_gradients([(tf.zeros(3), kernel), (tf.zeros(3), beta)])
    np.testing.assert_allclose(kernel.numpy(), 1.0 - train.learning_rate * 0.1, rtol=1e-6)
    np.testing.assert_array_equal(beta.numpy(), 1.0)
