"""IDX parsing, validation errors, source order and the validation split."""

from __future__ import annotations

import gzip
import shutil
import time

import helpers
import numpy as np
import pytest
from conftest import write_dataset

from pipeline.config import DataConfig
from pipeline.data import sources as data_lib


def _labels_file(directory, stem="train"):
    return directory / f"{stem}-labels-idx1-ubyte.gz"


def test_parse_idx_round_trip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    helpers.write_idx(tmp_path / "x", array)
    parsed = data_lib.parse_idx((tmp_path / "x").read_bytes(), data_lib.IMAGE_MAGIC, "x")
    np.testing.assert_array_equal(parsed, array)


def test_loads_small_set_gzipped_or_not(tmp_path):
    for compress in (True, False):
        directory = write_dataset(tmp_path / str(compress), n_train=300, n_test=50, compress=compress)
        train, test = data_lib.load_directory(directory)
        assert train.images.shape == (300, 28, 28) and test.labels.shape == (50,)
        assert train.images.dtype == np.uint8


def test_gzip_with_filename_header(tmp_path):
    directory = write_dataset(tmp_path, n_train=100, n_test=20, compress=False)
    for path in list(directory.iterdir()):
        with gzip.GzipFile(filename="original-name", mode="wb", fileobj=open(f"{path}.gz", "wb")) as f:
            f.write(path.read_bytes())
        path.unlink()
    train, _ = data_lib.load_directory(directory)
    assert len(train) == 100


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda b: (1234).to_bytes(4, "big") + b[4:], "bad IDX magic number 1234"),
        (lambda b: b[:-10], "truncated"),
        (lambda b: b + b"\0\0", "trailing bytes"),
        (lambda b: b[:5], "too short"),
    ],
)
def test_corrupt_idx_is_named(tmp_path, corrupt, message):
    directory = write_dataset(tmp_path, n_train=100, n_test=20, compress=False)
    target = directory / "train-images-idx3-ubyte"
    target.write_bytes(corrupt(target.read_bytes()))
    with pytest.raises(data_lib.DataError, match=message) as info:
        data_lib.load_directory(directory)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_truncated_gzip(tmp_path):
    directory = write_dataset(tmp_path, n_train=100, n_test=20)
    target = _labels_file(directory)
    target.write_bytes(target.read_bytes()[:30])
    with pytest.raises(data_lib.DataError, match="corrupt or truncated gzip"):
        data_lib.load_directory(directory)


def test_count_mismatch(tmp_path):
    directory = write_dataset(tmp_path, n_train=100, n_test=20)
    helpers.write_idx(_labels_file(directory), np.zeros(99, np.uint8), compress=True)
    with pytest.raises(data_lib.DataError, match="100 images but .* 99 labels"):
        data_lib.load_directory(directory)


def test_label_out_of_range(tmp_path):
    directory = write_dataset(tmp_path, n_train=100, n_test=20)
    helpers.write_idx(_labels_file(directory, "t10k"), np.full(20, 12, np.uint8), compress=True)
    with pytest.raises(data_lib.DataError, match="label 12 is outside 0..9"):
        data_lib.load_directory(directory)


def test_swapped_files_are_caught(tmp_path):
    directory = write_dataset(tmp_path, n_train=100, n_test=20)
    shutil.copy(_labels_file(directory), directory / "train-images-idx3-ubyte.gz")
    with pytest.raises(data_lib.DataError, match="magic"):
        data_lib.load_directory(directory)


def test_missing_file_and_directory(tmp_path, monkeypatch):
    directory = write_dataset(tmp_path, n_train=100, n_test=20)
    _labels_file(directory, "t10k").unlink()
    with pytest.raises(data_lib.DataError, match="missing t10k-labels-idx1-ubyte"):
        data_lib.load_directory(directory)
    with pytest.raises(data_lib.DataError, match=r"^--data_dir=\S+nope does not exist .*; give a directory holding"):
        data_lib.load_train_test(str(tmp_path / "nope"))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "gone"))
    with pytest.raises(data_lib.DataError, match=r"^\$FASHION_MNIST_DIR=\S+gone does not exist .*; give a directory"):
        data_lib.load_train_test(None)
    with pytest.raises(data_lib.DataError, match="does not exist or is not a directory; give a directory holding"):
        data_lib.load_directory(tmp_path / "nope")


