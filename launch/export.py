"""fmnist-export: write a finished run as a TensorFlow Serving SavedModel version.

fmnist-export --workdir=runs/default --export_base=/models/fmnist [--version=N] [--tflite] [--polarity=as_is]
"""

from __future__ import annotations

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "A finished fmnist-train run directory.", required=True)
flags.DEFINE_string("export_base", None, "Model base directory served by TF Serving (default WORKDIR/export).")
flags.DEFINE_integer("version", None, "Numeric version (default: next free). Never overwrites.", lower_bound=1)
flags.DEFINE_boolean("tflite", False, "Also write float and dynamic-range quantised TFLite models.")
flags.DEFINE_enum(
    "test_time_augmentation",
    None,
    ["none", "flip", "flip_and_shift"],
    "Views the exported model averages (default: the run's). none: fastest serving.",
)
flags.DEFINE_enum(
    "polarity",
    "auto",
    ["auto", "as_is", "invert"],
    "How serving_image_bytes reads brightness: auto inverts images on a light ground (photos), as_is never, "
    "invert always.",
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    common.reject_arguments(argv)
    common.start_tensorflow()
    from pipeline.serving.export import ExportError, export_run

    try:
        path = export_run(
            FLAGS.workdir,
            FLAGS.export_base,
            FLAGS.version,
            FLAGS.tflite,
            FLAGS.test_time_augmentation,
            FLAGS.polarity,
        )
    except (ExportError, OSError, *common.input_errors()) as e:
        common.fail(str(e))
    print(path)


def run() -> None:
    """Console-script entry point."""
    common.run_app(main, __name__)


if __name__ == "__main__":
    run()
