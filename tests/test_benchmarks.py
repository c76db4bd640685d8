"""Smoke test of the benchmark command (no timing assertions: benchmarks are not tests)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import pytest
import tensorflow as tf
from conftest import assert_benchmark_flag_fails, run

from pipeline import config as config_lib
from pipeline import config_files, presets
from pipeline.training.driver import train_and_evaluate


@pytest.mark.slow
def test_quick_benchmarks_run_and_write_every_section(tiny_data_dir, tmp_path):
    base = presets.preset("smoke")
    config = base.replace(data=config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64))
    train_and_evaluate(config, tmp_path / "run", tf.distribute.get_strategy(), progress=False, make_report=False)
    other = config.replace(train=dataclasses.replace(config.train, seed=1))
    train_and_evaluate(other, tmp_path / "run1", tf.distribute.get_strategy(), progress=False, make_report=False)
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        f"--data_dir={tiny_data_dir}",
        f"--runs=smoke={tmp_path / 'run'}",
        f"--seed_runs=smoke={tmp_path / 'run'}",
        f"--candidate_runs={tmp_path / 'run'}",
        f"--view_runs={tmp_path / 'run'}",
        f"--ensemble_runs=smoke={tmp_path / 'run'},smoke={tmp_path / 'run1'}",
        f"--export={tmp_path / 'run' / 'export' / '1'}",
        f"--out={out}",
        f"--record={tmp_path / 'BENCHMARKS.md'}",
        "--noscaling",  # Two workers vs one needs the real data's size; tests/test_distributed.py covers it.
    ]
    done = run(command, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = {key: section["rows"] for key, section in json.loads(out.read_text())["sections"].items()}
    sections = (
        "training_throughput",
        "input_headroom",
        "utilisation",
        "execution_settings",
        "step_profile",
        "auto_precision",
        "time_to_accuracy",
        "seed_runs:smoke",
        "seed_runs_each:smoke",
        "candidates",
        "views",
        "ensembles",
        "serving",
        "recipes",
        "recipe_seeds",
        "ablation",
        "precision",
        "placement",
        "placement_seeds",
        "tuning_rate",
    )
    for section in sections:
        assert results[section], section
    assert "vs tutorial" in done.stdout and "### Serving" in done.stdout
    # Our tables and progress, not TensorFlow's INFO lines (the serving section exports without views).
    assert not re.search(r"^I\d{4} ", done.stdout + done.stderr, re.MULTILINE), done.stderr[-3000:]
    assert all(row["examples/s"] > 0 for row in results["training_throughput"] + results["execution_settings"])
    assert "XLA" in done.stdout and "unfused" in done.stdout and "one thread" in done.stdout
    assert "ReLU before max-pooling" in done.stdout
    profiled = [row for row in results["step_profile"] if "examples/s" in row]
    assert profiled[0]["precision (kind of CPU)"].startswith("float32 (")
    assert all(row["convolution and matmul kernels (%)"] > 0 for row in profiled)
    assert all(row["auto picks (of its processes)"] for row in results["auto_precision"])
    assert [row["recipe"] for row in results["recipes"]] == ["reference", "fast", "default"]
    assert [(row["recipe"], row["seed"]) for row in results["recipe_seeds"]] == [
        ("reference", 0),
        ("fast", 0),
        ("default", 0),
    ]
    # One seed under --quick: default with batch norm before, then after max-pooling.
    assert [row["recipe"] for row in results["placement_seeds"]] == [
        "default: batch norm, then max-pooling",
        "default: max-pooling, then batch norm",
    ]
    assert all(row["training examples/s, median"] > 0 for row in results["placement"])
    assert results["seed_runs:smoke"][0]["seeds"] == 1 and results["seed_runs_each:smoke"][0]["seed"] == 0
    changed = "data.validation_size=64, data.max_train_examples=None, data.max_eval_examples=None"
    assert results["candidates"][0]["changes from the preset"] == changed
    # The views the run serves, rebuilt view by view, score exactly what its metrics say.
    served = json.loads((tmp_path / "run" / "metrics.json").read_text())["val_accuracy"]
    assert results["views"][0]["val, flip_and_shift (10) (%)"] == pytest.approx(100 * served, abs=1e-6)
    # Each run scored as its metrics say; the errors all runs share are at most those of the best run.
    (averaged,) = results["ensembles"]
    assert averaged["val as served, each (%)"].split(", ")[0] == f"{100 * served:.2f}"
    errors = [int(count) for count in averaged["errors, each"].split(", ")]
    assert averaged["errors every run makes"] <= min(errors) <= max(errors) <= averaged["errors any run makes"]
    from benchmarks import recipes

    # fast itself, then one row per technique it has and per technique it leaves out.
    assert len(results["ablation"]) == 1 + len(recipes.TECHNIQUES) + len(recipes.LEFT_OUT)
    assert all(row["trials"] >= 1 for row in results["tuning_rate"])
    # The smoke run averages 10 views; the table also shows the plain network's export.
    assert [row["path"] for row in results["serving"]] == [
        "SavedModel serving_default (flip_and_shift)",
        "SavedModel serving_default (none)",
        "Keras model.predict",
    ]
    # The record says where and when each section was measured, and re-renders without measuring.
    rendered = (tmp_path / "BENCHMARKS.md").read_text()
    assert "AVX512_BF16" in rendered and "AMX" in rendered and "TensorFlow" in rendered and "## 13. Serving" in rendered
    from benchmarks import record

    assert record.render(record.read(out), {}).count("## ") == len(sections)


def test_record_renders_each_section_with_its_machine_and_date(tmp_path):
    from benchmarks import record

    path = tmp_path / "results.json"
    record.save_section(
        "demo", "1. A demo", [{"setting": "a", "examples/s": 1234.5}], ["setting", "examples/s"], True, path
    )
    rendered = record.render(record.read(path), {"demo": "How to read it."})
    section = record.read(path)["sections"]["demo"]
    assert section["machine"]["cores"] >= 1 and section["measured"] and section["machine"]["tensorflow"]
    assert "## 1. A demo" in rendered and "How to read it." in rendered and "| a | 1,234 |" in rendered
    assert section["machine"]["cpu"] in rendered and "`--quick`" in rendered


def test_record_numbers_headings_in_order_and_sets_apart_other_machines_commits_and_predictions(tmp_path):
    from benchmarks import record

    path = tmp_path / "results.json"
    rows, columns = [{"setting": "a", "examples/s": 1.0}], ["setting", "examples/s"]
    for key in ("tuning_rate", "scaling_model", "training_throughput", "serving"):
        record.save_section(key, f"7d. Title of {key}", rows, columns, False, path)
    saved = record.read(path)
    assert saved["sections"]["serving"]["commit"] == record.commit() != record.NOT_RECORDED
    saved["sections"]["serving"]["machine"] = dict(saved["sections"]["serving"]["machine"], cpu="Another CPU")
    rendered = record.render(saved, {})
    headings = [line for line in rendered.splitlines() if line.startswith("## ")]
    assert headings == [
        "## 1. Title of training_throughput",
        "## 2. Title of scaling_model (a prediction)",
        "## 3. Title of tuning_rate",
        "## Measured on another machine or code version",
        "## 4. Title of serving",
    ]
    assert f"Commit: {record.commit()}." in rendered and "Predicted from measurements taken" in rendered
    saved["sections"]["serving"]["machine"] = saved["sections"]["tuning_rate"]["machine"]
    saved["sections"]["serving"]["commit"] = "0123456789"  # Older code on the same machine.
    assert "## Measured on another machine or code version" in record.render(saved, {})
    for key in ("tuning_rate", "scaling_model", "training_throughput"):  # Most sections, but no commit recorded.
        saved["sections"][key]["commit"] = record.NOT_RECORDED
    rendered = record.render(saved, {})
    assert "Commit: 0123456789." in rendered
    assert rendered.index("## Measured on another machine") < rendered.index("Title of training_throughput")


def test_a_comparison_measured_on_another_kind_of_machine_keeps_the_earlier_machines(tmp_path, monkeypatch):
    from benchmarks import record

    path = tmp_path / "results.json"
    rows, columns = [{"setting": "a", "examples/s": 1.0}], ["setting", "examples/s"]
    for key in ("training_throughput", "candidates"):
        record.save_section(key, f"Title of {key}", rows, columns, False, path)
    saved = record.read(path)
    for section in saved["sections"].values():  # As if measured on another kind of CPU, without AMX.
        section["machine"] = dict(section["machine"], cpu="Another CPU", amx_bf16=False, avx512_bf16=True)
    path.write_text(json.dumps(saved))
    for key in ("training_throughput", "candidates"):
        record.save_section(key, f"Title of {key}", [{"setting": "b", "examples/s": 2.0}], columns, False, path)
    sections = record.read(path)["sections"]
    # Candidates accumulate their rows, so they are replaced; the throughput of each machine is kept.
    assert sorted(sections) == [
        "candidates",
        "training_throughput",
        "training_throughput@Another CPU, AVX512_BF16 yes, AMX no",
    ]
    assert sections["training_throughput"]["rows"][0]["setting"] == "b"
    rendered = record.render(record.read(path), {"training_throughput": "How to read it."})
    assert rendered.count("Title of training_throughput") == 2 and rendered.count("How to read it.") == 2
    # Measured again on that machine: its kept section returns to the main key, this machine's is kept.
    here = record.machine()
    monkeypatch.setattr(record, "machine", lambda: dict(here, cpu="Another CPU", amx_bf16=False, avx512_bf16=True))
    record.save_section("training_throughput", "Title of training_throughput", rows, columns, False, path)
    sections = record.read(path)["sections"]
    assert sorted(sections) == ["candidates", "training_throughput", f"training_throughput@{record.processor(here)}"]
    assert sections["training_throughput"]["machine"]["cpu"] == "Another CPU"


def test_a_processor_held_to_older_instructions_is_recorded_as_another_kind_of_machine(tmp_path, monkeypatch):
    from benchmarks import record

    path = tmp_path / "results.json"
    rows, columns = [{"setting": "a", "examples/s": 1.0}], ["setting", "examples/s"]
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    record.save_section("training_throughput", "Throughput", rows, columns, False, path)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    held = record.save_section("training_throughput", "Throughput", rows, columns, False, path)
    assert record.processor(held["machine"]).endswith(", oneDNN held to AVX512_CORE")
    assert "oneDNN held to AVX512_CORE, TensorFlow" in record.describe_machine(held["machine"])
    sections = record.read(path)["sections"]
    unheld = sections["training_throughput@" + record.processor(dict(held["machine"], onednn_max_cpu_isa=None))]
    assert "held" not in record.describe_machine(unheld["machine"])


def test_each_group_of_seed_runs_keeps_its_own_section_in_order_with_its_note(tmp_path):
    from benchmarks import record

    path = tmp_path / "results.json"
    columns = ["recipe", "seeds"]
    for group in ("searched", "fast_float32", "searched"):  # Recording a group again replaces only its own.
        record.save_section(
            f"seed_runs:{group}", f"Runs of {group}", [{"recipe": group, "seeds": 3}], columns, False, path
        )
    record.save_section("serving", "Serving", [{"recipe": "x", "seeds": 1}], columns, False, path)
    record.save_section("recipes", "Recipes", [{"recipe": "x", "seeds": 1}], columns, False, path)
    sections = record.read(path)["sections"]
    assert sorted(sections) == ["recipes", "seed_runs:fast_float32", "seed_runs:searched", "serving"]
    rendered = record.render(record.read(path), {"seed_runs": "How to read it."})
    headings = [line for line in rendered.splitlines() if line.startswith("## ")]
    assert headings == ["## 1. Runs of fast_float32", "## 2. Runs of searched", "## 3. Serving", "## 4. Recipes"]
    assert rendered.count("How to read it.") == 2


def test_time_to_accuracy_reads_history(tmp_path):
    from benchmarks.time_to_accuracy import time_to_accuracy

    history = [
        {"epoch": 1, "val_accuracy": 0.90, "elapsed_seconds": 10.0},
        {"epoch": 2, "val_accuracy": 0.925, "elapsed_seconds": 21.0},
    ]
    (tmp_path / "history.json").write_text(json.dumps(history))
    (row,) = time_to_accuracy({"run": tmp_path})
    assert row == {"run": "run", "to 90.6%": "21s (epoch 2)", "to 92.0%": "21s (epoch 2)", "to 93.0%": "never"}


def test_settings_are_valid_configs_and_flops_are_analytic():
    import dataclasses

    from benchmarks.settings import SETTINGS
    from benchmarks.throughput import model_flops_per_example
    from pipeline.model import network as models

    base = presets.preset("default")
    for setting in SETTINGS.values():
        config_files.validate(
            base.replace(
                model=dataclasses.replace(base.model, **setting.model),
                train=dataclasses.replace(base.train, **setting.train),
            )
        )
    # Seed model: conv 26x26x64x(3x3x1), conv 11x11x64x(3x3x64), dense 1600x128, dense 128x10; x2 x3.
    forward = 26 * 26 * 64 * 9 + 11 * 11 * 64 * 9 * 64 + 1600 * 128 + 128 * 10
    assert model_flops_per_example(models.build_model(presets.preset("seed").model)) == 6.0 * forward


def test_every_ablation_row_changes_one_technique_of_fast():
    from benchmarks import recipes

    fast = recipes.preset_config("fast")
    assert fast == config_files.to_dict(presets.preset("fast"))
    for name, changes in {**recipes.TECHNIQUES, **recipes.LEFT_OUT}.items():
        variant = json.loads(json.dumps(fast))
        for section, fields in changes.items():
            assert all(variant[section][k] != v for k, v in fields.items() if k != "weight_decay"), name
            variant[section].update(fields)
        config_files.validate(config_files.from_dict(config_lib.Config, variant))


def test_time_to_target_reads_the_first_epoch_reaching_it():
    from benchmarks.seeds import time_to

    history = [
        {"epoch": 1, "val_accuracy": 0.92, "elapsed_seconds": 3.0},
        {"epoch": 2, "val_accuracy": 0.931, "elapsed_seconds": 6.5},
    ]
    assert time_to(history, 0.93) == (2, 6.5) and time_to(history, 0.95) is None


def test_utilisation_divides_each_row_by_the_ceiling_of_its_precision():
    from benchmarks.throughput import model_flops_per_example, utilisation
    from pipeline.model import network as models

    flops = model_flops_per_example(models.build_model(presets.preset("seed").model))
    rates = [
        {"setting": "tutorial", "precision": "float32", "examples/s": 1000.0},
        {"setting": "bf16 row", "precision": "mixed_bfloat16", "examples/s": 2000.0},
    ]
    rows = utilisation(rates, {"float32": 1e12, "mixed_bfloat16": 4e12})
    assert rows[0]["fraction of matmul peak"] == pytest.approx(1000 * flops / 1e12)
    assert rows[1]["fraction of matmul peak"] == pytest.approx(2000 * flops / 4e12)
    # Without a bfloat16 ceiling (no bf16 instructions) every row is measured against float32's.
    assert utilisation(rates, {"float32": 1e12})[1]["fraction of matmul peak"] == pytest.approx(2000 * flops / 1e12)


def test_commit_ignores_the_records_own_files(tmp_path, monkeypatch):
    import subprocess

    from benchmarks import record

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "benchmarks").mkdir()
    own = ("BENCHMARKS.md", "benchmarks/results.json", "benchmarks/recipes.png")
    for name in ("code.py", *own):
        (tmp_path / name).write_text("0\n")
    git("add", "-A")
    git("commit", "-qm", "first")
    monkeypatch.setattr(record, "ROOT", tmp_path)
    monkeypatch.setattr(record, "RESULTS", tmp_path / "benchmarks" / "results.json")
    monkeypatch.setattr(record, "RECORD", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(record, "FIGURE", tmp_path / "benchmarks" / "recipes.png")
    for name in own:  # Saving a section rewrites the record, its figure and its JSON.
        (tmp_path / name).write_text("1\n")
    assert not record.commit().endswith("+changes")
    (tmp_path / "code.py").write_text("1\n")
    assert record.commit().endswith("+changes")


def test_turns_rotate_so_no_contender_always_runs_first():
    from benchmarks.common import alternate, rounds

    assert rounds(["a", "b", "c"], 4) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    calls = []
    rates = alternate({name: (lambda name=name: calls.append(name) or 1) for name in "ab"}, repeats=2)
    assert calls == ["a", "b", "b", "a"] and set(rates) == {"a", "b"}


def test_the_figure_draws_each_recipes_newest_seeds_per_machine_and_the_record_links_it(tmp_path):
    from benchmarks import figures, record

    path = tmp_path / "results.json"
    columns = ["recipe", "seed", "test as served (%)", "train seconds"]

    def seeds(recipe, accuracy, count):
        return [
            {"recipe": recipe, "seed": s, "test as served (%)": accuracy, "train seconds": 100.0} for s in range(count)
        ]

    record.save_section(
        "recipe_seeds", "All", seeds("reference", 93.0, 3) + seeds("fast", 93.5, 3), columns, False, path
    )
    record.save_section(
        "recipe_seeds_fast", "Fast", seeds("reference", 93.1, 3) + seeds("fast", 94.0, 3), columns, False, path
    )
    record.save_section(
        "recipe_seeds_best", "Best", seeds("reference", 93.2, 2) + seeds("best", 95.0, 2), columns, False, path
    )
    saved = record.read(path)
    other = dict(
        saved["sections"]["recipe_seeds"], machine=dict(saved["sections"]["recipe_seeds"]["machine"], cpu="Other")
    )
    saved["sections"]["recipe_seeds@Other"] = other
    runs = record.newest_recipe_runs(saved)
    here = runs[record.processor(saved["sections"]["recipe_seeds"]["machine"])]
    # Same day: the recipe's own section wins over the one of every recipe, and three seeds over two.
    assert {recipe: {row["test as served (%)"] for row in rows} for recipe, rows in here.items()} == {
        "reference": {93.1},
        "fast": {94.0},
        "best": {95.0},
    }
    assert set(runs[record.processor(other["machine"])]) == {"reference", "fast"}
    figure = figures.draw_recipes(runs, tmp_path / "recipes.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Each seed of each recipe" in record.render(saved, {}, "recipes.png")
    nothing = record.newest_recipe_runs({"sections": {}})
    assert figures.draw_recipes(nothing, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("flag", ["runs=x=", "view_runs=", "export="])
def test_a_finished_run_flag_naming_no_run_fails_in_one_line_before_measuring(tmp_path, flag):
    missing = tmp_path / "missing"
    named = f"--{flag}{missing / 'export' / '1' if flag == 'export=' else missing}"
    assert_benchmark_flag_fails(tmp_path, named, f"--{flag.split('=')[0]}: {missing} holds no finished run")


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--recipe_presets=reference,bogus", "--recipe_presets: unknown recipe(s) bogus; choose from best, default"),
        ("--placement_presets=reference", "--placement_presets: unknown recipe(s) reference; choose from best"),
    ],
)
def test_an_unknown_recipe_fails_in_one_line_before_anything_trains(tmp_path, flag, message):
    assert_benchmark_flag_fails(tmp_path, flag, message)
