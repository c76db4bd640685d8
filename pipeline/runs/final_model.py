"""The run's final model: the weights whose numbers are in metrics.json.

Training saves them to WORKDIR/final/ (best weights under early stopping,
otherwise the last); the report and the export read them from there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.data import input_pipeline as ip
from pipeline.model import network as models
from pipeline.model import views
from pipeline.runs import workdir as workdir_lib

FINAL_DIR = "final"


def weights_checkpoint(model: keras.Model) -> tf.train.Checkpoint:
    """A checkpoint of the model's weights, for saving and restoring them.

    It tracks the single-view network (the same variables), so checkpoints do
    not depend on the test-time views, which stay an inference choice.
    """
    return tf.train.Checkpoint(model=views.single_view(model))


def save_final_model(model: keras.Model, out_dir: Path) -> None:
    """Writes the model's weights as a TF checkpoint under OUT_DIR/final/."""
    manager = tf.train.CheckpointManager(weights_checkpoint(model), out_dir / FINAL_DIR, max_to_keep=1)
    manager.save()


def fingerprint(model: keras.Model) -> str:
    """A short digest of all weights, to compare replicas or runs."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.asarray(weight.numpy(), np.float32).tobytes())
    return digest.hexdigest()[:16]


def load_final_model(workdir: Path, config: config_lib.Config) -> keras.Model:
    """Builds the configured model (float32) and loads the run's final weights.

    Raises:
      WorkdirError: when the run has not finished, so there are no final weights,
        or when the weights do not fit the configured model.
    """
    latest = tf.train.latest_checkpoint(Path(workdir) / FINAL_DIR)
    if latest is None:
        raise workdir_lib.WorkdirError(
            f"{workdir}/{FINAL_DIR} holds no final weights: finish the run with fmnist-train first"
        )
    # Inference in float32 whatever the training precision: the checkpoint
    # stores float32 master weights either way.
    model = models.build_model(config.model, dtype="float32")
    try:
        weights_checkpoint(model).restore(latest).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise workdir_lib.WorkdirError(
            f"the weights in {workdir}/{FINAL_DIR} do not fit the model that {workdir}/config.json describes "
            f"(was its model section edited after training?): "
            f"{str(e).splitlines()[0][:200]}"
        ) from None
    return model


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, 10] for uint8 images, with the training preprocessing.

    Keras's compiled `predict` on moderate batches: with test-time views the
    network sees `batch_size` times the view count images in one call, and
    calling the model eagerly on thousands of images at once held several
    times the memory and ran no faster on CPU.
    """
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(ip.normalize)
    return views.probabilities(model.predict(ds, verbose=0)).numpy()
