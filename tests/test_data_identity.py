"""One data identity: every source gives the same examples in the same order, and a run refuses other data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import run, smoke_train_command, write_dataset

from pipeline import config as config_lib
from pipeline import config_files, presets
from pipeline.data import sources as data_lib
from pipeline.data import tfds_source


def _as_tfds_stores_them(split: data_lib.Split, seed: int):
    """A fake tensorflow-datasets `_as_dataset`: the same examples in another order, as TFDS keeps them."""
    order = np.random.default_rng(seed).permutation(len(split))

    def as_dataset(self, *args, **kwargs):
        del self, args, kwargs
        return tf.data.Dataset.from_tensor_slices(
            {"image": split.images[order][..., None], "label": split.labels[order].astype(np.int64)}
        )

    return as_dataset


def test_idx_files_and_tensorflow_datasets_give_the_same_splits_and_fingerprint(tiny_data_dir, monkeypatch):
    config = config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64)
    from_idx = data_lib.load(config)
    train, test = data_lib.load_directory(tiny_data_dir)
    # The fake source serves the training split for every split: compare on the training examples.
    # It downloads nothing, so the download host need not be reachable.
    monkeypatch.setattr(tfds_source, "check_reachable", lambda url: None)
    with tfds.testing.mock_data(as_dataset_fn=_as_tfds_stores_them(train, seed=1)):
        tfds_train = data_lib.Split(*tfds_source.load()[0])
    assert not np.array_equal(tfds_train.labels, train.labels), "the fake source really reorders"
    from_tfds = data_lib.split_dataset(tfds_train, test, "tensorflow-datasets", config)
    for name in ("train", "validation", "test"):
        a, b = getattr(from_idx, name), getattr(from_tfds, name)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels), name
    assert data_lib.fingerprint(from_idx) == data_lib.fingerprint(from_tfds)
    # In file order the two sources would validate on different examples.
    by_file = lambda t: data_lib.split_dataset(t, test, "", config_lib.DataConfig(validation_size=64, order="file"))  # noqa: E731
    assert not np.array_equal(by_file(train).validation.images, by_file(tfds_train).validation.images)


def test_runs_recorded_before_the_order_existed_keep_the_file_order(tmp_path):
    recorded = config_files.to_dict(presets.preset("smoke"))
    del recorded["data"]["order"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert config_files.load_run_config(tmp_path / "config.json").data.order == "file"
    assert presets.preset("default").data.order == "canonical"


@pytest.mark.slow
def test_resuming_on_other_data_is_refused_naming_both_fingerprints(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    first = run(smoke_train_command(workdir, tiny_data_dir, "--noexport", "--noreport"), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = json.loads((workdir / "data.json").read_text())
    assert json.loads((workdir / "metrics.json").read_text())["data_fingerprint"] == recorded["fingerprint"]
    other = write_dataset(tmp_path / "other", n_train=700)
    refused = run(smoke_train_command(workdir, other, "--epochs=2", "--noexport", "--noreport"), timeout=300)
    assert refused.returncode == 1
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert f"trained on data with fingerprint {recorded['fingerprint']}" in line and "this run's data has" in line


def test_a_start_refused_before_training_writes_nothing_and_binds_the_workdir_to_no_data(tiny_data_dir, tmp_path):
    from pipeline.runs import workdir as workdir_lib

    workdir = tmp_path / "run"
    # More examples asked per batch than there are: refused before anything is written.
    refused = run(smoke_train_command(workdir, tiny_data_dir, "--max_train_examples=10"), timeout=300)
    assert refused.returncode == 1 and "use a smaller --global_batch_size" in refused.stderr
    assert not workdir.exists() or not any(workdir.iterdir()), list(workdir.iterdir())
    # A data record left by a start that never trained (no config.json) does not bind the workdir.
    workdir.mkdir(exist_ok=True)
    workdir_lib.check_data(workdir, "0123456789abcdef", "an earlier start")
    workdir_lib.check_data(workdir, "fedcba9876543210", "this run")
    assert json.loads((workdir / "data.json").read_text())["fingerprint"] == "fedcba9876543210"
    (workdir / "config.json").write_text("{}")
    with pytest.raises(workdir_lib.WorkdirError, match="trained on data with fingerprint fedcba9876543210"):
        workdir_lib.check_data(workdir, "0123456789abcdef", "other data")
