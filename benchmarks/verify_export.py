"""Check an export as a user would: a process that imports only TensorFlow and NumPy.

  python benchmarks/verify_export.py EXPORT_VERSION_DIR DATA_DIR

Runs the test images the run was evaluated on (the whole Fashion-MNIST test set,
or the N of them a run capped with `data.max_eval_examples` used) through `serving_default` and,
PNG-encoded, through `serving_image_bytes`; compares with the accuracy in the
export's own metrics.json; and, when the export has TFLite models, runs those
too. Exits 1 when the served accuracy differs from the recorded one by
`TOLERANCE_POINTS` or more, or the two signatures disagree on any image.
"""

import gzip
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

# The export computes in float32, as the final evaluation did: only summation
# order differs, which can flip an image whose two top classes tie.
TOLERANCE_POINTS = 0.1


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def evaluated_test_images(images: np.ndarray, labels: np.ndarray, extra: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels the run was evaluated on, from the export's config.json and metrics.json.

    A run capped with `data.max_eval_examples` took the first N test images in
    its data order: "canonical" sorts them by a digest of image and label
    (`pipeline.data.sources.canonical_order`, written out here so this process
    imports only TensorFlow and NumPy; a config from before the field used "file").
    """
    count = json.loads((extra / "metrics.json").read_text()).get("examples", {}).get("test", len(labels))
    if count >= len(labels):
        return images, labels
    order = json.loads((extra / "config.json").read_text())["data"].get("order", "file")
    if order == "canonical":
        keys = [
            hashlib.blake2b(i.tobytes() + bytes([int(y)]), digest_size=16).digest()
            for i, y in zip(images, labels, strict=True)
        ]
        ranked = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        images, labels = images[ranked], labels[ranked]
    return images[:count], labels[:count]


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


def check_inputs(export: Path, data_dir: Path) -> str | None:
    """Why the export or the data directory cannot be checked, or None."""
    if not (export / "saved_model.pb").is_file():
        return f"{export} holds no saved_model.pb; give an export's version directory, e.g. runs/default/export/1"
    if not (export / "assets.extra" / "metrics.json").is_file():
        return f"{export} holds no assets.extra/metrics.json; give an export fmnist-train or fmnist-export wrote"
    if not any((data_dir / f"t10k-{kind}").is_file() for kind in ("images-idx3-ubyte.gz", "images-idx3-ubyte")):
        return f"{data_dir} holds no t10k-images-idx3-ubyte(.gz); give the directory of the Fashion-MNIST IDX files"
    return None


def main(export: str, data_dir: str) -> None:
    assert not any(name.split(".")[0] in ("pipeline", "tuning", "launch") for name in sys.modules)
    export, data_dir = Path(export), Path(data_dir)
    problem = check_inputs(export, data_dir)
    if problem:
        sys.exit(f"error: {problem}")
    suffix = ".gz" if (data_dir / "t10k-images-idx3-ubyte.gz").exists() else ""
    images = read_idx(data_dir / f"t10k-images-idx3-ubyte{suffix}")
    labels = read_idx(data_dir / f"t10k-labels-idx1-ubyte{suffix}").astype(np.int64)
    images, labels = evaluated_test_images(images, labels, export / "assets.extra")
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
    if result["difference_points"] >= TOLERANCE_POINTS or result["bytes_signature_agrees"] < 1.0:
        sys.exit(f"error: the export does not serve as trained: {json.dumps(result)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python benchmarks/verify_export.py EXPORT_VERSION_DIR DATA_DIR", file=sys.stderr)
        sys.exit(2)
    main(*sys.argv[1:])
