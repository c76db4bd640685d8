"""A run started by an older version resumes, by the same command, with the values it used for later fields."""

from __future__ import annotations

import json

from conftest import run, smoke_train_command

from pipeline import config as config_lib
from pipeline import config_files, presets
from pipeline.runs import run_config


def _older_run_config(tmp_path, config, predating=("model.batch_norm_after_pooling", "data.order")):
    """Writes `config` as a run's config.json saved before the `predating` fields existed."""
    data = config_files.to_dict(config)
    for name in predating:
        section, field = name.split(".")
        del data[section][field]
    (tmp_path / "config.json").write_text(json.dumps(data))


def test_fields_the_run_predates_keep_its_values_unless_the_command_line_sets_them(tmp_path):
    smoke = presets.preset("smoke")
    assert run_config.as_the_run_ran(smoke, tmp_path, given=()) is smoke  # No run there.
    old = {name: config_lib.FIELDS_ADDED[name] for name in ("model.batch_norm_after_pooling", "data.order")}
    assert all(run_config.value_of(smoke, name) != value for name, value in old.items())
    _older_run_config(tmp_path, run_config.with_values(smoke, old))
    assert run_config.predated_fields(tmp_path / "config.json") == old
    resumed = run_config.as_the_run_ran(smoke, tmp_path, given=())
    assert resumed == run_config.with_values(smoke, old)
    asked = run_config.as_the_run_ran(smoke, tmp_path, given={"model.batch_norm_after_pooling"})
    assert asked.model.batch_norm_after_pooling is True and asked.data.order == "file"
    # A file that cannot be read is left to the workdir check, which names it.
    (tmp_path / "config.json").write_text("{")
    assert run_config.as_the_run_ran(smoke, tmp_path, given=()) is smoke


def test_rewriting_such_a_run_config_leaves_its_kept_fields_out_again(tmp_path):
    smoke = presets.preset("smoke")
    old = run_config.with_values(smoke, {"model.batch_norm_after_pooling": False, "data.order": "file"})
    _older_run_config(tmp_path, old)
    run_config.save(old.replace(name="longer"), tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["name"] == "longer" and "batch_norm_after_pooling" not in data["model"] and "order" not in data["data"]
    assert config_files.load_run_config(tmp_path / "config.json") == old.replace(name="longer")
    # A field whose value is no longer the old one is written.
    run_config.save(run_config.with_values(old, {"data.order": "canonical"}), tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["data"]["order"] == "canonical" and "batch_norm_after_pooling" not in data["model"]


def test_the_command_that_started_an_older_run_resumes_it(tiny_data_dir, tmp_path):
    workdir, overrides = tmp_path / "run", tmp_path / "as_it_ran.json"
    # A run that trained with batch norm before pooling, as every run did before the field existed...
    overrides.write_text(json.dumps({"model": {"batch_norm_after_pooling": False}}))
    first = run(smoke_train_command(workdir, tiny_data_dir, f"--config={overrides}", "--noexport"), timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    # ...and whose config.json was written before it existed.
    data = json.loads((workdir / "config.json").read_text())
    del data["model"]["batch_norm_after_pooling"]
    (workdir / "config.json").write_text(json.dumps(data))
    again = run(smoke_train_command(workdir, tiny_data_dir, "--epochs=2", "--noexport"), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "predates model.batch_norm_after_pooling: kept at the value the run used" in again.stderr
    assert "resumed from" in again.stderr
    assert json.loads((workdir / "metrics.json").read_text())["epochs_completed"] == 2
    assert "batch_norm_after_pooling" not in json.loads((workdir / "config.json").read_text())["model"]
    # Asking for the field's value of today is another run: refused, in one line, with the way to resume.
    overrides.write_text(json.dumps({"model": {"batch_norm_after_pooling": True}}))
    other = run(smoke_train_command(workdir, tiny_data_dir, "--epochs=3", f"--config={overrides}"), timeout=300)
    assert other.returncode == 1
    (line,) = [line for line in other.stderr.splitlines() if line.startswith("error:")]
    refusal = f"error: workdir {workdir} holds a run with a different config (model.batch_norm_after_pooling: False"
    assert line.startswith(refusal + " -> True)")
