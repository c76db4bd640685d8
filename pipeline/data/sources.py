"""Fashion-MNIST as validated uint8 NumPy arrays, from the first source found.

Sources, in order: an explicit directory, `$FASHION_MNIST_DIR`, the Debian and
Ubuntu package `dataset-fashion-mnist`, the Keras cache, and finally
tensorflow-datasets (which downloads where a network exists).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import zlib
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.data import tfds_source

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the official *decompressed* files: the Debian package re-gzips
# them, so only the decompressed bytes are comparable across sources.
OFFICIAL_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
OFFICIAL_COUNTS = {"train": 60000, "test": 10000}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path("~/.keras/datasets/fashion-mnist")
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The data is missing, corrupt or inconsistent; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Images [N, 28, 28] uint8 and labels [N] uint8 (or int64)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The three splits and where they came from."""

    train: Split
    validation: Split
    test: Split
    source: str


def _read_bytes(path: Path) -> bytes:
    """Reads a file, decompressing it when it starts with the gzip magic."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e}); re-download the file") from None


def parse_idx(data: bytes, expected_magic: int, name: str) -> np.ndarray:
    """Parses IDX bytes (uint8 payload) into an array, checking magic and size."""
    if len(data) < 8:
        raise DataError(f"{name}: file is {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{name}: bad IDX magic number {magic} (expected {expected_magic}); "
            "is this the right file, or an images file swapped with a labels file?"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {what}: header says {dims} ({expected} bytes) but the file has "
            f"{len(data)} bytes; re-download the file"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _locate(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing {stem} (or {stem}.gz); the directory needs all four IDX files")


def _load_split(directory: Path, part: str) -> Split:
    image_path = _locate(directory, FILES[f"{part}_images"])
    label_path = _locate(directory, FILES[f"{part}_labels"])
    image_bytes, label_bytes = _read_bytes(image_path), _read_bytes(label_path)
    images = parse_idx(image_bytes, IMAGE_MAGIC, str(image_path))
    labels = parse_idx(label_bytes, LABEL_MAGIC, str(label_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: images have shape {images.shape}, expected [N, 28, 28]")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: labels have shape {labels.shape}, expected [N]")
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
            "the two files do not belong together"
        )
    if len(labels) == 0:
        raise DataError(f"{label_path}: the file holds no examples")
    if labels.max() >= 10:
        raise DataError(f"{label_path}: label {int(labels.max())} is outside 0..9")
    if len(labels) == OFFICIAL_COUNTS[part]:
        _check_official_digest(image_path, image_bytes)
        _check_official_digest(label_path, label_bytes)
    return Split(images, labels)


def _check_official_digest(path: Path, content: bytes) -> None:
    stem = path.name.removesuffix(".gz")
    digest = hashlib.sha256(content).hexdigest()
    if digest != OFFICIAL_SHA256[stem]:
        raise DataError(
            f"{path}: has the official example count but its content differs from the official "
            f"Fashion-MNIST file (sha256 {digest[:16]}...); re-download it, or use a count other "
            "than the official one if this is deliberately your own data"
        )


def load_directory(directory: str | Path, named_by: str | None = None) -> tuple[Split, Split]:
    """Loads and validates (train, test) from a directory of IDX files.

    Args:
      directory: the directory.
      named_by: the flag or variable that named it (`--data_dir`), for the error when it is missing.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        where = f"{named_by}={directory}" if named_by else f"data directory {directory}"
        unset = ", or leave it unset to use the Debian package or a download" if named_by else ""
        raise DataError(
            f"{where} does not exist or is not a directory; "
            f"give a directory holding the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...){unset}"
        )
    return _load_split(directory, "train"), _load_split(directory, "test")


def candidate_directories(data_dir: str | None) -> list[tuple[str, Path]]:
    """The directory sources in search order, as (description, path)."""
    found = []
    if data_dir:
        found.append(("--data_dir", Path(data_dir)))
    if os.environ.get("FASHION_MNIST_DIR"):
        found.append(("$FASHION_MNIST_DIR", Path(os.environ["FASHION_MNIST_DIR"])))
    found.append(("Debian package dataset-fashion-mnist", DEBIAN_DIR))
    found.append(("Keras cache", KERAS_CACHE_DIR.expanduser()))
    return found


