"""The evaluation report: every file from a tiny run, and fmnist-report rebuilding it."""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
from conftest import run

from pipeline import config as config_lib
from pipeline import presets
from pipeline.runs.report import confusion_matrix, per_class_rows
from pipeline.training.driver import train_and_evaluate

REPORT_FILES = (
    "learning_curves.png",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "per_class_accuracy.csv",
    "per_class_accuracy.md",
    "misclassified.png",
)


def test_tiny_run_writes_every_report_file_and_fmnist_report_rebuilds_them(tiny_data_dir, tmp_path):
    base = presets.preset("smoke")
    config = base.replace(data=config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64))
    train_and_evaluate(config, tmp_path, tf.distribute.get_strategy(), progress=False, export=False)
    report = tmp_path / "report"
    for name in REPORT_FILES:
        assert (report / name).stat().st_size > 0, name
    assert (report / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    counts = np.loadtxt(report / "confusion_matrix.csv", delimiter=",")
    assert counts.shape == (10, 10) and counts.sum() == 160
    assert "| 0 | T-shirt/top |" in (report / "per_class_accuracy.md").read_text()
    for name in REPORT_FILES:
        (report / name).unlink()
    done = run([sys.executable, "-m", "launch.report", f"--workdir={tmp_path}"], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all((report / name).exists() for name in REPORT_FILES)


def test_report_of_unfinished_run_is_refused(tmp_path):
    done = run([sys.executable, "-m", "launch.report", f"--workdir={tmp_path}"], timeout=120)
    assert done.returncode != 0 and "no metrics.json" in done.stderr and "Traceback" not in done.stderr
    # A mistyped path is named as missing, not as an unfinished run.
    missing = run([sys.executable, "-m", "launch.report", f"--workdir={tmp_path / 'typo'}"], timeout=120)
    assert missing.returncode != 0 and missing.stderr.strip().splitlines()[-1].endswith(
        f"{tmp_path / 'typo'} does not exist: give the --workdir a finished fmnist-train run wrote"
    )
    (tmp_path / "a_file").write_text("")
    a_file = run([sys.executable, "-m", "launch.report", f"--workdir={tmp_path / 'a_file'}"], timeout=120)
    assert f"{tmp_path / 'a_file'} is a file, not a run directory: give" in a_file.stderr.strip().splitlines()[-1]


def test_confusion_matrix_and_per_class_rows():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    counts = confusion_matrix(labels, predictions)
    assert counts[0, 0] == 1 and counts[0, 1] == 1 and counts[2, 0] == 1 and counts.sum() == 5
    rows = per_class_rows(counts)
    assert rows[1]["accuracy"] == 1.0 and rows[0]["accuracy"] == 0.5 and rows[0]["precision"] == 0.5


def test_predicted_probabilities_do_not_depend_on_the_batch():
    # The report predicts in batches with a shorter last one; each
    # image's probabilities are the model's, whatever batch it falls in.
    from pipeline.data import input_pipeline as ip
    from pipeline.model import network as models
    from pipeline.model import views
    from pipeline.runs.final_model import predict_probabilities

    model = models.build_model(presets.preset("smoke").model)
    images = np.random.default_rng(0).integers(0, 256, (37, 28, 28), dtype=np.uint8)
    direct = views.probabilities(model(ip.normalize(images), training=False)).numpy()
    for batch_size in (5, 256):
        np.testing.assert_allclose(predict_probabilities(model, images, batch_size), direct, rtol=1e-5, atol=1e-6)
