"""Test-time views: the network sees each image and its mirror (and their one-pixel shifts) at inference.

`network.build_model` puts `TestTimeViews` before the blocks and
`AverageViews` after the logits when `ModelConfig.test_time_augmentation`
asks for views; `single_view` is the same network without them, and
`probabilities` turns either's logits into class probabilities.
"""

from __future__ import annotations

import math

import keras

# One-pixel shifts (rows, columns) added to each of the image and its mirror.
SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _views(images, mode: str) -> list:
    flipped = keras.ops.flip(images, axis=2)
    if mode == "flip":
        return [images, flipped]
    padded = [keras.ops.pad(v, [[0, 0], [1, 1], [1, 1], [0, 0]]) for v in (images, flipped)]
    height, width = images.shape[1], images.shape[2]
    shifted = [p[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width, :] for p in padded for dy, dx in SHIFTS]
    return [images, flipped, *shifted]


class TestTimeViews(keras.layers.Layer):
    """At inference, stacks augmented views of the batch along the batch axis.

    Identity in training. The network then sees all views in one batch (one
    call, so batch-1 serving latency grows far less than the view count).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images, training=None):
        return images if training else keras.ops.concatenate(_views(images, self.mode), axis=0)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class AverageViews(keras.layers.Layer):
    """At inference, averages the views' probabilities; returns them as logits.

    Each view's logits become probabilities, the probabilities are averaged
    over the views, and the log of the average is returned: logits whose
    softmax is exactly that average, so everything downstream treats the
    model's output as logits whether or not it averages views.
    """

    def __init__(self, num_views: int, **kwargs):
        super().__init__(**kwargs)
        self.num_views = num_views

    def call(self, logits, training=None):
        if training:
            return logits
        log_probabilities = keras.ops.log_softmax(logits, axis=-1)
        per_view = keras.ops.reshape(log_probabilities, (self.num_views, -1, logits.shape[-1]))
        # log(mean(p)) computed as logsumexp(log p) - log(views), stable for tiny p.
        return keras.ops.logsumexp(per_view, axis=0) - math.log(self.num_views)

    def get_config(self):
        return {**super().get_config(), "num_views": self.num_views}


VIEW_COUNTS = {"flip": 2, "flip_and_shift": 2 + 2 * len(SHIFTS)}


def single_view(model: keras.Model) -> keras.Model:
    """The same network (shared weights) without test-time augmentation.

    Per-epoch validation uses it: it is what early stopping and tuning compare
    between epochs and configs, and 10 views would cost ten forward passes per
    validation image every epoch. Final metrics use the full model.
    """
    names = {layer.name for layer in model.layers}
    if "test_time_views" not in names:
        return model
    return keras.Model(model.get_layer("test_time_views").output, model.get_layer("logits").output)


def probabilities(logits):
    """Class probabilities from the model's logits (with test-time views: their average)."""
    return keras.ops.softmax(logits, axis=-1)
