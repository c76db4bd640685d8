"""The CNN family. `ModelConfig` describes it; the `seed` preset is the tutorial's.

The test-time views it can average at inference are `pipeline.model.views`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras.layers import BatchNormalization

from pipeline.config import ModelConfig
from pipeline.data.sources import NUM_CLASSES
from pipeline.model.batch_norm import FusedBatchNormalization
from pipeline.model.views import VIEW_COUNTS, AverageViews, TestTimeViews

STEM = "block0_conv0"
# Training images whose patches give the whitening stem its covariance (the first ones).
WHITENING_SAMPLE = 5000


@keras.saving.register_keras_serializable(package="pipeline")
class PartialIdentity(keras.initializers.Initializer):
    """Glorot-uniform conv kernels whose first min(in, out) filters are the identity.

    Filter i < min(in, out) is a dirac: 1 at the centre tap of input channel
    i, 0 elsewhere, so it copies channel i through (`ModelConfig.conv_init`).
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        height, width, channels_in, channels_out = shape
        kernel = keras.initializers.GlorotUniform(self.seed)(shape, dtype)
        n = min(channels_in, channels_out)
        dirac = np.zeros((height, width, channels_in, n), "float32")
        dirac[height // 2, width // 2, np.arange(n), np.arange(n)] = 1.0
        return keras.ops.concatenate([keras.ops.cast(dirac, kernel.dtype), kernel[..., n:]], axis=-1)

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="pipeline")
class ResidualGate(keras.layers.Layer):
    """`inputs + scale * branch`, with one learned scalar `scale` that starts at 0 (ReZero).

    Called on `[inputs, branch]` (`ModelConfig.residual`). The scalar is
    excluded from weight decay by its name (`optimizer.build_optimizer`).
    """

    def build(self, input_shape):
        self.residual_scale = self.add_weight(shape=(), initializer="zeros", name="residual_scale")

    def call(self, inputs):
        skip, branch = inputs
        # Under a mixed policy Keras reads the float32 scale in the compute dtype.
        return skip + self.residual_scale * branch


