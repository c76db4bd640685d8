"""`ModelConfig.residual`: gated identity connections around a block's later convolutions."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import serve_without_our_packages

from pipeline import config_files, presets
from pipeline.config import DataConfig, TrainConfig
from pipeline.model.network import ResidualGate, build_model
from pipeline.training.optimizer import build_optimizer


def _model_config(**changes):
    base = presets.preset("best").model
    return dataclasses.replace(base, test_time_augmentation="none", dropout=None, **changes)


@pytest.mark.parametrize("layout", ["pool_last", "pool_first"])
def test_a_new_residual_network_is_the_plain_one_with_its_later_convolutions_bypassed(layout):
    # Normalising before pooling makes one convolution per block the same
    # wiring as a residual block whose later convolutions add nothing yet.
    changes = {"block_layout": layout, "batch_norm_after_pooling": False, "relu_after_pooling": False}
    residual = build_model(_model_config(residual=True, **changes))
    plain = build_model(_model_config(convs_per_block=1, **changes))
    gates = [layer for layer in residual.layers if isinstance(layer, ResidualGate)]
    assert len(gates) == 2 * 3  # Two later convolutions in each of three blocks.
    for layer in plain.layers:
        for mine, theirs in zip(residual.get_layer(layer.name).weights, layer.weights, strict=True):
            mine.assign(theirs)
    images = tf.random.uniform([4, 28, 28, 1], seed=1)
    np.testing.assert_allclose(residual(images), plain(images), rtol=1e-5, atol=1e-5)


def test_each_gate_learns_its_scale_and_is_not_decayed():
    model = build_model(_model_config(residual=True))
    images, labels = tf.random.uniform([8, 28, 28, 1], seed=2), tf.range(8) % 10
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    scales = [w for w in model.trainable_variables if "residual_scale" in w.path]
    assert len(scales) == 6
    gradients = tape.gradient(loss, scales)
    assert all(float(tf.abs(g)) > 0 for g in gradients)
    optimizer = build_optimizer(TrainConfig(), steps_per_epoch=10, policy="float32")
    optimizer.build(model.trainable_variables)
    assert not any(optimizer._use_weight_decay(w) for w in scales)
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert all(optimizer._use_weight_decay(w) for w in kernels)


def test_residual_trains_in_mixed_bfloat16_with_float32_scales():
    model = build_model(_model_config(residual=True), dtype="mixed_bfloat16")
    gate = model.get_layer("block1_conv2_residual")
    assert gate.residual_scale.dtype == "float32" and gate.compute_dtype == "bfloat16"
    assert model(tf.random.uniform([2, 28, 28, 1]), training=True).dtype == "float32"


def test_a_run_recorded_before_the_field_keeps_its_plain_blocks():
    recorded = config_files.to_dict(presets.preset("best"))
    del recorded["model"]["residual"]
    assert config_files.run_config_from_dict(recorded).model.residual is False


def test_a_residual_run_exports_a_model_tensorflow_alone_serves(tiny_data_dir, tmp_path):
    from pipeline.data import sources as data_lib
    from pipeline.runs.final_model import load_final_model, predict_probabilities
    from pipeline.training.driver import train_and_evaluate

    smoke = presets.preset("smoke")
    data = DataConfig(data_dir=str(tiny_data_dir), validation_size=64)
    config = smoke.replace(data=data, model=dataclasses.replace(smoke.model, residual=True, convs_per_block=2))
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir, tf.distribute.get_strategy(), progress=False, make_report=False)
    images = data_lib.load(data).test.images[:16]
    out = serve_without_our_packages(workdir / "export" / "1", images, tmp_path)
    expected = predict_probabilities(load_final_model(workdir, config_files.load_file(workdir / "config.json")), images)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
