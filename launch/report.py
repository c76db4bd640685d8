"""fmnist-report: rebuild WORKDIR/report/ (curves, confusion matrix, per-class table, mistakes).

fmnist-report --workdir=runs/default
"""

from __future__ import annotations

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "A finished fmnist-train run directory.", required=True)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common.fail(f"unexpected arguments {argv[1:]}", 2)
    common.start_tensorflow()
    from pipeline import config as config_lib
    from pipeline.data import sources as data_lib
    from pipeline.runs import workdir
    from pipeline.runs.report import build_report

    try:
        out = build_report(FLAGS.workdir)
    except (workdir.WorkdirError, config_lib.ConfigError, data_lib.DataError) as e:
        common.fail(str(e))
    print(f"report: {out}")


def run() -> None:
    """Console-script entry point."""
    common.run_app(main, __name__)


if __name__ == "__main__":
    run()
