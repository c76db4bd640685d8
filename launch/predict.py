"""fmnist-predict: classify image files with an exported model.

fmnist-predict --model=runs/default/export photo.jpg shirt.png
fmnist-predict --model=runs/default/export photos/
curl -s https://example.com/shirt.jpg | fmnist-predict --model=runs/default/export -
fmnist-predict --model=runs/default/export/3 --polarity=invert --json photo.jpg
fmnist-predict --model=runs/default/export/3/tflite/model_dynamic_range.tflite photo.jpg
"""

from __future__ import annotations

import json

from absl import flags

from launch import common

flags.DEFINE_string(
    "model",
    None,
    "Model base directory (newest version used), one version directory, or a .tflite file of one.",
    required=True,
)
flags.DEFINE_integer("top_k", 3, "How many classes to print per image.", lower_bound=1, upper_bound=10)
flags.DEFINE_enum(
    "polarity",
    None,
    ["auto", "as_is", "invert"],
    "Brightness: auto inverts images on a light ground (photos), as_is never, invert always. "
    "Default: as the export's bytes signature does (its assets.extra/preprocessing.json).",
)
flags.DEFINE_boolean("invert", None, "Same as --polarity=invert (--noinvert: --polarity=as_is).")
flags.DEFINE_boolean("json", False, "Print one JSON list of per-file results.")
FLAGS = flags.FLAGS


def _print_text(results: list[dict]) -> None:
    for result in results:
        if "error" in result:
            print(f"{result['file']}: error: {result['error']}")
            continue
        best = ", ".join(f"{t['class_name']} {t['probability']:.1%}" for t in result["top"])
        print(f"{result['file']}: {best}")


def main(argv: list[str]) -> None:
    if not argv[1:]:
        common.fail("no image files given: fmnist-predict --model=DIR IMAGE_OR_DIRECTORY...", 2)
    if FLAGS.invert is not None and FLAGS.polarity is not None:
        common.fail("give --polarity or --invert, not both (--invert is --polarity=invert)", 2)
    common.start_tensorflow()
    from pipeline.serving.predict import ModelNotFoundError, expand_directories, predict_files, resolve_model_dir

    try:
        model_dir = resolve_model_dir(FLAGS.model)
    except ModelNotFoundError as e:
        common.fail(str(e), 2)
    polarity = FLAGS.polarity
    if FLAGS.invert is not None:
        polarity = "invert" if FLAGS.invert else "as_is"
    with common.native_logs_filtered():  # The TFLite interpreter announces its delegate from C++.
        results = predict_files(model_dir, expand_directories(argv[1:]), FLAGS.top_k, polarity)
    if FLAGS.json:
        print(json.dumps(results, indent=2))
    else:
        _print_text(results)
    if any("error" in r for r in results):
        raise SystemExit(1)


def run() -> None:
    """Console-script entry point."""
    common.run_app(main, __name__)


if __name__ == "__main__":
    run()