def load_train_test(data_dir: str | None = None) -> tuple[Split, Split, str]:
    """Loads (train, test, source) from the first source that exists.

    An explicitly named directory (`data_dir` or `$FASHION_MNIST_DIR`) must
    exist: a typo there is an error, not a reason to download.
    """
    for description, path in candidate_directories(data_dir):
        explicit = description in ("--data_dir", "$FASHION_MNIST_DIR")
        if explicit or path.is_dir():
            train, test = load_directory(path, named_by=description if explicit else None)
            source = f"{description} ({path})"
            log.debug("Fashion-MNIST from %s: %d train, %d test", source, len(train), len(test))
            return train, test, source
    log.info("no local Fashion-MNIST found; trying tensorflow-datasets (downloads if needed)")
    try:
        (train_images, train_labels), (test_images, test_labels) = tfds_source.load()
        train, test = Split(train_images, train_labels), Split(test_images, test_labels)
    except tfds_source.Unreachable as e:
        raise DataError(
            f"no local Fashion-MNIST, and tensorflow-datasets cannot download it: {e}. Pass --data_dir=DIR with the "
            "four IDX files, set FASHION_MNIST_DIR (or FASHION_MNIST_MANUAL_DIR to the upstream .gz files), or "
            "`apt-get install dataset-fashion-mnist`"
        ) from None
    except Exception as e:  # noqa: BLE001 - any TFDS failure means "no data".
        raise DataError(
            f"could not find Fashion-MNIST: no local directory and tensorflow-datasets failed ({e}). "
            "Pass --data_dir=DIR with the four IDX files, set FASHION_MNIST_DIR, or "
            "`apt-get install dataset-fashion-mnist`"
        ) from None
    return train, test, "tensorflow-datasets fashion_mnist"


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (keep, held_out) index arrays; held_out has `size` class-balanced picks (none for 0)."""
    if not 0 <= size < len(labels):
        raise DataError(
            f"validation size {size} (--validation_size, data.validation_size) does not fit the "
            f"{len(labels)} training images: give a size from 0 to {len(labels) - 1}"
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Largest-remainder apportionment keeps each class's share exact.
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota)[: size - take.sum()]] += 1
    held = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take, strict=False)]
    held_out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


def _subset(split: Split, indices: np.ndarray) -> Split:
    return Split(split.images[indices], split.labels[indices])


def canonical_order(split: Split) -> Split:
    """The split's examples sorted by a digest of their content (image and label).

    Sources list the same examples in different orders; sorted by content
    they are in one order whatever the source, so position-based choices (the
    validation split, each worker's shard) pick the same examples everywhere.
    Identical examples are interchangeable, so ties need no rule.
    """
    keys = [
        hashlib.blake2b(image.tobytes() + bytes([int(label)]), digest_size=16).digest()
        for image, label in zip(split.images, split.labels, strict=True)
    ]
    order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    return _subset(split, order)


def fingerprint(dataset: Dataset) -> str:
    """A digest of the three splits' content and order: equal exactly when a run sees the same examples."""
    digest = hashlib.sha256()
    for split in (dataset.train, dataset.validation, dataset.test):
        digest.update(len(split).to_bytes(8, "big"))
        digest.update(np.ascontiguousarray(split.images, np.uint8).tobytes())
        digest.update(np.ascontiguousarray(split.labels, np.uint8).tobytes())
    return digest.hexdigest()[:16]


def split_dataset(train: Split, test: Split, source: str, config: DataConfig) -> Dataset:
    """Orders the examples and carves the validation split from the training ones, as `config` says."""
    if config.order == "canonical":
        train, test = canonical_order(train), canonical_order(test)
    keep, held_out = stratified_split(train.labels, config.validation_size, config.split_seed)
    keep = keep[: config.max_train_examples] if config.max_train_examples else keep
    held_out = held_out[: config.max_eval_examples] if config.max_eval_examples else held_out
    test_idx = np.arange(min(len(test), config.max_eval_examples or len(test)))
    return Dataset(_subset(train, keep), _subset(train, held_out), _subset(test, test_idx), source)


def load(config: DataConfig) -> Dataset:
    """Loads, validates and splits Fashion-MNIST into train, validation and test, as `config` says."""
    train, test, source = load_train_test(config.data_dir)
    return split_dataset(train, test, source, config)
