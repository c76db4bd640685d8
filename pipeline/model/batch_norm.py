"""Batch normalisation on TensorFlow's fused kernel.

Keras 3's `BatchNormalization` computes moments and normalises with separate
ops (`tf.nn.moments`, `tf.nn.batch_normalization`) and their separate
gradients, which on CPU make batch norm a large share of the default model's
training step. The fused kernel (one op forward, one op backward) trains the
default model markedly faster; the benchmark record's execution-settings
comparison measures both (`ModelConfig.batch_norm_kernel`).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="pipeline")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with the same weights and semantics, fused for NHWC.

    The fused path covers 4-D inputs normalised over the last axis, without
    cross-replica synchronisation (which needs the global moments) and
    without masks; everything else falls back to Keras' implementation.
    Moving statistics follow Keras' rule: `moving = moving * momentum +
    batch * (1 - momentum)`, with the biased batch variance.
    """

    def _can_fuse(self, inputs, mask) -> bool:
        return (
            len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and not self.synchronized
            and not self.renorm
            and mask is None
            and self.center
        )

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        inputs = tf.cast(inputs, self.compute_dtype)
        beta = tf.cast(self.beta, tf.float32)
        # A frozen scale (`scale=False`) is a scale of one.
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones_like(beta)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            self._update_moving_statistics(inputs, mean, variance)
            return outputs
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            gamma,
            beta,
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            is_training=False,
        )
        return outputs

    def _update_moving_statistics(self, inputs, mean, variance):
        # The fused kernel returns the unbiased (n / (n - 1)) variance; Keras'
        # layer tracks the biased one, so undo the correction to keep the
        # same moving statistics (and checkpoints interchangeable).
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 2.0)
        momentum = self.momentum
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * momentum + tf.cast(batch, moving.dtype) * (1.0 - momentum))
