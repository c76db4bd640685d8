"""Decoding user images into Fashion-MNIST form; shared by the export and fmnist-predict."""

from __future__ import annotations

import tensorflow as tf

# How an image's brightness is read: "auto" inverts images whose border is
# light (photos: a dark garment on a light ground), "as_is" never inverts,
# "invert" always does. Fashion-MNIST itself is a light garment on a black
# ground: the mean of its images' borders stays far below the threshold.
POLARITIES = ("auto", "as_is", "invert")
LIGHT_BORDER = 127.5
# A transparent pixel counts as this grey level, the white page an image
# viewer or a shop shows cut-out product photos on. The colour an encoder
# stores under full transparency is arbitrary (often black), and reading it
# would put a dark garment on a dark ground.
TRANSPARENT_AS = 255.0


def _luminance_over_white(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, C] with C of 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA) to float32 [H, W] grey levels."""
    image = tf.cast(image, tf.float32)
    channels = tf.shape(image)[-1]
    has_alpha = tf.equal(channels % 2, 0)
    colour = image[..., : tf.where(has_alpha, channels - 1, channels)]
    # ITU-R 601 luma, as `tf.image.rgb_to_grayscale`; a grey image is its own.
    weights = tf.constant([0.2989, 0.587, 0.114])
    gray = tf.cond(
        tf.shape(colour)[-1] >= 3,
        lambda: tf.tensordot(colour[..., :3], weights, axes=1),
        lambda: colour[..., 0],
    )
    alpha = tf.where(has_alpha, image[..., -1] / 255.0, tf.ones_like(gray))
    return gray * alpha + TRANSPARENT_AS * (1.0 - alpha)


def decode_to_grayscale_28(encoded: tf.Tensor, polarity: str = "auto") -> tf.Tensor:
    """PNG/JPEG/GIF/BMP/WebP bytes of any size and colour to uint8 [28, 28], a light object on a dark ground.

    Colour becomes luminance; transparent pixels (a PNG's or WebP's alpha;
    TensorFlow decodes a GIF without its transparency) are laid over white
    (`TRANSPARENT_AS`); an image on a light ground is inverted as `polarity`
    says; the image is padded to a square with its mean border value (so the
    object is not stretched), then area-resized, the way Fashion-MNIST's own
    images were made from product photos.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity {polarity!r}: choose one of {', '.join(POLARITIES)}")
    image = tf.io.decode_image(encoded, expand_animations=False)
    gray = _luminance_over_white(image)
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