def whitening_kernel(images: np.ndarray, kernel_size: int, filters: int) -> np.ndarray:
    """Conv filters that whiten the images' kernel_size x kernel_size patches.

    The patch covariance's leading eigenvectors, each divided by the square
    root of its eigenvalue, give outputs that are uncorrelated with unit
    variance; each appears with both signs so a following ReLU keeps both
    halves. A small ridge (1e-3 of the mean eigenvalue) keeps the weakest,
    noise-like directions from being amplified without bound.

    Args:
      images: float [N, H, W, C] as the model sees them (`input_pipeline.normalize`).
      kernel_size: the convolution's kernel size.
      filters: the convolution's filter count; min(k*k*C, filters // 2)
        eigenvectors are used, 2 filters each.

    Returns:
      float32 [k, k, C, 2m] kernel.
    """
    images = np.asarray(images, np.float64)
    channels = images.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(images, (kernel_size, kernel_size), axis=(1, 2))
    # windows: [N, H', W', C, k, k] -> patches [P, k, k, C] flattened.
    patches = np.moveaxis(windows, 3, -1).reshape(-1, kernel_size * kernel_size * channels)
    covariance = np.cov(patches, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    count = min(len(eigenvalues), filters // 2)
    order = np.argsort(eigenvalues)[::-1][:count]
    ridge = 1e-3 * eigenvalues.mean()
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + ridge)
    kernel = np.concatenate([scaled, -scaled], axis=1)
    return kernel.reshape(kernel_size, kernel_size, channels, 2 * count).astype("float32")


def initialize_stem(model: keras.Model, config: ModelConfig, images: np.ndarray) -> None:
    """Applies `config.stem_init` to the first convolution, given normalised training images."""
    if config.stem_init != "whitening":
        return
    stem = model.get_layer(STEM)
    kernel = keras.ops.convert_to_numpy(stem.kernel).copy()
    whitening = whitening_kernel(images, config.kernel_size, kernel.shape[-1])
    kernel[..., : whitening.shape[-1]] = whitening
    stem.kernel.assign(kernel)


def _batch_norm(x, config: ModelConfig, name: str, dtype: str, sync_bn: bool):
    batch_norm = FusedBatchNormalization if config.batch_norm_kernel == "fused" else BatchNormalization
    return batch_norm(
        momentum=config.batch_norm_momentum,
        scale=config.batch_norm_scale,
        name=f"{name}_bn",
        dtype=dtype,
        synchronized=sync_bn,
    )(x)


def _conv(x, filters: int, config: ModelConfig, name: str, dtype: str):
    # With batch norm the conv bias is redundant (BN's beta replaces it).
    identity = config.conv_init == "identity" and name != STEM
    return keras.layers.Conv2D(
        filters,
        config.kernel_size,
        padding=config.padding,
        kernel_initializer=PartialIdentity() if identity else "glorot_uniform",
        use_bias=not config.batch_norm,
        activation=None if config.batch_norm else "relu",
        name=name,
        dtype=dtype,
    )(x)


def _normalized_relu(x, config: ModelConfig, name: str, dtype: str, sync_bn: bool):
    if not config.batch_norm:
        return x  # The convolution applied its ReLU.
    x = _batch_norm(x, config, name, dtype, sync_bn)
    return keras.layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(x)


def _pool(x, config: ModelConfig, index: int, dtype: str):
    return keras.layers.MaxPooling2D(2, padding=config.pool_padding, name=f"block{index}_pool", dtype=dtype)(x)


def _pool_first_group(x, filters: int, config: ModelConfig, index: int, dtype: str, sync_bn: bool):
    # `ModelConfig.block_layout` "pool_first": conv, pool, BN, ReLU, then the
    # remaining convolutions on the pooled map.
    name = f"block{index}_conv0"
    x = _conv(x, filters, config, name, dtype)
    x = _pool(x, config, index, dtype)
    x = _normalized_relu(x, config, name, dtype, sync_bn)
    for j in range(1, config.convs_per_block):
        name = f"block{index}_conv{j}"
        skip = x if config.residual else None  # `ModelConfig.residual`
        x = _conv(x, filters, config, name, dtype)
        if config.batch_norm:
            x = _batch_norm(x, config, name, dtype, sync_bn)
        if skip is not None:
            x = ResidualGate(name=f"{name}_residual", dtype=dtype)([skip, x])
        if config.batch_norm:  # Without it the convolution applied its ReLU.
            x = keras.layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(x)
    return x


def _pool_last_group(x, filters: int, config: ModelConfig, index: int, dtype: str, sync_bn: bool):
    last = config.convs_per_block - 1
    # `ModelConfig.batch_norm_after_pooling`: the last convolution's batch norm
    # and ReLU run on the pooled map, a quarter of the values.
    pooled_batch_norm = config.batch_norm and config.batch_norm_after_pooling
    for j in range(config.convs_per_block):
        name = f"block{index}_conv{j}"
        # `ModelConfig.residual`: every convolution after the first keeps the
        # block's width, so its input can be added to its output.
        skip = x if config.residual and j > 0 else None
        x = _conv(x, filters, config, name, dtype)
        normalized = config.batch_norm and not (j == last and pooled_batch_norm)
        if normalized:
            x = _batch_norm(x, config, name, dtype, sync_bn)
        if skip is not None:
            x = ResidualGate(name=f"{name}_residual", dtype=dtype)([skip, x])
        if normalized and (j < last or not config.relu_after_pooling):
            x = keras.layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(x)
    x = _pool(x, config, index, dtype)
    last_conv = f"block{index}_conv{last}"
    if pooled_batch_norm:
        x = _batch_norm(x, config, last_conv, dtype, sync_bn)
    if config.batch_norm and (config.relu_after_pooling or pooled_batch_norm):
        # Max and ReLU commute exactly (both are monotone), so this is the
        # textbook order's output, with ReLU and its gradient on a quarter of
        # the values (`ModelConfig.relu_after_pooling`).
        x = keras.layers.Activation("relu", name=f"{last_conv}_relu", dtype=dtype)(x)
    return x


def _block(x, filters: int, config: ModelConfig, index: int, dtype: str, sync_bn: bool):
    group = _pool_first_group if config.block_layout == "pool_first" else _pool_last_group
    x = group(x, filters, config, index, dtype, sync_bn)
    # Dropout never feeds a batch-norm layer: BN would learn moving statistics
    # of dropped-out activations and see different ones at inference (the
    # "variance shift"). With BN, only the last block is followed by dropout.
    feeds_batch_norm = config.batch_norm and index < len(config.filters) - 1
    if config.dropout is not None and not feeds_batch_norm:
        x = keras.layers.Dropout(config.dropout, name=f"block{index}_dropout", dtype=dtype)(x)
    return x


def build_model(config: ModelConfig, dtype: str = "float32", sync_batch_norm: bool = False) -> keras.Model:
    """Builds the CNN: blocks of conv (+BN) + max-pool (+dropout), a head (`ModelConfig.head`), logits.

    Dropout follows every block without batch norm, only the last block with
    it (see `_block`), and always precedes the classifier. With
    `config.test_time_augmentation`, inference averages the probabilities of
    several views of each image; training is unchanged.

    Input is float32 [B, 28, 28, 1] in [0, 1] (see `input_pipeline.normalize`).
    The output is logits [B, 10]: the loss takes them directly (numerically
    stabler than the log of a softmax), and `probabilities` turns them into
    class probabilities for serving and reports. The classifier runs in
    float32, so logits stay float32 under mixed precision.

    Args:
      config: the architecture.
      dtype: a Keras dtype policy name, e.g. "float32" or "mixed_bfloat16".
      sync_batch_norm: compute batch statistics over the global batch (all
        replicas). Without it each replica normalises with its own batch's
        statistics and Keras 3 updates the moving statistics per replica
        (aggregation "none"), so the training loop averages them
        (`TrainConfig.batch_norm_statistics`).
    """
    inputs = keras.Input((28, 28, 1), name="images")
    x = inputs
    tta = config.test_time_augmentation
    if tta != "none":
        x = TestTimeViews(tta, name="test_time_views", dtype=dtype)(x)
    for index, filters in enumerate(config.filters):
        x = _block(x, filters, config, index, dtype, sync_batch_norm)
    if config.head == "global_average":
        x = keras.layers.GlobalAveragePooling2D(name="global_average", dtype=dtype)(x)
    else:
        x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
        x = keras.layers.Dense(config.dense_units, activation="relu", name="dense", dtype=dtype)(x)
    if config.dropout is not None:
        x = keras.layers.Dropout(config.dropout, name="head_dropout", dtype=dtype)(x)
    outputs = keras.layers.Dense(NUM_CLASSES, dtype="float32", name="logits")(x)
    if tta != "none":
        outputs = AverageViews(VIEW_COUNTS[tta], name="average_views", dtype="float32")(outputs)
    return keras.Model(inputs, outputs, name="fmnist_cnn")
