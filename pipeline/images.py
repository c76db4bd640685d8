"""Decoding user images into Fashion-MNIST form; shared by the export and fmnist-predict."""

from __future__ import annotations

import tensorflow as tf


def decode_to_grayscale_28(encoded: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG/GIF/BMP bytes of any size and colour to uint8 [28, 28].

    Colour becomes luminance; the image is padded to a square with its mean
    border value (so the object is not stretched), then area-resized, the way
    Fashion-MNIST's own images were made from product photos.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    gray = tf.image.rgb_to_grayscale(image)[..., 0]
    gray = tf.cast(gray, tf.float32)
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    border = tf.concat([gray[0], gray[-1], gray[:, 0], gray[:, -1]], axis=0)
    side = tf.maximum(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = tf.pad(gray - tf.reduce_mean(border), [[top, side - height - top], [left, side - width - left]])
    padded += tf.reduce_mean(border)
    resized = tf.image.resize(padded[..., tf.newaxis], [28, 28], method="area")[..., 0]
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
