"""fmnist-report: rebuild WORKDIR/report/ (curves, confusion matrix, per-class table, mistakes).

fmnist-report --workdir=runs/default
"""

from __future__ import annotations

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "A finished fmnist-train run directory.", required=True)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    common.reject_arguments(argv)
    common.start_tensorflow()
    from pipeline.runs.report import build_report

    try:
        build_report(FLAGS.workdir)  # Logs where the report went.
    except common.input_errors() as e:
        common.fail(str(e))


def run() -> None:
    """Console-script entry point."""
    common.run_app(main, __name__)


if __name__ == "__main__":
    run()
