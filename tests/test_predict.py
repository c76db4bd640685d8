"""fmnist-predict and the image decoding the export's bytes signature shares with it."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data import sources as data_lib
from pipeline.serving import export as export_lib


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
    with pytest.raises(predict.ModelNotFoundError, match="gone does not exist: give --model an export"):
        predict.resolve_model_dir(tmp_path / "gone")
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


def test_predict_reads_an_image_from_standard_input_given_as_a_dash(trained, tmp_path):
    import subprocess

    from conftest import REPO, subprocess_env

    workdir, _ = trained
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 8:20] = 200
    (tmp_path / "same.png").write_bytes(_encode(image, "PNG"))
    command = [sys.executable, "-m", "launch.predict", f"--model={workdir / 'export'}", "--json", "-"]
    done = subprocess.run(
        [*command, str(tmp_path / "same.png")], input=_encode(image, "PNG"), capture_output=True, cwd=REPO,
        env=subprocess_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    piped, from_file = json.loads(done.stdout)
    assert piped["file"] == "-" and piped["top"] == from_file["top"]


def test_predict_runs_the_exports_tflite_models_as_it_runs_the_saved_model(trained, tiny_data_dir, tmp_path):
    workdir, _ = trained
    export = export_lib.export_run(workdir, tmp_path / "exports", tflite=True)
    images = data_lib.load(DataConfig(data_dir=str(tiny_data_dir), validation_size=64)).test.images[:3]
    files = []
    for i, image in enumerate(images):
        files.append(str(tmp_path / f"{i}.png"))
        (tmp_path / f"{i}.png").write_bytes(_encode(image, "PNG"))
    copied = tmp_path / "alone.tflite"  # Out of its export: no class names or polarity beside it.
    copied.write_bytes((export / "tflite" / "model_float.tflite").read_bytes())
    lite = export / "tflite"
    models = [export, lite / "model_float.tflite", lite / "model_dynamic_range.tflite", copied]
    outputs = []
    for model in models:
        done = run([sys.executable, "-m", "launch.predict", f"--model={model}", "--json", "--top_k=10", *files], 120)
        assert done.returncode == 0, done.stderr[-2000:]
        # Our results only: neither the interpreter's deprecation notice nor its delegate's INFO line.
        assert "Interpreter is deprecated" not in done.stderr and "XNNPACK" not in done.stderr, done.stderr
        results = json.loads(done.stdout)
        outputs.append([{t["class_name"]: t["probability"] for t in r["top"]} for r in results])
    saved_model, *tflite = outputs
    for got in tflite:
        for expected, result in zip(saved_model, got, strict=True):
            assert expected.keys() == result.keys()
            np.testing.assert_allclose([result[k] for k in expected], list(expected.values()), atol=0.02)
    done = run([sys.executable, "-m", "launch.predict", f"--model={export / 'tflite'}", *files], 120)
    assert done.returncode == 2 and "holds TFLite models (model_dynamic_range.tflite, model_float.tflite)" in (
        done.stderr
    )
