"""Predicting image files with an exported SavedModel or one of its TFLite models (TensorFlow only at run time)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.data.sources import CLASS_NAMES
from pipeline.serving import tflite as tflite_lib
from pipeline.serving.images import POLARITIES, decode_to_grayscale_28

NOT_AN_IMAGE = "not a PNG, JPEG, GIF, BMP or WebP image"
# The first bytes of the formats `tf.io.decode_image` reads.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def _looks_like_an_image(content: bytes) -> bool:
    # WebP: "RIFF", the size (4 bytes), then "WEBP".
    return content.startswith(_IMAGE_SIGNATURES) or (content[:4] == b"RIFF" and content[8:12] == b"WEBP")


STDIN = "-"  # The file name that reads the image from standard input (`curl ... | fmnist-predict ... -`).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def expand_directories(paths: list[str]) -> list[str]:
    """Each directory among `paths` replaced by its image files (by suffix, sorted, not recursive).

    A directory holding none stays, and its result is an error.
    """
    files = []
    for path in paths:
        if Path(path).is_dir():
            images = sorted(str(p) for p in Path(path).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(images or [path])
        else:
            files.append(path)
    return files


def recorded_polarity(model_dir: Path) -> str:
    """The polarity the export's `serving_image_bytes` was built with; "auto" for an export that records none."""
    preprocessing = model_dir / "assets.extra" / "preprocessing.json"
    polarity = json.loads(preprocessing.read_text()).get("polarity", "auto") if preprocessing.exists() else "auto"
    return polarity if polarity in POLARITIES else "auto"


class ModelNotFoundError(FileNotFoundError):
    """No SavedModel at the given path."""


def resolve_model_dir(path: str | Path) -> Path:
    """A version directory as given, a `.tflite` file as given, or the highest numeric version under a base."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist: give --model an export (e.g. WORKDIR/export) or a .tflite file"
        )
    if (path / "saved_model.pb").exists() or (path.suffix == ".tflite" and path.is_file()):
        return path
    if path.name == tflite_lib.DIRECTORY and path.is_dir():
        models = ", ".join(sorted(p.name for p in path.glob("*.tflite")))
        raise ModelNotFoundError(f"{path} holds TFLite models ({models or 'none'}): give one file as --model")
    numbered = [p for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []
    if not numbered:
        # A training run's workdir holds its exports under export/.
        hint = ""
        if (path / "export").is_dir():
            hint = f"; the export of this run is {path / 'export'}"
        elif (path / "best_run" / "export").is_dir():
            hint = f"; this search's retrained best is exported in {path / 'best_run' / 'export'}"
        raise ModelNotFoundError(
            f"{path} is neither a SavedModel version directory nor a base of numeric versions{hint}"
        )
    return max(numbered, key=lambda p: int(p.name))


def load_image(path: Path, polarity: str = "auto") -> np.ndarray:
    """uint8 [28, 28] from an image file (`STDIN`: standard input), as the export's bytes signature converts it.

    Raises:
      ValueError: when the file is not a decodable image.
    """
    if str(path) == STDIN:
        content = sys.stdin.buffer.read()
    elif path.is_dir():
        raise ValueError(f"a directory with no {', '.join(IMAGE_SUFFIXES)} files")
    else:
        content = path.read_bytes()
    # Told by its first bytes: a file that is no image at all never reaches
    # TensorFlow's decoder, whose failure also prints a native warning line.
    if not _looks_like_an_image(content):
        raise ValueError(NOT_AN_IMAGE)
    try:
        return decode_to_grayscale_28(tf.constant(content), polarity).numpy()
    except tf.errors.InvalidArgumentError:
        raise ValueError("an image that does not decode (damaged?)") from None


def export_of(model: Path) -> Path:
    """The SavedModel version directory `model` belongs to: itself, or for a TFLite file the export holding it."""
    return model.parent.parent if model.suffix == ".tflite" else model


def _tflite_classifier(path: Path):
    """probabilities [10] of one uint8 [28, 28] image, from a TFLite model (`pipeline.serving.tflite`)."""
    interpreter = tflite_lib.load_interpreter(path)
    (given,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(given["index"], [1, 28, 28])
    interpreter.allocate_tensors()

    def classify(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(given["index"], image[np.newaxis].astype(np.uint8))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])[0]

    return classify


def _saved_model_classifier(path: Path):
    """probabilities [10] of one uint8 [28, 28] image, from the export's `serving_default`."""
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda image: serve(images=tf.constant(image[np.newaxis]))["probabilities"].numpy()[0]


def predict_files(model_dir: Path, files: list[str], top_k: int, polarity: str | None = None) -> list[dict]:
    """One result per file: {"file", "top": [{class_name, class_id, probability}]} or {"file", "error"}.

    `model_dir` is a SavedModel version directory or a TFLite file of one
    (`resolve_model_dir`). `polarity` None reads the images as the export's
    bytes signature does (`recorded_polarity`).
    """
    export = export_of(model_dir)
    polarity = polarity or recorded_polarity(export)
    classify = _tflite_classifier(model_dir) if model_dir.suffix == ".tflite" else _saved_model_classifier(model_dir)
    names = _class_names(export)
    results = []
    for name in files:
        try:
            image = load_image(Path(name), polarity)
        except (OSError, ValueError) as e:
            results.append({"file": name, "error": getattr(e, "strerror", None) or str(e)})
            continue
        probabilities = classify(image)
        best = np.argsort(-probabilities)[:top_k]
        results.append(
            {
                "file": name,
                "top": [
                    {"class_name": names[k], "class_id": int(k), "probability": float(probabilities[k])} for k in best
                ],
            }
        )
    return results


def _class_names(export: Path) -> list[str]:
    names = export / "assets.extra" / "class_names.txt"
    # A TFLite file copied out of its export carries no names: Fashion-MNIST's own, in class-id order.
    return names.read_text().splitlines() if names.exists() else list(CLASS_NAMES)
