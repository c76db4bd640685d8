"""Workdirs and exports written by earlier versions still resume, export and serve.

tests/data/legacy_run is a finished one-epoch `smoke` run on the synthetic
data of `conftest.write_dataset`, written by the version whose classifier
ended in a softmax layer (named "probabilities") and whose config.json has no
field added since.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config_files
from pipeline.config import DataConfig
from pipeline.data import sources as data_lib
from pipeline.serving.export import export_run
from pipeline.training.driver import train_and_evaluate

LEGACY_RUN = Path(__file__).parent / "data" / "legacy_run"


@pytest.fixture
def legacy_workdir(tmp_path) -> Path:
    return Path(shutil.copytree(LEGACY_RUN, tmp_path / "legacy_run"))


def _serve(export_dir: Path, images: np.ndarray) -> np.ndarray:
    served = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    return served(images=tf.constant(images))["probabilities"].numpy()


def test_legacy_workdir_resumes_to_more_epochs(legacy_workdir, tiny_data_dir):
    legacy_history = json.loads((legacy_workdir / "history.json").read_text())
    config = config_files.load_run_config(legacy_workdir / "config.json")
    config = config.replace(
        data=dataclasses.replace(config.data, data_dir=str(tiny_data_dir)),
        train=dataclasses.replace(config.train, epochs=2),
    )
    metrics = train_and_evaluate(config, legacy_workdir, tf.distribute.get_strategy(), make_report=False, export=False)
    history = json.loads((legacy_workdir / "history.json").read_text())
    assert metrics["epochs_completed"] == 2
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == legacy_history[0]  # The legacy epoch was restored, not retrained.
    assert history[1]["val_accuracy"] > 0.2


def test_legacy_export_serves_and_a_new_export_of_it_agrees(legacy_workdir, tiny_data_dir, tmp_path):
    images = data_lib.load(DataConfig(data_dir=str(tiny_data_dir), validation_size=64)).test.images[:32]
    legacy = _serve(legacy_workdir / "export" / "1", images)
    np.testing.assert_allclose(legacy.sum(axis=1), 1.0, rtol=1e-5)
    # The legacy config.json names a data directory that does not exist here.
    config = json.loads((legacy_workdir / "config.json").read_text())
    config["data"]["data_dir"] = str(tiny_data_dir)
    (legacy_workdir / "config.json").write_text(json.dumps(config))
    fresh = export_run(legacy_workdir, tmp_path / "export")
    np.testing.assert_allclose(_serve(fresh, images), legacy, atol=1e-6)
