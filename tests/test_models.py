"""The CNN family: the tutorial's exact model and the effect of each switch."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import presets
from pipeline.model import views as views_lib
from pipeline.model.batch_norm import FusedBatchNormalization
from pipeline.model.network import build_model
from pipeline.model.views import probabilities, single_view

# Two convs per block, no conv bias (BN follows), BN with a frozen scale (beta and
# the two moving statistics: 3 per channel): block 0 conv 1->16 144 + 16->16 2,304,
# block 1 16->32 4,608 + 32->32 9,216, block 2 32->64 18,432 + 64->64 36,864, BN
# 3 x 2 x (16 + 32 + 64) = 672, dense 3*3*64->256 147,712 + dense 256->10 2,570.
DEFAULT_PARAMS = 222_522


def _layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_seed_is_the_tutorial_model():
    model = build_model(presets.preset("seed").model)
    assert model.count_params() == 243_786
    assert _layer_types(model) == [
        "InputLayer",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert model.output_shape == (None, 10)


def test_default_parameter_count():
    model = build_model(presets.preset("default").model)
    assert model.count_params() == DEFAULT_PARAMS


def test_dropout_and_batch_norm_switches():
    seed = presets.preset("seed").model
    with_dropout = build_model(dataclasses.replace(seed, dropout=0.25))
    dropouts = [layer for layer in with_dropout.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == len(seed.filters) + 1 and all(d.rate == 0.25 for d in dropouts)
    assert with_dropout.count_params() == 243_786  # Dropout adds no weights.
    with_bn = build_model(dataclasses.replace(seed, batch_norm=True))
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in with_bn.layers) == 2
    assert "Dropout" not in _layer_types(with_bn)


def test_with_batch_norm_dropout_never_feeds_a_batch_norm_layer():
    model = build_model(presets.preset("default").model)
    names = [layer.name for layer in model.layers]
    assert [n for n in names if "dropout" in n] == ["block2_dropout", "head_dropout"]
    for i, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.Dropout):
            assert not any(isinstance(later, keras.layers.BatchNormalization) for later in model.layers[i:])
    assert all(layer.momentum == 0.9 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_filters_and_kernel_size_shape_the_convolutions():
    model = build_model(config_lib.ModelConfig(filters=(8, 16, 24), kernel_size=5, convs_per_block=1))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16, 24]
    assert all(c.kernel_size == (5, 5) for c in convs)


def test_mixed_precision_keeps_float32_logits():
    model = build_model(presets.preset("smoke").model, dtype="mixed_bfloat16")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"


def _shifted(images, dy, dx):
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return padded[:, 1 + dy : 29 + dy, 1 + dx : 29 + dx]


def test_test_time_augmentation_averages_views_only_at_inference():
    base = dataclasses.replace(presets.preset("smoke").model, dropout=None)
    plain = build_model(dataclasses.replace(base, test_time_augmentation="none"))
    images = np.random.default_rng(0).random((5, 28, 28, 1), np.float32)
    flipped = images[:, :, ::-1]
    views = {
        "flip": [images, flipped],
        "flip_and_shift": [images, flipped]
        + [_shifted(v, dy, dx) for v in (images, flipped) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))],
    }
    for mode, inputs in views.items():
        model = build_model(dataclasses.replace(base, test_time_augmentation=mode))
        model.set_weights(plain.get_weights())
        assert model.count_params() == plain.count_params()
        # The views are averaged as probabilities; the model returns the average's logits.
        expected = np.mean([probabilities(plain(v, training=False)).numpy() for v in inputs], axis=0)
        np.testing.assert_allclose(probabilities(model(images, training=False)).numpy(), expected, atol=1e-6)
        # Training sees single images: the same output as the plain model.
        np.testing.assert_allclose(
            model(images, training=True).numpy(), plain(images, training=True).numpy(), atol=1e-5
        )


def test_single_view_shares_weights_and_skips_the_views():
    base = dataclasses.replace(presets.preset("smoke").model, dropout=None)
    plain = build_model(dataclasses.replace(base, test_time_augmentation="none"))
    model = build_model(dataclasses.replace(base, test_time_augmentation="flip_and_shift"))
    model.set_weights(plain.get_weights())
    images = np.random.default_rng(1).random((3, 28, 28, 1), np.float32)
    single = single_view(model)
    np.testing.assert_allclose(single(images, training=False).numpy(), plain(images, training=False).numpy(), atol=1e-5)
    assert single.weights[0] is model.weights[0] or single.weights[0].path == model.weights[0].path
    assert single_view(plain) is plain


def test_fused_batch_norm_matches_keras_batch_norm():
    inputs = tf.random.stateless_normal([16, 7, 7, 8], [1, 2]) * 3.0 + 2.0
    layers = [keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)]
    results = []
    for layer in layers:
        layer.build(inputs.shape)
        layer.gamma.assign(tf.random.stateless_normal([8], [3, 4]) + 1.0)
        layer.beta.assign(tf.random.stateless_normal([8], [5, 6]))
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
            loss = tf.reduce_sum(outputs * tf.sin(outputs))
        grads = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
        moving = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
        results.append([outputs.numpy(), *[g.numpy() for g in grads], *moving, layer(inputs, training=False).numpy()])
    for keras_value, fused_value in zip(*results, strict=True):
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-4, atol=1e-4)
    # Masks and synchronised statistics fall back to Keras' own implementation.
    synced = FusedBatchNormalization(synchronized=True)
    np.testing.assert_allclose(
        synced(inputs, training=True), layers[0].__class__(synchronized=True)(inputs, training=True), atol=1e-5
    )


def test_relu_after_pooling_equals_relu_before_it():
    # The blocks apply their last ReLU after max-pooling because it is cheaper;
    # the two orders (`relu_after_pooling`) must agree exactly, gradients included.
    for convs_per_block in (1, 2):
        model_config = dataclasses.replace(
            presets.preset("default").model,
            convs_per_block=convs_per_block,
            dropout=None,
            test_time_augmentation="none",
        )
        images = tf.random.uniform([16, 28, 28, 1], seed=1)
        labels = tf.constant(np.arange(16) % 10)
        ours = build_model(model_config)
        textbook = build_model(dataclasses.replace(model_config, relu_after_pooling=False))
        textbook.set_weights(ours.get_weights())
        results = []
        for model in (ours, textbook):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            results.append((logits, loss, tape.gradient(loss, model.trainable_variables)))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        for a, b in zip(results[0][2], results[1][2], strict=True):
            np.testing.assert_array_equal(a, b)


def test_batch_norm_after_pooling_is_the_same_function_at_inference():
    # With a frozen scale, batch norm at inference is a per-channel increasing
    # affine map, which commutes with max-pooling: normalising the pooled map
    # gives exactly the outputs of normalising first, for the same weights.
    # Only training differs (the statistics are the pooled values').
    for convs_per_block in (1, 2):
        model_config = dataclasses.replace(
            presets.preset("default").model, convs_per_block=convs_per_block, test_time_augmentation="none"
        )
        images = tf.random.uniform([16, 28, 28, 1], seed=1)
        first = build_model(model_config)
        pooled = build_model(dataclasses.replace(model_config, batch_norm_after_pooling=True))
        pooled(images, training=True)  # Moves the moving statistics away from their start.
        first.set_weights(pooled.get_weights())
        np.testing.assert_array_equal(first(images, training=False), pooled(images, training=False))
        bn = pooled.get_layer(f"block0_conv{convs_per_block - 1}_bn")
        assert bn.input.shape[1:3] == (14, 14)  # It normalises the pooled map.
        training_outputs = [model(images, training=True) for model in (first, pooled)]
        assert not np.allclose(*training_outputs)


def test_batch_norm_kernel_selects_the_layer():
    fused = build_model(presets.preset("default").model)
    keras_bn = build_model(dataclasses.replace(presets.preset("default").model, batch_norm_kernel="keras"))
    convs = len(presets.preset("default").model.filters) * presets.preset("default").model.convs_per_block
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in fused.layers) == convs == 6
    bn = [layer for layer in keras_bn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn) == convs and not any(isinstance(layer, FusedBatchNormalization) for layer in bn)
    assert keras_bn.count_params() == fused.count_params()


def test_logits_numerics_equal_the_softmax_output_numerics():
    # A freshly initialised model and a fixed batch: the loss from logits and its
    # gradients equal those of a softmax output layer followed by cross-entropy on
    # probabilities, and the served probabilities equal the views' averaged softmax.
    from pipeline.serving.export import ServingModule
    from pipeline.training.steps import per_example_loss

    keras.utils.set_random_seed(0)
    config = dataclasses.replace(presets.preset("smoke").model, dropout=None)
    model = build_model(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 32)
    inputs = tf.cast(images[..., None], tf.float32) / 255.0
    single = single_view(model)

    def loss_and_gradients(loss_fn):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(single(inputs, training=True)))
        return loss.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    one_hot = tf.one_hot(labels, 10)
    old_loss, old_grads = loss_and_gradients(
        lambda logits: keras.losses.categorical_crossentropy(one_hot, keras.ops.softmax(logits))
    )
    new_loss, new_grads = loss_and_gradients(lambda logits: per_example_loss(tf.constant(labels), logits, 0.0))
    np.testing.assert_allclose(new_loss, old_loss, rtol=1e-5)
    for new, old in zip(new_grads, old_grads, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5 * np.abs(old).max())

    module = ServingModule(model)
    served = module.serve_images(tf.constant(images))["probabilities"].numpy()
    stacked = views_lib.TestTimeViews(config.test_time_augmentation)(inputs, training=False)
    per_view = keras.ops.softmax(single(stacked, training=False)).numpy().reshape(-1, 32, 10)
    np.testing.assert_allclose(served, per_view.mean(axis=0), atol=1e-6)


def test_the_loss_of_mixed_targets_is_the_mix_of_the_labels_losses():
    # CutMix's float targets: a target t*a + (1-t)*b costs t times the loss of
    # label a plus (1-t) times that of b, with or without label smoothing.
    from pipeline.training.steps import per_example_loss

    logits = tf.constant(np.random.default_rng(0).normal(size=(6, 10)), tf.float32)
    a, b = tf.constant([0, 1, 2, 3, 4, 5]), tf.constant([9, 8, 7, 6, 5, 4])
    share = tf.constant([1.0, 0.0, 0.3, 0.5, 0.9, 0.25])[:, None]
    targets = tf.one_hot(a, 10) * share + tf.one_hot(b, 10) * (1 - share)
    for smoothing in (0.0, 0.1):
        expected = share[:, 0] * per_example_loss(a, logits, smoothing) + (1 - share[:, 0]) * per_example_loss(
            b, logits, smoothing
        )
        np.testing.assert_allclose(per_example_loss(targets, logits, smoothing), expected, rtol=1e-5)


def test_a_global_average_head_classifies_the_channel_means():
    # No hidden layer: the logits are one dense layer on the last block's channel means.
    config = dataclasses.replace(presets.preset("best").model, head="global_average")
    model = build_model(config)
    names = {layer.name for layer in model.layers}
    assert "global_average" in names and "dense" not in names and "flatten" not in names
    dense_head = build_model(presets.preset("best").model)
    channels = config.filters[-1]
    hidden = dense_head.get_layer("dense")
    assert model.count_params() == dense_head.count_params() - hidden.count_params() - 10 * (hidden.units - channels)
    images = tf.random.uniform([4, 28, 28, 1])
    assert model(images, training=True).shape == (4, 10) and model(images).shape == (4, 10)
    logits = single_view(model)(images)
    features = keras.Model(model.get_layer("test_time_views").output, model.get_layer("global_average").input)(images)
    expected = model.get_layer("logits")(tf.reduce_mean(features, axis=[1, 2]))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_pool_first_groups_convolve_the_pooled_map():
    # Each block pools its first convolution and runs the others on the pooled map.
    config = dataclasses.replace(
        presets.preset("best").model, block_layout="pool_first", test_time_augmentation="none", dropout=None
    )
    model = build_model(config)
    for index, size in enumerate((28, 14, 7)):
        assert model.get_layer(f"block{index}_conv0").input.shape[1] == size
        assert model.get_layer(f"block{index}_conv0_bn").input.shape[1] == size // 2
        for j in (1, 2):
            conv = model.get_layer(f"block{index}_conv{j}")
            assert conv.input.shape[1] == size // 2
            assert conv.input is model.get_layer(f"block{index}_conv{j - 1}_relu").output
    # The same weights as the pool-last layout (both end on a 3x3 map), wired differently.
    pool_last = build_model(dataclasses.replace(config, block_layout="pool_last"))
    assert [w.shape for w in model.weights] == [w.shape for w in pool_last.weights]
    assert model(tf.random.uniform([4, 28, 28, 1]), training=True).shape == (4, 10)


def test_same_pool_padding_lets_every_unit_of_an_odd_map_reach_the_classifier():
    # A 7x7 map pooled "valid" loses its last row and column; "same" keeps them.
    config = dataclasses.replace(presets.preset("best").model, test_time_augmentation="none")
    for padding, size in (("valid", 3), ("same", 4)):
        model = build_model(dataclasses.replace(config, pool_padding=padding))
        pool = model.get_layer("block2_pool")
        assert pool.input.shape[1:3] == (7, 7) and pool.output.shape[1:3] == (size, size)
        corner = np.zeros([1, 7, 7, 1], "float32")
        corner[0, 6, 6, 0] = 1.0
        assert float(tf.reduce_max(pool(corner))) == (1.0 if padding == "same" else 0.0)
        assert model(tf.random.uniform([2, 28, 28, 1])).shape == (2, 10)


def test_the_config_check_of_feature_map_sides_agrees_with_keras():
    import itertools
    import random

    from pipeline import config_files

    base = dataclasses.replace(
        presets.preset("smoke").model, dense_units=4, test_time_augmentation="none", stem_init="default"
    )
    grid = list(itertools.product((3, 5, 7), ("same", "valid"), ("valid", "same"), ("pool_last", "pool_first"), (1, 3)))
    refused = accepted = 0
    for kernel, padding, pool_padding, layout, convs in random.Random(0).sample(grid, 16):
        for blocks in range(2, 7):
            model = dataclasses.replace(
                base, filters=(4,) * blocks, kernel_size=kernel, padding=padding, pool_padding=pool_padding,
                block_layout=layout, convs_per_block=convs,
            )  # fmt: skip
            config = presets.preset("smoke").replace(model=model)
            try:
                config_files.validate(config)
            except config_lib.ConfigError as e:
                assert "model." in str(e) and "\n" not in str(e)
                with pytest.raises(ValueError):
                    build_model(model)
                refused += 1
                continue
            built = build_model(model)
            block_sides = [
                [layer.output.shape[1] for layer in built.layers if layer.name.startswith(f"block{i}_")][-1]
                for i in range(blocks)
            ]
            assert config_files.feature_map_sides(model) == block_sides, model
            accepted += 1
    assert refused and accepted
