"""The CNN family. `ModelConfig` describes it; the `seed` preset is the tutorial's."""

from __future__ import annotations

import keras

from pipeline.config import ModelConfig
from pipeline.data import NUM_CLASSES


def _block(x, filters: int, config: ModelConfig, index: int, dtype: str, sync_bn: bool):
    for j in range(config.convs_per_block):
        name = f"block{index}_conv{j}"
        # With batch norm the conv bias is redundant (BN's beta replaces it).
        x = keras.layers.Conv2D(
            filters,
            config.kernel_size,
            padding=config.padding,
            use_bias=not config.batch_norm,
            activation=None if config.batch_norm else "relu",
            name=name,
            dtype=dtype,
        )(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization(
                momentum=config.batch_norm_momentum, name=f"{name}_bn", dtype=dtype, synchronized=sync_bn
            )(x)
            x = keras.layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(2, name=f"block{index}_pool", dtype=dtype)(x)
    # Dropout never feeds a batch-norm layer: BN would learn moving statistics
    # of dropped-out activations and see different ones at inference (the
    # "variance shift"). With BN, only the last block is followed by dropout.
    feeds_batch_norm = config.batch_norm and index < len(config.filters) - 1
    if config.dropout is not None and not feeds_batch_norm:
        x = keras.layers.Dropout(config.dropout, name=f"block{index}_dropout", dtype=dtype)(x)
    return x


def build_model(config: ModelConfig, dtype: str = "float32", sync_batch_norm: bool = False) -> keras.Model:
    """Builds the CNN: blocks of conv (+BN) + max-pool (+dropout), dense, softmax.

    Dropout follows every block without batch norm, only the last block with
    it (see `_block`), and always precedes the classifier.

    Input is float32 [B, 28, 28, 1] in [0, 1] (see `input_pipeline.normalize`).
    The classifier runs in float32 so probabilities stay float32 under mixed
    precision.

    Args:
      config: the architecture.
      dtype: a Keras dtype policy name, e.g. "float32" or "mixed_bfloat16".
      sync_batch_norm: compute batch statistics over the global batch (all
        replicas). Needed with several replicas: Keras 3 updates moving
        statistics per replica (aggregation "none"), so without it every
        replica would end with different statistics.
    """
    inputs = keras.Input((28, 28, 1), name="images")
    x = inputs
    for index, filters in enumerate(config.filters):
        x = _block(x, filters, config, index, dtype, sync_batch_norm)
    x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense", dtype=dtype)(x)
    if config.dropout is not None:
        x = keras.layers.Dropout(config.dropout, name="head_dropout", dtype=dtype)(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fmnist_cnn")
