"""Check an export as a user would: a process that imports only TensorFlow and NumPy.

  python benchmarks/verify_export.py EXPORT_VERSION_DIR DATA_DIR

Runs the whole Fashion-MNIST test set through `serving_default` and, PNG-encoded,
through `serving_image_bytes`; compares with the accuracy in the export's own
metrics.json; and, when the export has TFLite models, runs those too.
"""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def tflite_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    interpreter = tf.lite.Interpreter(model_path=str(path))
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    correct = 0
    for start in range(0, len(images), 500):
        batch = images[start : start + 500]
        interpreter.resize_tensor_input(source, batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source, batch)
        interpreter.invoke()
        correct += int((interpreter.get_tensor(target).argmax(1) == labels[start : start + 500]).sum())
    return correct / len(labels)


def main(export: str, data_dir: str) -> None:
    assert not any(name.split(".")[0] in ("pipeline", "tuning", "launch") for name in sys.modules)
    export, data_dir = Path(export), Path(data_dir)
    suffix = ".gz" if (data_dir / "t10k-images-idx3-ubyte.gz").exists() else ""
    images = read_idx(data_dir / f"t10k-images-idx3-ubyte{suffix}")
    labels = read_idx(data_dir / f"t10k-labels-idx1-ubyte{suffix}").astype(np.int64)
    model = tf.saved_model.load(str(export))
    serve, serve_bytes = model.signatures["serving_default"], model.signatures["serving_image_bytes"]
    ids = np.concatenate([serve(images=tf.constant(images[i : i + 1000]))["class_id"].numpy()
                          for i in range(0, len(images), 1000)])  # fmt: skip
    pngs = [tf.io.encode_png(image[..., None]) for image in images]
    byte_ids = np.concatenate([serve_bytes(image_bytes=tf.stack(pngs[i : i + 1000]))["class_id"].numpy()
                               for i in range(0, len(pngs), 1000)])  # fmt: skip
    trained = json.loads((export / "assets.extra" / "metrics.json").read_text())["test_accuracy"]
    result = {
        "test_examples": len(labels),
        "trained_test_accuracy": trained,
        "serving_default_accuracy": float((ids == labels).mean()),
        "difference_points": 100 * abs(float((ids == labels).mean()) - trained),
        "bytes_signature_agrees": float((byte_ids == ids).mean()),
    }
    for path in sorted((export / "tflite").glob("*.tflite")) if (export / "tflite").is_dir() else []:
        result[f"{path.stem}_accuracy"] = tflite_accuracy(path, images, labels)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
