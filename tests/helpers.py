"""Helpers only the tests use: IDX files, a tiny training config, malformed TF_CONFIGs, running a TFLite model,
serving an export in a process that imports only TensorFlow."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import config as config_lib
from pipeline import presets
from pipeline.serving import tflite as tflite_lib


def write_idx(path: str | Path, array: np.ndarray, compress: bool = False) -> None:
    """Writes a uint8 array as an IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x08 << 8) | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    Path(path).write_bytes(gzip.compress(payload) if compress else payload)


def tflite_probabilities(path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Runs a TFLite model from `write_tflite_models` over uint8 images [N, 28, 28]."""
    interpreter = tflite_lib.load_interpreter(path)
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        interpreter.resize_tensor_input(source, batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source, batch)
        interpreter.invoke()
        parts.append(interpreter.get_tensor(target))
    return np.concatenate(parts)


def tiny_config(data_dir, **train) -> config_lib.Config:
    """The `smoke` preset on the tiny data in `data_dir` (64 validation images), with `train` fields replaced."""
    base = presets.preset("smoke")
    return base.replace(
        data=config_lib.DataConfig(data_dir=str(data_dir), validation_size=64),
        train=dataclasses.replace(base.train, **train),
    )


# TF_CONFIG values a worker may be given by mistake, each with the words its one-line error must contain.
MALFORMED_TF_CONFIG_CASES = [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'needs a "cluster" object'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', 'needs a "task" object'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "outside 0..0"),
    ('{"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    # Task types MultiWorkerMirroredStrategy has no use for, on the task of that type and on the others alike.
    ('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "ps", "index": 0}}', "lists 'ps' tasks"),
    ('{"cluster": {"chief": ["h:1"], "evaluator": ["h:2"]}, "task": {"type": "chief", "index": 0}}', "'evaluator'"),
]


ROUND_TRIP = """
import json, sys
import numpy as np, tensorflow as tf
assert not any(m.split(".")[0] in ("pipeline", "tuning", "launch") for m in sys.modules)
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = model.signatures["serving_default"](images=tf.constant(images))
as_4d = model.signatures["serving_default"](images=tf.constant(images[..., None]))
encoded = [open(p, "rb").read() for p in sys.argv[3:]]
from_bytes = model.signatures["serving_image_bytes"](image_bytes=tf.constant(encoded))
print(json.dumps({
    "probabilities": out["probabilities"].numpy().tolist(),
    "dtype": out["probabilities"].dtype.name,
    "class_id": out["class_id"].numpy().tolist(),
    "class_name": [s.decode() for s in out["class_name"].numpy()],
    "same_4d": bool(np.array_equal(out["class_id"].numpy(), as_4d["class_id"].numpy())),
    "bytes_class_id": from_bytes["class_id"].numpy().tolist(),
}))
"""


def serve_without_our_packages(export: Path, images: np.ndarray, scratch: Path) -> dict:
    """Serves uint8 images [N, 28, 28] from an export in a child process that imports only TensorFlow.

    The first five images also go in as PNG bytes. Returns the child's
    `serving_default` outputs, whether 4-D input agreed, and the bytes
    signature's classes.
    """
    np.save(scratch / "images.npy", images)
    pngs = []
    for i, image in enumerate(images[:5]):
        pngs.append(str(scratch / f"{i}.png"))
        Image.fromarray(image).save(pngs[-1])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("PYTHONPATH", "FASHION_MNIST_DIR"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(export), str(scratch / "images.npy"), *pngs],
        env=env,
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
