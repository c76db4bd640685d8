"""Candidate recipes weighed on validation: finished runs beside the preset each was made from.

A preset changes only when a candidate validates higher, so the record keeps
every candidate's validation accuracy next to exactly what it changes. The
change is read from the run's own config.json (fields it predates take the
value the run used, `config_files.run_config_from_dict`) against the preset of
its name as the code of the checkout defines it.

Test accuracy stays out of this table: choices are made on the validation
split, and the test set speaks once per finished recipe, in the recipes
sections.

The section is a ledger: naming new runs adds their rows to the ones
recorded before (`merge`), since a candidate's run directory rarely outlives
the machine it trained on; each row names the commit whose preset it was
compared with, and naming a run again replaces its row.

  python -m benchmarks.run --candidate_runs=runs/best_b256,runs/best_drop0 --nothroughput ...
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import record, seeds
from pipeline import config_files, presets
from pipeline.config import ConfigError


def changes(config, base) -> str:
    """The recipe fields where `config` differs from `base`, as "section.field=value, ..."; "none" if none."""
    mine = seeds.flat_config(config_files.to_dict(config))
    theirs = seeds.flat_config(config_files.to_dict(base))
    if theirs.get("train.precision") == "auto":
        # A run records the precision `auto` resolved to (its own column), which is no change of recipe.
        theirs["train.precision"] = mine["train.precision"]
    differ = [key for key in mine if key not in seeds.SEED_ONLY and key != "name" and mine[key] != theirs.get(key)]
    return ", ".join(f"{key}={_show(mine[key])}" for key in differ) or "none"


def _show(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def candidate_row(workdir: str | Path) -> dict:
    """One finished run's validation accuracies and what its recipe changes from its preset.

    Raises:
        ValueError: the workdir holds no finished run, or its config names no preset.
    """
    run = seeds.read_run(workdir)
    config = config_files.run_config_from_dict(run["config"], where=str(Path(workdir) / "config.json"))
    try:
        base = presets.preset(config.name)
    except ConfigError as error:
        raise ValueError(f"{workdir}: {error}") from None
    history, metrics = run["history"], run["metrics"]
    return {
        "preset": config.name,
        "changes from the preset": changes(config, base),
        "seed": config.train.seed,
        "val as served, final weights (%)": 100 * metrics["val_accuracy"],
        "val single view, last epoch (%)": 100 * history[-1]["val_accuracy"],
        "best val, single view (%)": 100 * max(h["val_accuracy"] for h in history),
        "epochs": len(history),
        "train seconds": metrics["train_seconds"],
        "precision": metrics["precision"],
        "workdir": str(workdir),
    }


def merge(recorded: dict | None, rows: list[dict]) -> list[dict]:
    """The rows recorded before (`recorded` is the saved section, if any) with `rows` added or replacing theirs.

    Rows recorded before this column existed were compared with the preset
    of the commit their section names.
    """
    compared_at = (recorded or {}).get("commit", record.NOT_RECORDED)
    earlier = [
        {**row, "preset as of commit": row.get("preset as of commit", compared_at)}
        for row in (recorded or {}).get("rows", [])
    ]
    return record.merge_rows({"rows": earlier}, rows, "workdir")


def from_workdirs(workdirs: list[str]) -> list[dict]:
    """One row per finished run, in the order given, each naming the commit whose presets it was compared with."""
    compared_at = record.commit()
    return [{**candidate_row(workdir), "preset as of commit": compared_at} for workdir in workdirs]
