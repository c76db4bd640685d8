"""Export for TF Serving: round trip without our packages, atomic publish, versions, warmup, predict."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from helpers import serve_without_our_packages
from PIL import Image

from pipeline import config as config_lib
from pipeline import config_files, presets
from pipeline.config import DataConfig
from pipeline.data import sources as data_lib
from pipeline.runs import workdir as workdir_lib
from pipeline.serving import export as export_lib
from pipeline.training.driver import train_and_evaluate


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    base = presets.preset("smoke")
    config = base.replace(data=config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64))
    metrics = train_and_evaluate(config, workdir, tf.distribute.get_strategy(), progress=False, make_report=False)
    return workdir, metrics


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


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_predict_cli_on_png_jpeg_colour_sizes_and_non_images(trained, tiny_data_dir, tmp_path):
    from pipeline.data import sources as data_lib

    workdir, _ = trained
    image = data_lib.load(DataConfig(data_dir=str(tiny_data_dir), validation_size=64)).test.images[0]
    files = {
        "gray.png": _encode(image, "PNG"),
        "colour.jpg": _encode(np.stack([np.kron(image, np.ones((3, 3), np.uint8))] * 3, -1), "JPEG"),
        "wide.png": _encode(np.zeros((20, 50), np.uint8) + 200, "PNG"),
        "text.png": b"this is not an image",
        "cut.png": _encode(image, "PNG")[:40],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    paths = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.jpg")]
    done = run(
        [sys.executable, "-m", "launch.predict", f"--model={workdir / 'export'}", "--json", "--top_k=2", *paths],
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert [r["file"] for r in results] == paths
    for result in results[:3]:
        assert len(result["top"]) == 2 and result["top"][0]["probability"] >= result["top"][1]["probability"]
        assert set(result["top"][0]) == {"class_name", "class_id", "probability"}
    assert results[3]["error"] == "not a PNG, JPEG, GIF, BMP or WebP image", results[3]
    assert "damaged" in results[4]["error"] and "No such file" in results[5]["error"]


def test_predict_reads_images_as_the_exports_bytes_signature_and_takes_directories(trained, tmp_path):
    from pipeline.serving import predict

    workdir, _ = trained
    photo = np.full((28, 28), 255, np.uint8)
    photo[4:24, 8:20] = 60  # A dark garment on a light ground.
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "b.PNG").write_bytes(_encode(photo, "PNG"))
    (photos / "a.jpg").write_bytes(_encode(np.stack([photo] * 3, -1), "JPEG"))
    (photos / "notes.txt").write_text("not an image, and not taken from a directory")
    (tmp_path / "empty").mkdir()
    assert predict.expand_directories([str(photos), str(tmp_path / "empty")]) == [
        str(photos / "a.jpg"), str(photos / "b.PNG"), str(tmp_path / "empty"),
    ]  # fmt: skip

    for polarity in ("as_is", "invert", "auto"):
        export = export_lib.export_run(workdir, tmp_path / "exports", polarity=polarity)
        assert predict.recorded_polarity(export) == polarity
        served = tf.saved_model.load(str(export)).signatures["serving_image_bytes"]
        expected = served(image_bytes=tf.constant([_encode(photo, "PNG")]))["probabilities"].numpy()[0]
        (result,) = predict.predict_files(export, [str(photos / "b.PNG")], top_k=10)
        got = {t["class_id"]: t["probability"] for t in result["top"]}
        np.testing.assert_allclose([got[k] for k in range(10)], expected, atol=1e-6, err_msg=polarity)
    (error,) = predict.predict_files(export, [str(tmp_path / "empty")], top_k=1)
    assert error["error"].startswith("a directory with no .png"), error
    (export / "assets.extra" / "preprocessing.json").unlink()
    assert predict.recorded_polarity(export) == "auto", "predict reads an export recording none with auto"


def test_a_training_workdir_given_as_the_model_names_its_export(trained, tmp_path):
    from pipeline.serving import predict

    workdir, _ = trained
    with pytest.raises(predict.ModelNotFoundError, match=f"the export of this run is {workdir / 'export'}$"):
        predict.resolve_model_dir(workdir)
    with pytest.raises(predict.ModelNotFoundError, match="nor a base of numeric versions$"):
        predict.resolve_model_dir(tmp_path)
    assert predict.resolve_model_dir(workdir / "export") == workdir / "export" / "1"


def test_bytes_decoding_matches_dataset_pixels():
    from pipeline.serving.images import decode_to_grayscale_28

    image = np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
    decoded = decode_to_grayscale_28(tf.constant(_encode(image, "PNG")), "as_is").numpy()
    np.testing.assert_array_equal(decoded, image)
    rgb = decode_to_grayscale_28(tf.constant(_encode(np.stack([image] * 3, -1), "PNG")), "as_is").numpy()
    assert np.abs(rgb.astype(int) - image).max() <= 1


def test_images_on_a_light_ground_are_inverted_unless_told_otherwise():
    from pipeline.serving.images import decode_to_grayscale_28

    garment = np.zeros((28, 28), np.uint8)
    garment[4:24, 8:20] = 200  # Light garment, dark ground: as in Fashion-MNIST.
    photo = 255 - garment  # Dark garment, light ground: as in product photos.
    decode = lambda image, polarity: decode_to_grayscale_28(tf.constant(_encode(image, "PNG")), polarity).numpy()  # noqa: E731
    np.testing.assert_array_equal(decode(garment, "auto"), garment)
    np.testing.assert_array_equal(decode(photo, "auto"), garment)
    np.testing.assert_array_equal(decode(photo, "as_is"), photo)
    np.testing.assert_array_equal(decode(garment, "invert"), photo)
    with pytest.raises(ValueError, match="choose one of auto, as_is, invert"):
        decode_to_grayscale_28(tf.constant(_encode(garment, "PNG")), "negative")


def test_transparent_pixels_count_as_white_whatever_colour_they_hide(trained):
    from pipeline.serving.images import decode_to_grayscale_28

    garment = np.zeros((28, 28), bool)
    garment[4:24, 8:20] = True
    navy = np.array([20, 30, 90], np.uint8)  # A dark garment, as in a product cut-out.
    on_white = np.where(garment[..., None], navy, np.uint8(255)).astype(np.uint8)
    alpha = np.where(garment, 255, 0).astype(np.uint8)[..., None]
    cutouts = {
        hidden: np.concatenate([np.where(garment[..., None], navy, np.uint8(hidden)), alpha], -1).astype(np.uint8)
        for hidden in (0, 255, 77)  # What an encoder stores under transparency is arbitrary.
    }
    gray_on_white = np.where(garment, 40, 255).astype(np.uint8)
    gray_alpha = np.stack([np.where(garment, 40, 0), alpha[..., 0]], -1).astype(np.uint8)
    for polarity in ("auto", "as_is"):
        decode = lambda image, polarity=polarity: decode_to_grayscale_28(  # noqa: E731
            tf.constant(_encode(image, "PNG")), polarity
        ).numpy()
        expected = decode(on_white)
        for hidden, cutout in cutouts.items():
            np.testing.assert_array_equal(decode(cutout), expected, err_msg=f"{polarity}, hidden colour {hidden}")
        np.testing.assert_array_equal(decode(gray_alpha), decode(gray_on_white), err_msg=polarity)
    assert decode_to_grayscale_28(tf.constant(_encode(on_white, "PNG")), "auto").numpy()[14, 14] > 200

    workdir, _ = trained
    served = tf.saved_model.load(str(workdir / "export" / "1")).signatures["serving_image_bytes"]
    both = tf.constant([_encode(cutouts[0], "PNG"), _encode(on_white, "PNG")])
    probabilities = served(image_bytes=both)["probabilities"].numpy()
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)


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


@pytest.mark.slow
def test_photos_either_way_round_serve_as_accurately_as_the_images_given(real_data_dir, tmp_path):
    command = [
        sys.executable, "-m", "launch.train", f"--workdir={tmp_path}", "--preset=smoke", f"--data_dir={real_data_dir}",
        "--max_train_examples=20000", "--noreport",
    ]  # fmt: skip
    done = run(command, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    export = tmp_path / "export" / "1"
    assert json.loads((export / "assets.extra" / "preprocessing.json").read_text())["polarity"] == "auto"
    model = tf.saved_model.load(str(export))
    _, test = data_lib.load_directory(real_data_dir)
    images, labels = test.images, test.labels.astype(np.int64)

    def accuracy(ids):
        return float(np.mean(ids == labels))

    @tf.function
    def encode_pngs(batch):
        return tf.map_fn(tf.io.encode_png, batch[..., None], fn_output_signature=tf.string)

    def by_bytes(batch):
        pngs = encode_pngs(tf.constant(batch))
        return np.concatenate(
            [model.signatures["serving_image_bytes"](image_bytes=pngs[i : i + 1000])["class_id"].numpy()
             for i in range(0, len(batch), 1000)]
        )  # fmt: skip

    given = accuracy(model.signatures["serving_default"](images=tf.constant(images))["class_id"].numpy())
    as_given = accuracy(by_bytes(images))
    inverted = accuracy(by_bytes(255 - images))
    assert as_given == given, "the images as given lose no accuracy"
    assert abs(inverted - as_given) <= 0.01, (inverted, as_given)


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
