"""Export for TF Serving: round trip without our packages, atomic publish, versions, warmup, views, TFLite, verify."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from helpers import serve_without_our_packages

from pipeline import config_files
from pipeline.config import DataConfig
from pipeline.data import sources as data_lib
from pipeline.runs import workdir as workdir_lib
from pipeline.serving import export as export_lib


def test_train_exports_version_1_with_warmup_and_metadata(trained):
    workdir, metrics = trained
    version = workdir / "export" / "1"
    assert metrics["export"] == str(version) and (version / "saved_model.pb").exists()
    extra = version / "assets.extra"
    assert (extra / "class_names.txt").read_text().splitlines()[0] == "T-shirt/top"
    assert json.loads((extra / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(str(extra / "tf_serving_warmup_requests")))
    assert records
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert tf.make_ndarray(request.inputs["images"]).shape[1:] == (28, 28)


def test_round_trip_in_a_process_without_our_packages(trained, tiny_data_dir, tmp_path):
    from pipeline.data import sources as data_lib
    from pipeline.runs.final_model import load_final_model, predict_probabilities

    workdir, _ = trained
    test = data_lib.load(DataConfig(data_dir=str(tiny_data_dir), validation_size=64)).test
    images = test.images[:40]
    out = serve_without_our_packages(workdir / "export" / "1", images, tmp_path)
    expected = predict_probabilities(load_final_model(workdir, config_files.load_file(workdir / "config.json")), images)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    assert out["dtype"] == "float32" and out["same_4d"]
    assert out["class_id"] == expected.argmax(1).tolist()
    assert out["class_name"][0] == data_lib.CLASS_NAMES[out["class_id"][0]]
    assert out["bytes_class_id"] == out["class_id"][:5]


def test_versions_increment_and_never_overwrite(trained, tmp_path):
    workdir, _ = trained
    assert export_lib.export_run(workdir, tmp_path).name == "1"
    assert export_lib.export_run(workdir, tmp_path).name == "2"
    with pytest.raises(export_lib.ExportError, match="already exists"):
        export_lib.export_run(workdir, tmp_path, version=2)
    assert export_lib.export_run(workdir, tmp_path, version=7).name == "7"
    assert export_lib.next_version(tmp_path) == 8


def test_failure_midway_leaves_no_numbered_directory(trained, tmp_path, monkeypatch):
    workdir, _ = trained

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_lib, "_write_warmup", broken)
    # A one-line error naming what was being written and where.
    with pytest.raises(workdir_lib.WorkdirError, match=f"could not write export version 1 to {tmp_path}: disk full"):
        export_lib.export_run(workdir, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_of_unfinished_run_is_refused(tmp_path):
    done = run([sys.executable, "-m", "launch.export", f"--workdir={tmp_path}"], timeout=120)
    assert done.returncode != 0 and "finish the run" in done.stderr and "Traceback" not in done.stderr
    missing = run([sys.executable, "-m", "launch.export", f"--workdir={tmp_path / 'typo'}"], timeout=120)
    assert missing.returncode != 0 and "typo does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_tflite_models_agree_with_the_saved_model(trained, tiny_data_dir, tmp_path):
    from helpers import tflite_probabilities

    from pipeline.data import sources as data_lib

    workdir, _ = trained
    version = export_lib.export_run(workdir, tmp_path, tflite=True)
    test = data_lib.load(DataConfig(data_dir=str(tiny_data_dir), validation_size=64)).test
    served = tf.saved_model.load(str(version)).signatures["serving_default"](images=tf.constant(test.images))
    reference = served["probabilities"].numpy()
    # Float TFLite is the same graph: equal to rounding. Dynamic-range
    # quantisation stores weights in int8: close, not equal. (Accuracy on the
    # real test set is measured by benchmarks/verify_export.py.)
    for variant, tolerance in (("float", 1e-4), ("dynamic_range", 0.05)):
        probabilities = tflite_probabilities(version / "tflite" / f"model_{variant}.tflite", test.images)
        assert probabilities.shape == reference.shape
        assert np.abs(probabilities - reference).max() < tolerance, variant


def test_serving_default_rejects_wrong_shapes(trained):
    workdir, _ = trained
    serve = tf.saved_model.load(str(workdir / "export" / "1")).signatures["serving_default"]
    for shape in [(2, 28, 29), (2, 784), (2, 28, 28, 3), ()]:
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be uint8"):
            serve(images=tf.zeros(shape, tf.uint8))


def test_test_time_views_are_chosen_at_export(trained, tiny_data_dir, tmp_path):
    import dataclasses

    from pipeline.runs.final_model import load_final_model, predict_probabilities

    workdir, _ = trained
    config = config_files.load_file(workdir / "config.json")
    assert config.model.test_time_augmentation == "flip_and_shift"
    images = data_lib.load_train_test(str(tiny_data_dir))[1].images[:16]
    for views in ("none", "flip"):
        path = export_lib.export_run(workdir, tmp_path / views, test_time_augmentation=views)
        served = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(images))
        same = config.replace(model=dataclasses.replace(config.model, test_time_augmentation=views))
        expected = predict_probabilities(load_final_model(workdir, same), images)
        np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
        assert json.loads((path / "assets.extra" / "preprocessing.json").read_text())["test_time_augmentation"] == views
        assert config_files.load_file(path / "assets.extra" / "config.json") == same


@pytest.mark.parametrize("order", ["canonical", "file", None], ids=["canonical", "file", "config_before_order"])
def test_verify_export_takes_the_test_images_a_capped_run_was_evaluated_on(tiny_data_dir, tmp_path, order):
    from benchmarks.verify_export import evaluated_test_images

    data = DataConfig(data_dir=str(tiny_data_dir), validation_size=64, max_eval_examples=7, order=order or "file")
    expected = data_lib.load(data).test
    (tmp_path / "metrics.json").write_text(json.dumps({"examples": {"test": 7}}))
    (tmp_path / "config.json").write_text(json.dumps({"data": {"order": order} if order else {}}))
    as_loaded = data_lib.load(DataConfig(data_dir=str(tiny_data_dir), validation_size=64, order="file")).test
    images, labels = evaluated_test_images(as_loaded.images, as_loaded.labels, tmp_path)
    np.testing.assert_array_equal(images, expected.images)
    np.testing.assert_array_equal(labels, expected.labels)


def test_verify_export_passes_an_export_as_trained_and_fails_one_that_is_not(trained, tiny_data_dir, tmp_path):
    import shutil

    from conftest import REPO

    workdir, metrics = trained
    export = tmp_path / "1"
    shutil.copytree(workdir / "export" / "1", export)
    command = [sys.executable, str(REPO / "benchmarks" / "verify_export.py"), str(export), str(tiny_data_dir)]
    done = run(command, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["test_examples"] == metrics["examples"]["test"] and result["difference_points"] < 0.1
    recorded = json.loads((export / "assets.extra" / "metrics.json").read_text())
    recorded["test_accuracy"] -= 0.05
    (export / "assets.extra" / "metrics.json").write_text(json.dumps(recorded))
    done = run(command, timeout=300)
    assert done.returncode == 1 and "error: the export does not serve as trained" in done.stderr


def test_an_export_base_that_cannot_hold_versions_is_refused_before_training(tiny_data_dir, tmp_path):
    from pipeline import config as config_lib
    from pipeline import presets
    from pipeline.training.driver import train_and_evaluate

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    export_lib.check_export_base(tmp_path / "new" / "base")  # Made when exporting.
    assert not (tmp_path / "new").exists()
    for base, problem in ((a_file, "it is a file, not a directory"), (a_file / "sub", f"{a_file} is a file")):
        with pytest.raises(export_lib.ExportError, match=f"cannot export to {base}: {problem}"):
            export_lib.check_export_base(base)
    data = config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64)
    config = presets.preset("smoke").replace(data=data)
    workdir = tmp_path / "run"
    with pytest.raises(export_lib.ExportError, match="give --export_base a directory"):
        train_and_evaluate(config, workdir, tf.distribute.get_strategy(), progress=False, export_base=a_file)
    assert not any(workdir.iterdir()), "refused before anything was written"


def test_verify_export_names_a_directory_it_cannot_check_in_one_line(trained, tiny_data_dir, tmp_path):
    from conftest import REPO

    workdir, _ = trained
    script = [sys.executable, str(REPO / "benchmarks" / "verify_export.py")]
    assert run(script, timeout=120).returncode == 2
    for export, data, problem in (
        (workdir, tiny_data_dir, "holds no saved_model.pb; give an export's version directory"),
        (workdir / "export" / "1", tmp_path, "holds no t10k-images-idx3-ubyte(.gz)"),
    ):
        done = run([*script, str(export), str(data)], timeout=120)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 1 and last.startswith("error: ") and problem in last, done.stderr[-1000:]
        assert "Traceback" not in done.stderr
