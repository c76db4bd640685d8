"""TensorFlow Lite models of an export: float and dynamic-range quantised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline import input_pipeline as ip

VARIANTS = {"float": [], "dynamic_range": [tf.lite.Optimize.DEFAULT]}


def write_tflite_models(module: tf.Module, directory: Path) -> dict[str, Path]:
    """Writes DIRECTORY/model_<variant>.tflite: uint8 [N,28,28] in, probabilities out."""

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    def probabilities(images):
        return {"probabilities": module.model(ip.normalize(images), training=False)}

    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, optimizations in VARIANTS.items():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([probabilities.get_concrete_function()], module)
        converter.optimizations = optimizations
        path = directory / f"model_{name}.tflite"
        path.write_bytes(converter.convert())
        written[name] = path
    return written


def tflite_probabilities(path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Runs a TFLite model from `write_tflite_models` over uint8 images [N, 28, 28]."""
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    parts = [runner(images=images[i : i + batch_size])["probabilities"] for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)
