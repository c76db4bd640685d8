"""TensorFlow Lite models of an export: float and dynamic-range quantised, written and loaded."""

from __future__ import annotations

import warnings
from pathlib import Path

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from pipeline.data import input_pipeline as ip
from pipeline.model import views

VARIANTS = {"float": [], "dynamic_range": [tf.lite.Optimize.DEFAULT]}
DIRECTORY = "tflite"  # Where an export keeps them (`fmnist-export --tflite`).


def write_tflite_models(model: tf.Module, directory: Path) -> dict[str, Path]:
    """Writes DIRECTORY/model_<variant>.tflite: uint8 [N,28,28] in, probabilities [N,10] out."""

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    def serve(images):
        return {"probabilities": views.probabilities(model(ip.normalize(images), training=False))}

    # Freeze first: converting Keras 3 variables as-is leaves READ_VARIABLE ops
    # that TFLite never initialises (NaN or zero outputs).
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, optimizations in VARIANTS.items():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], trackable_obj=model)
        converter.optimizations = optimizations
        written[name] = directory / f"model_{name}.tflite"
        written[name].write_bytes(converter.convert())
    return written


def load_interpreter(path: Path) -> tf.lite.Interpreter:
    """An interpreter of one model `write_tflite_models` wrote (tensors not yet allocated)."""
    with warnings.catch_warnings():
        # TensorFlow 2.21's interpreter runs these models; its notice points to
        # the LiteRT package, which this project does not install.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        return tf.lite.Interpreter(model_path=str(path))
