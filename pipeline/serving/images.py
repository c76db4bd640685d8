"""Decoding user images into Fashion-MNIST form; shared by the export and fmnist-predict."""

from __future__ import annotations

import tensorflow as tf

# How an image's brightness is read: "auto" inverts images whose border is
# light (photos: a dark garment on a light ground), "as_is" never inverts,
# "invert" always does. Fashion-MNIST itself is a light garment on a black
# ground: the mean of its images' borders stays far below the threshold.
POLARITIES = ("auto", "as_is", "invert")
LIGHT_BORDER = 127.5


def decode_to_grayscale_28(encoded: tf.Tensor, polarity: str = "auto") -> tf.Tensor:
    """PNG/JPEG/GIF/BMP bytes of any size and colour to uint8 [28, 28], a light object on a dark ground.

    Colour becomes luminance; an image on a light ground is inverted as
    `polarity` says; the image is padded to a square with its mean border
    value (so the object is not stretched), then area-resized, the way
    Fashion-MNIST's own images were made from product photos.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity {polarity!r}: choose one of {', '.join(POLARITIES)}")
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    gray = tf.image.rgb_to_grayscale(image)[..., 0]
    gray = tf.cast(gray, tf.float32)
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    border = tf.concat([gray[0], gray[-1], gray[:, 0], gray[:, -1]], axis=0)
    if polarity != "as_is":
        invert = tf.constant(True) if polarity == "invert" else tf.reduce_mean(border) > LIGHT_BORDER
        gray = tf.where(invert, 255.0 - gray, gray)
        border = tf.where(invert, 255.0 - border, border)
    side = tf.maximum(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = tf.pad(gray - tf.reduce_mean(border), [[top, side - height - top], [left, side - width - left]])
    padded += tf.reduce_mean(border)
    resized = tf.image.resize(padded[..., tf.newaxis], [28, 28], method="area")[..., 0]
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
