"""fmnist-train: train, evaluate, report and export a Fashion-MNIST CNN.

  fmnist-train --workdir=runs/default
  fmnist-train --workdir=runs/seed --preset=seed
  fmnist-launch --num_workers=2 -- fmnist-train --workdir=runs/mw

Rerun the same command with the same --workdir to resume an interrupted run.
--verbosity=1 also shows TensorFlow's own INFO logs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "Run directory (created; reused to resume).", required=True)
flags.DEFINE_enum(
    "strategy",
    "auto",
    ["auto", "default", "mirrored", "multi_worker"],
    "auto: mirror over local GPUs when there are 2+ (or over --logical_cpus), else one device.",
)
flags.DEFINE_list("devices", None, "Devices for --strategy=mirrored, e.g. /gpu:0,/gpu:1.")
flags.DEFINE_integer(
    "logical_cpus", None, "Split the CPU into N logical devices (try mirrored without GPUs).", lower_bound=1
)
flags.DEFINE_boolean("export", True, "Export the final model for TF Serving (chief only).")
flags.DEFINE_string("export_base", None, "Export base directory (default WORKDIR/export).")
flags.DEFINE_boolean("report", True, "Write WORKDIR/report/ (plots and tables) at the end.")
common.define_config_flags()
common.define_thread_flags()
flags.adopt_module_key_flags(common)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    common.reject_arguments(argv)
    if FLAGS.export_base is not None and not FLAGS.export:
        common.fail("--export_base says where to export, and --noexport not to; give one of them", 2)
    from pipeline import config as config_lib
    from pipeline.cluster import environment
    from pipeline.runs import run_config

    try:
        config = common.config_from_flags()
        # Rerunning the command that started an older run resumes it as it ran.
        config = run_config.as_the_run_ran(config, Path(FLAGS.workdir), _given_fields())
    except config_lib.ConfigError as e:
        common.fail(str(e), 2)
    try:
        if "TF_CONFIG" in os.environ:  # Checked before TensorFlow's seconds-long start.
            environment.parse_tf_config(os.environ["TF_CONFIG"])
    except environment.ClusterError as e:
        common.fail(str(e))
    common.start_tensorflow(training=True)
    from pipeline.cluster import strategies

    if FLAGS.logical_cpus:
        strategies.use_logical_cpus(FLAGS.logical_cpus)
    import tensorflow as tf

    from pipeline.serving.export import ExportError
    from pipeline.training.driver import train_and_evaluate
    from pipeline.training.preemption import StopSignal, TrainingStopped

    try:
        strategy = strategies.make_strategy(FLAGS.strategy, FLAGS.devices)
        common.measure_precision_quietly(config.train.precision)
        with StopSignal() as stop:
            metrics = train_and_evaluate(
                config,
                FLAGS.workdir,
                strategy,
                make_report=FLAGS.report,
                export=FLAGS.export,
                export_base=FLAGS.export_base,
                stop=stop,
            )
    except TrainingStopped as e:
        common.fail(str(e), e.exit_code)
    except (strategies.ClusterError, ExportError, ValueError, *common.input_errors()) as e:
        common.fail(str(e))
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        common.fail(
            f"lost contact with a peer worker ({type(e).__name__}); the last checkpoint is saved: "
            "restart the same command on every worker to resume",
            3,
        )
    if strategies.is_chief(strategy):
        # A final fit (no validation split) has no val_accuracy.
        summary = {
            k: metrics[k]
            for k in (
                "train_accuracy",
                "val_accuracy",
                "test_accuracy",
                "test_loss",
                "generalization_gap",
                "epochs_completed",
                "wall_seconds",
            )
            if k in metrics
        }
        print(json.dumps(summary, indent=2))
        print(f"results in {FLAGS.workdir}: {', '.join(_outputs())}", flush=True)


def _given_fields() -> set[str]:
    """The `section.field` names the command line sets itself: its flags and the keys of its --config file."""
    from pipeline import config_fields, config_files
    from pipeline.config import Config

    given = {f"{s}.{f.name}" for name, s, f, _ in config_fields.flag_fields(Config) if FLAGS[name].present}
    return given | (config_files.fields_in_file(FLAGS.config) if FLAGS.config else set())


def _outputs() -> list[str]:
    """What this run wrote for a person to look at, as the closing line names it."""
    written = ["metrics.json"] + (["report/"] if FLAGS.report else [])
    if FLAGS.export:
        written.append(f"{FLAGS.export_base}/" if FLAGS.export_base else "export/")
    return written


def run() -> None:
    """Console-script entry point."""
    common.run_app(main, __name__)


if __name__ == "__main__":
    run()
