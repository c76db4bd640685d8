"""Run the comparisons side by side; each is saved to the record as soon as it finishes.

python -m benchmarks.run --data_dir=../shared/data/fashion-mnist   # full: hours on 2 cores (3 seeds a recipe)
python -m benchmarks.run --data_dir=... --quick --out=/tmp/r.json --record=/tmp/B.md   # minutes, smoke test
python -m benchmarks.run --data_dir=... --runs=seed=runs/seed,default=runs/default --export=runs/default/export/1
python -m benchmarks.run --data_dir=... --norecipes --ablation --nothroughput ...   # one section alone
python -m benchmarks.run --candidate_runs=runs/c1,runs/c2 --norecipes --nothroughput ...   # candidates on validation
python -m benchmarks.run --view_runs=runs/c1,runs/c2 --norecipes --nothroughput ...   # view sets on validation
python -m benchmarks.run --ensemble_runs=best=runs/b0,best=runs/b1 --norecipes ...   # runs averaged on validation

Writes benchmarks/results.json and BENCHMARKS.md (see benchmarks/record.py).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from benchmarks import record  # noqa: E402
from launch import common  # noqa: E402

flags.DEFINE_string("data_dir", None, "Directory with the Fashion-MNIST IDX files.")
flags.DEFINE_boolean("quick", False, "Small sizes and few repeats: minutes, for smoke tests.")
flags.DEFINE_list("runs", [], "name=WORKDIR of finished runs for time to accuracy.")
flags.DEFINE_string("export", None, "An exported version directory for the serving comparison.")
flags.DEFINE_boolean("throughput", True, "Include training throughput, input headroom and utilisation (1-3).")
flags.DEFINE_boolean("profile", True, "Include where the default model's step spends its time, per precision.")
flags.DEFINE_boolean("scaling", True, "Include two local workers vs one process.")
flags.DEFINE_boolean("settings", True, "Include steps per execution, XLA and thread settings.")
flags.DEFINE_boolean("tuning", True, "Include trials per hour of one tuner against a chief with two workers.")
flags.DEFINE_boolean("recipes", True, "Include time to accuracy of the presets, the ablation of fast, bf16 vs float32.")
RECIPES = ["reference", "fast", "default"]
flags.DEFINE_list(
    "recipe_presets",
    RECIPES,
    "Recipes trained back to back; a list other than the default (e.g. reference,best: hours) gets its own section.",
)
flags.DEFINE_boolean(
    "ablation", None, "Include the ablation of fast (default: with the default --recipe_presets and --recipes)."
)
flags.DEFINE_boolean(
    "placement",
    None,
    "Include each --placement_presets recipe with batch norm before and after max-pooling, per seed "
    "(default: with the default --recipe_presets and --recipes).",
)
flags.DEFINE_list("placement_presets", ["default"], "Recipes the batch-norm placement comparison trains.")
flags.DEFINE_list("recipe_seeds", ["0", "1", "2"], "Seeds each recipe trains with (`--quick` trains the first only).")
flags.DEFINE_list(
    "seed_runs",
    [],
    "name=WORKDIR of finished runs of one recipe with different seeds (repeat the name per seed): each seed's row "
    "and the median, min and max.",
)
flags.DEFINE_list(
    "candidate_runs",
    [],
    "WORKDIRs of finished runs of candidate recipes: each one's validation accuracy and what it changes from its "
    "preset.",
)
flags.DEFINE_list(
    "view_runs",
    [],
    "WORKDIRs of finished runs: each one's validation accuracy under several sets of test-time views.",
)
flags.DEFINE_list(
    "ensemble_runs",
    [],
    "name=WORKDIR of finished runs (repeat the name per run, two or more): each group's validation accuracy with "
    "its runs' predictions averaged, and the errors they share.",
)
flags.DEFINE_string("out", str(record.RESULTS), "The JSON record to add the sections to.")
flags.DEFINE_string("record", str(record.RECORD), "The Markdown record rendered from --out.")
FLAGS = flags.FLAGS


def _save(key: str, title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(dict.fromkeys(column for row in rows for column in row))
    section = record.save_section(key, title, rows, columns, FLAGS.quick, Path(FLAGS.out))
    print(f"### {title}\n\n{record.table(section)}", flush=True)
    record.write(Path(FLAGS.record), Path(FLAGS.out))


def _recorded(key: str) -> dict | None:
    """The section `key` as recorded before this run, if any."""
    return record.read(Path(FLAGS.out))["sections"].get(key)


def main(argv):
    del argv
    # Quietly, and first: reading a candidate run may score its model (`benchmarks.candidates`).
    common.start_tensorflow()
    seed_runs = _read_seed_runs(FLAGS.seed_runs)
    ensemble_groups = _read_ensemble_groups(FLAGS.ensemble_runs)
    candidates = _read_candidate_runs(FLAGS.candidate_runs)
    runs = {name: workdirs[-1] for name, workdirs in _named_groups("runs", FLAGS.runs).items()}
    _check_finished("runs", list(runs.values()))
    _check_finished("view_runs", FLAGS.view_runs)
    if FLAGS.export:
        _check_finished("export", [str(Path(FLAGS.export).resolve().parents[1])])
    _check_recipe_flags()

    from benchmarks import throughput
    from pipeline.data import sources as data_lib

    train, test, _ = data_lib.load_train_test(FLAGS.data_dir)
    peaks = throughput.matmul_peaks(FLAGS.quick)
    if FLAGS.throughput:
        rates = throughput.training_throughput(train.images, train.labels, FLAGS.quick)
        _save("training_throughput", "Seed model training throughput", rates)
        model_rate = max(r["examples/s"] for r in rates)
        headroom = throughput.input_headroom(train.images, train.labels, model_rate, FLAGS.quick)
        _save("input_headroom", "Input pipeline alone, against the fastest model's consumption", headroom)
        _save("utilisation", "Hardware utilisation", throughput.utilisation(rates, peaks))
    if FLAGS.settings:
        from benchmarks.settings import execution_settings

        settings = execution_settings(FLAGS.data_dir, FLAGS.quick, peaks)
        _save("execution_settings", "Execution settings, default model (each in its own process)", settings)
    if FLAGS.profile:
        from benchmarks.step_profile import step_profile

        profile, auto = step_profile(FLAGS.data_dir, FLAGS.quick)
        title = "Where the default model's training step spends its time, per precision (TensorFlow's profiler)"
        _save("step_profile", title, profile)
        _save("auto_precision", "What --precision=auto picks on each kind of CPU, against the faster precision", auto)
    if runs:
        from benchmarks.time_to_accuracy import time_to_accuracy

        _save("time_to_accuracy", "Time to validation accuracy", time_to_accuracy(runs))
    if seed_runs:
        group = list(dict.fromkeys(row["recipe"] for row in seed_runs[0]))
        names, key = ", ".join(group), ",".join(group)
        _save(f"seed_runs:{key}", f"Finished runs of {names}: median, min and max over seeds", seed_runs[1])
        _save(f"seed_runs_each:{key}", f"Finished runs of {names}: each seed", seed_runs[0])
    if candidates:
        from benchmarks.candidates import merge

        rows = merge(_recorded("candidates"), candidates)
        _save("candidates", "Candidate recipes on validation, beside the preset each changes", rows)
    if FLAGS.view_runs:
        from benchmarks.views import view_rows

        rows = record.merge_rows(_recorded("views"), view_rows(FLAGS.view_runs, FLAGS.data_dir), "workdir")
        _save("views", "Test-time view sets on validation", rows)
    if ensemble_groups:
        from benchmarks.ensembles import ensemble_rows

        try:
            rows = ensemble_rows(ensemble_groups, FLAGS.data_dir)
        except (ValueError, RuntimeError) as error:  # ConfigError, WorkdirError, DataError: one line, no traceback.
            common.fail(str(error))
        rows = record.merge_rows(_recorded("ensembles"), rows, "runs")
        _save("ensembles", "Finished runs averaged on validation, and the errors they share", rows)
    if FLAGS.export:
        from benchmarks.serving import export_against_keras

        _save("serving", "Serving", export_against_keras(FLAGS.export, test.images, FLAGS.quick))
    if FLAGS.scaling:
        from benchmarks import scaling
        from pipeline import config_files

        rows = scaling.two_workers_vs_one(FLAGS.data_dir, FLAGS.quick)
        _save("two_workers_vs_one", "Two local workers against one process (reference recipe, global batch 128)", rows)
        costs = scaling.collective_costs(FLAGS.data_dir, FLAGS.quick)
        _save("step_breakdown", "Where a two-worker step's time goes", scaling.step_breakdown(rows, costs))
        per_call = config_files.load_file(scaling.REFERENCE).train.steps_per_execution
        table = scaling.scaling_table(costs, per_call)
        _save("scaling_model", "Predicted efficiency of N workers on real networks (weak scaling)", table)
    if FLAGS.recipes:
        from benchmarks import recipes, seeds

        names = FLAGS.recipe_presets
        chosen = [int(seed) for seed in FLAGS.recipe_seeds[: 1 if FLAGS.quick else None]]
        rows, runs = recipes.presets_side_by_side(FLAGS.data_dir, FLAGS.quick, names, chosen)
        each = f"{len(chosen)} seeds" if len(chosen) > 1 else f"seed {chosen[0]}"
        if names == RECIPES:
            title = f"Time to 93% validation accuracy and final accuracy of each recipe, back to back ({each})"
            _save("recipes", title, seeds.summary(rows))
            _save("recipe_seeds", "Each seed's run of each recipe, in the order trained", rows)
            title = "mixed_bfloat16 against float32"
            _save("precision", title, recipes.precision_comparison(FLAGS.data_dir, FLAGS.quick, runs))
        else:
            # Other recipes (best takes hours) get their own section, each against its own reference run.
            others = "_".join(name for name in names if name != "reference")
            _save(f"recipes_{others}", f"{', '.join(names)}, back to back ({each})", seeds.summary(rows))
            _save(f"recipe_seeds_{others}", f"Each seed's run of {', '.join(names)}, in the order trained", rows)
    default_recipes = FLAGS.recipes and FLAGS.recipe_presets == RECIPES
    if FLAGS.placement or (FLAGS.placement is None and default_recipes):
        from benchmarks import recipes

        chosen = [int(seed) for seed in FLAGS.recipe_seeds]
        rows = recipes.batch_norm_placement(FLAGS.data_dir, FLAGS.quick, FLAGS.placement_presets, chosen)
        title = "Batch norm before and after max-pooling: speed and accuracy"
        _save("placement", title, recipes.placement_summary(rows))
        _save("placement_seeds", "Each seed's run of each batch-norm placement, in the order trained", rows)
    if FLAGS.ablation or (FLAGS.ablation is None and default_recipes):
        from benchmarks import recipes

        title = "Ablation: fast without one technique at a time (median of 2 seeds)"
        _save("ablation", title, recipes.ablation(FLAGS.data_dir, FLAGS.quick))
    if FLAGS.tuning:
        from benchmarks.tuning_rate import trials_per_hour

        title = "Distributed tuning: trials in the same time budget"
        _save("tuning_rate", title, trials_per_hour(FLAGS.data_dir, FLAGS.quick))


def _named_groups(flag: str, items: list[str]) -> dict[str, list[str]]:
    """NAME=WORKDIR items grouped by name, in order; a malformed item fails with the flag's usage."""
    from launch.common import fail

    groups: dict[str, list[str]] = {}
    for item in items:
        name, _, workdir = item.partition("=")
        if not (name and workdir):
            fail(f"--{flag}={item}: expected NAME=WORKDIR, e.g. --{flag}=default=runs/d0,default=runs/d1")
        groups.setdefault(name, []).append(workdir)
    return groups


