"""The CNN family: the tutorial's exact model and the effect of each switch."""

from __future__ import annotations

import dataclasses

import keras

from pipeline import config as config_lib
from pipeline.models import build_model

# conv 1->32 (288, no bias: BN follows) + BN 128 + conv 32->64 18,432 + BN 256
# + conv 64->128 73,728 + BN 512 + dense 3*3*128->256 295,168 + dense 256->10 2,570.
DEFAULT_PARAMS = 391_082


def _layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_seed_is_the_tutorial_model():
    model = build_model(config_lib.preset("seed").model)
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
    model = build_model(config_lib.preset("default").model)
    assert model.count_params() == DEFAULT_PARAMS


def test_dropout_and_batch_norm_switches():
    seed = config_lib.preset("seed").model
    with_dropout = build_model(dataclasses.replace(seed, dropout=0.25))
    dropouts = [layer for layer in with_dropout.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == len(seed.filters) + 1 and all(d.rate == 0.25 for d in dropouts)
    assert with_dropout.count_params() == 243_786  # Dropout adds no weights.
    with_bn = build_model(dataclasses.replace(seed, batch_norm=True))
    assert _layer_types(with_bn).count("BatchNormalization") == 2
    assert "Dropout" not in _layer_types(with_bn)


def test_with_batch_norm_dropout_never_feeds_a_batch_norm_layer():
    model = build_model(config_lib.preset("default").model)
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


def test_mixed_precision_keeps_float32_probabilities():
    model = build_model(config_lib.preset("smoke").model, dtype="mixed_bfloat16")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
