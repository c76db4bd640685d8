"""Run the benchmarks side by side and print tables; writes benchmarks/results.json.

python -m benchmarks.run --data_dir=../shared/data/fashion-mnist            # full (about 35 min)
python -m benchmarks.run --data_dir=... --quick                             # a few minutes, smoke test
python -m benchmarks.run --data_dir=... --runs=seed=runs/seed,default=runs/default --export=runs/default/export/1
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("data_dir", None, "Directory with the Fashion-MNIST IDX files.")
flags.DEFINE_boolean("quick", False, "Small sizes and few repeats: minutes, for smoke tests.")
flags.DEFINE_list("runs", [], "name=WORKDIR of finished runs for time to accuracy.")
flags.DEFINE_string("export", None, "An exported version directory for the serving comparison.")
flags.DEFINE_boolean("scaling", True, "Include two local workers vs one process.")
flags.DEFINE_boolean("settings", True, "Include steps per execution, XLA and thread settings (3b).")
flags.DEFINE_string("out", "benchmarks/results.json", "Where to write the JSON results.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from benchmarks import throughput
    from benchmarks.common import table
    from pipeline import data as data_lib

    train, test, source = data_lib.load_train_test(FLAGS.data_dir)
    results = {"quick": FLAGS.quick, "data": source}
    sections = []
    rates = throughput.training_throughput(train.images, train.labels, FLAGS.quick)
    results["training_throughput"] = rates
    sections.append(table("1. Training throughput, seed model", rates, ["setting", "examples/s", "vs tutorial"]))
    model_rate = max(r["examples/s"] for r in rates)
    headroom = throughput.input_headroom(train.images, train.labels, model_rate, FLAGS.quick)
    results["input_headroom"] = headroom
    sections.append(
        table(
            "2. Input pipeline alone vs fastest model consumption",
            headroom,
            ["pipeline", "examples/s", "headroom vs model"],
        )
    )
    peak = throughput.matmul_peak(FLAGS.quick)
    use = throughput.utilisation(rates, peak)
    results["utilisation"] = use
    sections.append(table("3. Hardware utilisation", use, ["setting", "GFLOP/s", "fraction of matmul peak"]))
    if FLAGS.settings:
        from benchmarks.settings import execution_settings

        settings = execution_settings(FLAGS.data_dir, FLAGS.quick, peak)
        results["execution_settings"] = settings
        sections.append(
            table(
                "3b. Execution settings, default model (each in its own process)",
                settings,
                ["setting", "examples/s", "vs default", "fraction of matmul peak"],
            )
        )
    if FLAGS.runs:
        from benchmarks.time_to_accuracy import time_to_accuracy

        runs = dict(item.split("=", 1) for item in FLAGS.runs)
        tta = time_to_accuracy({k: Path(v) for k, v in runs.items()})
        results["time_to_accuracy"] = tta
        sections.append(table("4. Time to validation accuracy", tta, list(tta[0])))
    if FLAGS.export:
        sections.append(_serving(FLAGS.export, test.images, results, table))
    if FLAGS.scaling:
        from benchmarks.scaling import two_workers_vs_one

        scaling = two_workers_vs_one(FLAGS.data_dir, FLAGS.quick)
        results["two_workers_vs_one"] = scaling
        sections.append(
            table("6. Two local workers vs one process", scaling, ["setup", "examples/s", "vs one process"])
        )
    print("\n".join(sections))
    Path(FLAGS.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


def _serving(export: str, images, results: dict, table) -> str:
    from benchmarks.serving import serving_speed
    from pipeline import config as config_lib
    from pipeline.export import export_run
    from pipeline.final_model import load_final_model

    workdir = Path(export).resolve().parents[1]
    config = config_lib.load_run_config(workdir / "config.json")
    model = load_final_model(workdir, config)
    views = config.model.test_time_augmentation
    exports = {f"SavedModel serving_default ({views})": export}
    with tempfile.TemporaryDirectory() as scratch:
        if views != "none":
            # The same weights without test-time views: what the views cost.
            exports["SavedModel serving_default (none)"] = export_run(workdir, scratch, test_time_augmentation="none")
        rows = serving_speed(exports, model, images, FLAGS.quick)
    results["serving"] = rows
    return table("5. Serving", rows, list(rows[0]))


if __name__ == "__main__":
    app.run(main)