def _check_recipe_flags() -> None:
    """Fails in one line, before anything is measured, on a seed or recipe name no run could use."""
    from pipeline import presets

    if not all(seed.lstrip("-").isdigit() for seed in FLAGS.recipe_seeds) or not FLAGS.recipe_seeds:
        common.fail(f"--recipe_seeds={','.join(FLAGS.recipe_seeds)}: expected whole numbers, e.g. 0,1,2")
    for flag, names, known in (
        ("recipe_presets", FLAGS.recipe_presets, {"reference", *presets.PRESETS}),
        ("placement_presets", FLAGS.placement_presets, set(presets.PRESETS)),
    ):
        unknown = [name for name in names if name not in known]
        if unknown:
            common.fail(f"--{flag}: unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")


def _check_finished(flag: str, workdirs: list[str]) -> None:
    """Fails in one line, before anything is measured, when a workdir holds no finished run."""
    from benchmarks import seeds
    from launch.common import fail

    for workdir in workdirs:
        try:
            seeds.read_run(workdir)
        except ValueError as error:
            fail(f"--{flag}: {error}")


def _read_seed_runs(items: list[str]) -> tuple[list[dict], list[dict]] | None:
    """Each seed's row and the summary of `--seed_runs`, read before anything is measured."""
    from benchmarks import seeds
    from launch.common import fail

    groups = _named_groups("seed_runs", items)
    try:
        return seeds.from_workdirs(groups) if groups else None
    except ValueError as error:
        fail(f"--seed_runs: {error}")


def _read_ensemble_groups(items: list[str]) -> dict[str, list[str]]:
    """The groups of `--ensemble_runs`, checked before anything is measured."""
    from launch.common import fail

    groups = _named_groups("ensemble_runs", items)
    for name, workdirs in groups.items():
        if len(workdirs) < 2:
            fail(f"--ensemble_runs: {name} names one run; name at least two runs of it to average")
        for workdir in workdirs:
            if not (Path(workdir) / "config.json").is_file():
                fail(f"--ensemble_runs: {workdir} holds no config.json; name the workdir of a finished run")
    return groups


def _read_candidate_runs(workdirs: list[str]) -> list[dict] | None:
    """The rows of `--candidate_runs`, read before anything is measured."""
    from benchmarks import candidates
    from launch.common import fail

    try:
        return candidates.from_workdirs(workdirs) if workdirs else None
    except ValueError as error:
        fail(f"--candidate_runs: {error}")


if __name__ == "__main__":
    common.run_app(main, __name__)  # The console shows the comparisons, not TensorFlow's INFO lines.