@pytest.mark.slow
def test_real_data_and_digest_check(real_data_dir, tmp_path):
    train, test, source = data_lib.load_train_test(str(real_data_dir))
    assert (len(train), len(test)) == (60000, 10000) and "--data_dir" in source
    assert np.bincount(train.labels).tolist() == [6000] * 10
    # Same counts, one changed label: the official digest must catch it.
    for name in data_lib.FILES.values():
        shutil.copy(real_data_dir / f"{name}.gz", tmp_path / f"{name}.gz")
    labels = gzip.decompress(_labels_file(real_data_dir).read_bytes())
    changed = labels[:100] + bytes([(labels[100] + 1) % 10]) + labels[101:]
    _labels_file(tmp_path).write_bytes(gzip.compress(changed))
    with pytest.raises(data_lib.DataError, match="differs from the official"):
        data_lib.load_directory(tmp_path)


def test_source_order(tmp_path, monkeypatch):
    flag_dir = write_dataset(tmp_path / "flag", n_train=100, n_test=20)
    env_dir = write_dataset(tmp_path / "env", n_train=120, n_test=20)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(env_dir))
    train, _, source = data_lib.load_train_test(str(flag_dir))
    assert len(train) == 100 and source.startswith("--data_dir")
    train, _, source = data_lib.load_train_test(None)
    assert len(train) == 120 and source.startswith("$FASHION_MNIST_DIR")


def test_stratified_split_is_balanced_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), 100)
    keep, held = data_lib.stratified_split(labels, 250, seed=3)
    assert len(held) == 250 and len(keep) == 750
    assert not set(keep) & set(held)
    assert np.bincount(labels[held]).tolist() == [25] * 10
    np.testing.assert_array_equal(held, data_lib.stratified_split(labels, 250, seed=3)[1])
    assert not np.array_equal(held, data_lib.stratified_split(labels, 250, seed=4)[1])
    with pytest.raises(data_lib.DataError, match="validation size"):
        data_lib.stratified_split(labels, 1000, seed=0)


def test_load_splits(tiny_data_dir):
    dataset = data_lib.load(DataConfig(data_dir=str(tiny_data_dir), validation_size=64))
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (576, 64, 160)


@pytest.mark.slow
def test_debian_package_is_found_without_flags(monkeypatch):
    if not data_lib.DEBIAN_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed (CI installs it)")
    train, test, source = data_lib.load_train_test(None)
    assert "Debian package" in source and (len(train), len(test)) == (60000, 10000)


@pytest.mark.slow
def test_tfds_manual_dir_is_the_last_resort(real_data_dir, tmp_path, monkeypatch):
    # No local directory anywhere: the TFDS builder prepares from manual_dir
    # (the exact upstream files) without touching the network.
    monkeypatch.setattr(data_lib, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr(data_lib, "KERAS_CACHE_DIR", tmp_path / "none")
    monkeypatch.setenv("FASHION_MNIST_MANUAL_DIR", str(real_data_dir))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    train, test, source = data_lib.load_train_test(None)
    assert source.startswith("tensorflow-datasets") and (len(train), len(test)) == (60000, 10000)
    # TFDS stores examples in its own shuffled order: compare as multisets.
    reference, _ = data_lib.load_directory(real_data_dir)

    def keys(split):
        weights = np.arange(1, 28 * 28 + 1, dtype=np.int64)
        return np.sort(split.images.reshape(len(split), -1).astype(np.int64) @ weights * 10 + split.labels)

    np.testing.assert_array_equal(keys(train), keys(reference))


def test_an_offline_machine_without_local_data_hears_so_in_seconds(tmp_path, monkeypatch):
    import socket

    import tensorflow_datasets as tfds

    from pipeline.data import tfds_source

    # No local directory anywhere, nothing prepared, no manual directory and no proxy: TFDS would download.
    monkeypatch.setattr(data_lib, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr(data_lib, "KERAS_CACHE_DIR", tmp_path / "none")
    # Whatever a developer's ~/tensorflow_datasets holds (tensorflow-datasets reads its
    # data directory once, when imported).
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: False)
    for name in ("FASHION_MNIST_MANUAL_DIR", *tfds_source.PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    tried = []

    def offline(address, timeout):
        tried.append((address, timeout))
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", offline)
    started = time.monotonic()
    with pytest.raises(data_lib.DataError) as error:
        data_lib.load_train_test(None)
    host = ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)
    assert time.monotonic() - started < 60 and tried == [(host, 10.0)]
    message = str(error.value)
    assert message.startswith(
        "no local Fashion-MNIST, and tensorflow-datasets cannot download it: http://fashion-mnist"
    )
    assert "Temporary failure in name resolution" in message and "--data_dir=DIR" in message and "\n" not in message
    # Behind a proxy a direct connection proves nothing: the download itself decides.
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    tfds_source.check_reachable("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    assert len(tried) == 1
