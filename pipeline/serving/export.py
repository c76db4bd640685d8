"""SavedModel export in the TensorFlow Serving layout: BASE/<version>/saved_model.pb.

A version is written into a hidden temporary directory inside BASE and
renamed into place only when complete: a server polling BASE never sees a
half-written model, and an existing version is never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import config_files
from pipeline.data import input_pipeline as ip
from pipeline.data import sources as data_lib
from pipeline.model import views
from pipeline.runs import workdir as workdir_lib
from pipeline.runs.final_model import load_final_model
from pipeline.runs.lock import pid_alive
from pipeline.serving.images import LIGHT_BORDER, decode_to_grayscale_28

log = logging.getLogger(__name__)
WARMUP_FILE = "tf_serving_warmup_requests"


class ExportError(RuntimeError):
    """The export cannot be written; the message names the problem and the fix."""


class ServingModule(tf.Module):
    """The model plus its preprocessing and class names, as serving signatures."""

    def __init__(self, model, polarity: str = "auto"):
        super().__init__()
        self.model = model
        self.polarity = polarity
        self.class_names = tf.constant(data_lib.CLASS_NAMES)

    def _outputs(self, images_uint8):
        probabilities = views.probabilities(self.model(ip.normalize(images_uint8), training=False))
        class_id = tf.argmax(probabilities, axis=-1)
        return {
            "probabilities": tf.cast(probabilities, tf.float32),
            "class_id": class_id,
            "class_name": tf.gather(self.class_names, class_id),
        }

    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    def serve_images(self, images):
        """uint8 [N, 28, 28] or [N, 28, 28, 1], light object on dark (as in Fashion-MNIST)."""
        rank = tf.rank(images)
        # Pad the dynamic shape to length 4 so the checks below have static
        # shapes whatever rank arrives (a scalar must fail the check, not tracing).
        shape = tf.concat([tf.shape(images), tf.ones([4], tf.int32)], axis=0)[:4]
        ok = tf.logical_and(
            tf.logical_or(tf.equal(rank, 3), tf.logical_and(tf.equal(rank, 4), tf.equal(shape[3], 1))),
            tf.logical_and(tf.equal(shape[1], 28), tf.equal(shape[2], 28)),
        )
        check = tf.debugging.Assert(ok, ["images must be uint8 [N,28,28] or [N,28,28,1]; got", tf.shape(images)])
        with tf.control_dependencies([check]):  # Fail with this message before any reshape can.
            return self._outputs(tf.reshape(images, [-1, 28, 28]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(self, image_bytes):
        """Encoded PNG/JPEG images of any size and colour (REST: {"b64": ...}); light grounds inverted (`polarity`)."""
        images = tf.map_fn(
            lambda encoded: decode_to_grayscale_28(encoded, self.polarity),
            image_bytes,
            fn_output_signature=tf.TensorSpec([28, 28], tf.uint8),
        )
        return self._outputs(images)


def next_version(base: Path) -> int:
    """One more than the highest numeric version in BASE (1 when there is none)."""
    versions = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(versions, default=0) + 1


def _write_warmup(directory: Path, images: np.ndarray) -> None:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    extra = directory / "assets.extra"
    extra.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
        for batch in (images[:1], images[:8]):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name="fmnist", signature_name="serving_default")
            )
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch))
            record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(record.SerializeToString())


def _write_metadata(directory: Path, workdir: Path, config: config_lib.Config, polarity: str) -> None:
    extra = directory / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "class_names.txt").write_text("\n".join(data_lib.CLASS_NAMES) + "\n")
    config_files.save(config, extra / "config.json")  # As exported (test-time views may differ from training's).
    shutil.copy(workdir / "metrics.json", extra / "metrics.json")
    (extra / "preprocessing.json").write_text(
        json.dumps(
            {
                "images": "uint8 [N,28,28] or [N,28,28,1], light object on dark ground, scaled to [0,1] in the graph",
                "image_bytes": "PNG/JPEG/GIF/BMP/WebP decoded, converted to grayscale, transparent pixels laid "
                "over white, inverted as `polarity` says, padded to square, resized to 28x28 (area)",
                "polarity": polarity,
                "polarity_rule": f"auto inverts an image whose border's mean grey level exceeds {LIGHT_BORDER}",
                "test_time_augmentation": config.model.test_time_augmentation,
            },
            indent=2,
        )
    )


def _publish(staging: Path, base: Path, version: int, any_version: bool) -> Path:
    """Renames the finished staging directory to BASE/<version>, atomically.

    The rename fails when another export published that version meanwhile:
    then an automatically chosen version moves to the next free one, and an
    explicit one is an error. No version is ever half-written or overwritten.
    """
    while True:
        target = base / str(version)
        try:
            os.rename(staging, target)  # Atomic on one file system; fails if target exists and is not empty.
            return target
        except OSError as e:
            if not target.exists():
                raise
            if not any_version:
                raise ExportError(f"{target} was published by another export meanwhile; pass another --version") from e
            version = next_version(base)


def _remove_abandoned_staging(base: Path) -> None:
    """Removes staging directories of exports on this host whose process is gone."""
    for staging in base.glob(".*.incomplete-*"):
        writer = re.search(r"\.incomplete-(\d+)@(.+)-[a-z0-9_]+$", staging.name)
        if writer and writer[2] == socket.gethostname() and not pid_alive(int(writer[1])):
            shutil.rmtree(staging, ignore_errors=True)


def check_export_base(base: Path) -> None:
    """Raises ExportError when `base` could not hold model versions; creates nothing."""
    problem = workdir_lib.check_directory_can_be_written(Path(base))
    if problem:
        raise ExportError(f"cannot export to {base}: {problem}; give --export_base a directory that can be written")


def export_run(
    workdir: str | Path,
    export_base: str | Path | None = None,
    version: int | None = None,
    tflite: bool = False,
    test_time_augmentation: config_lib.TestTimeAugmentation | None = None,
    polarity: str = "auto",
) -> Path:
    """Exports a finished run's final model; returns BASE/<version>.

    Args:
      workdir: a finished fmnist-train run.
      export_base: the model base directory (default WORKDIR/export).
      version: numeric version; default the next free one. An existing
        version is an error, never overwritten.
      tflite: also write float and dynamic-range-quantised TFLite models.
      test_time_augmentation: the views the exported model averages; default
        the run's. "none" serves the most examples per second (the run's
        metrics.json then overstates the exported model's accuracy; its
        `test_accuracy_single_view` is the matching number).
      polarity: how `serving_image_bytes` reads brightness (`images.POLARITIES`):
        "auto" inverts images on a light ground (photos), recorded in
        assets.extra/preprocessing.json.
    """
    workdir = Path(workdir)
    base = Path(export_base) if export_base else workdir / "export"
    workdir_lib.require_finished(workdir, "finish the run with fmnist-train first")
    config = config_files.load_run_config(workdir / "config.json")
    if test_time_augmentation is not None:
        model_config = dataclasses.replace(config.model, test_time_augmentation=test_time_augmentation)
        config = config.replace(model=model_config)
    check_export_base(base)
    chosen = version
    version = next_version(base) if chosen is None else chosen
    if (base / str(version)).exists():
        raise ExportError(f"{base / str(version)} already exists; pass another --version or omit it")
    with workdir_lib.writing("an export", base):
        base.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(base)
    model = load_final_model(workdir, config)
    warmup_images = data_lib.load(config.data).test.images[:8]
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.incomplete-{os.getpid()}@{socket.gethostname()}-", dir=base))
    try:
        with workdir_lib.writing(f"export version {version}", base):
            module = ServingModule(model, polarity)
            signatures = {"serving_default": module.serve_images, "serving_image_bytes": module.serve_image_bytes}
            tf.saved_model.save(module, str(staging), signatures=signatures)
            _write_warmup(staging, warmup_images)
            _write_metadata(staging, workdir, config, polarity)
            if tflite:
                from pipeline.serving import tflite as tflite_lib

                tflite_lib.write_tflite_models(model, staging / tflite_lib.DIRECTORY)
            os.chmod(staging, 0o755)  # mkdtemp makes it 0700; servers may run as another user.
        target = _publish(staging, base, version, chosen is None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s", target)
    return target
