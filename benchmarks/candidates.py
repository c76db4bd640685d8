"""Candidate recipes weighed on validation: finished runs beside the preset each was made from.

A preset changes only when a candidate validates higher, so the record keeps
every candidate's validation accuracy next to exactly what it changes. The
change is read from the run's own config.json (fields it predates take the
value the run used, `config_files.run_config_from_dict`) against the preset of
its name as the code of the checkout defines it, in the form its choices were
made in (`presets.validated`: `best` with its validation split, not its final
fit on every training image).

A run that holds out other validation images than its preset (to measure
what more training images buy, say) is also scored on the preset's, when it
never trained on them, so its row compares with the others on the same images.

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

import dataclasses
from pathlib import Path

import numpy as np

from benchmarks import record, seeds
from pipeline import config_files, presets
from pipeline.config import ConfigError

# A run that holds out other validation images than its preset (another
# `data.validation_size` or `data.split_seed`) is also scored on the preset's,
# so that every row is compared on the same images.
ON_PRESET_IMAGES = "val as served, the preset's validation images (%)"
_SPLIT_FIELDS = ("validation_size", "split_seed")


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
        base = presets.validated(config.name)
    except ConfigError as error:
        raise ValueError(f"{workdir}: {error}") from None
    seeds.require_held_out(workdir, config)
    history, metrics = run["history"], run["metrics"]
    return {
        "preset": config.name,
        "changes from the preset": changes(config, base),
        "seed": config.train.seed,
        "val as served, final weights (%)": 100 * metrics["val_accuracy"],
        ON_PRESET_IMAGES: _on_preset_images(workdir, config, base, metrics),
        "val single view, last epoch (%)": 100 * history[-1]["val_accuracy"],
        "best val, single view (%)": 100 * max(h["val_accuracy"] for h in history),
        "epochs": len(history),
        "train seconds": metrics["train_seconds"],
        "precision": metrics["precision"],
        "workdir": str(workdir),
    }


def _on_preset_images(workdir, config, base, metrics: dict) -> float | None:
    """Accuracy as served on the validation images `base` holds out; None if the run trained on any of them."""
    if all(getattr(config.data, field) == getattr(base.data, field) for field in _SPLIT_FIELDS):
        return 100 * metrics["val_accuracy"]
    from pipeline.data import sources as data_lib

    # The files are read once and split both ways.
    train, test, source = data_lib.load_train_test(config.data.data_dir)
    theirs = dataclasses.replace(config.data, **{field: getattr(base.data, field) for field in _SPLIT_FIELDS})
    images = data_lib.split_dataset(train, test, source, theirs).validation
    trained_on = {image.tobytes() for image in data_lib.split_dataset(train, test, source, config.data).train.images}
    if any(image.tobytes() in trained_on for image in images.images):
        return None
    from pipeline.runs import final_model  # TensorFlow: only for a run to score.

    model = final_model.load_final_model(Path(workdir), config)
    predictions = final_model.predict_probabilities(model, images.images).argmax(-1)
    return 100 * float(np.mean(predictions == images.labels))


def _with_preset_images_column(row: dict) -> dict:
    """A row recorded before the column existed, given it: its own validation images were the preset's."""
    if ON_PRESET_IMAGES in row:
        return row
    own_split = not any(f"data.{field}=" in row["changes from the preset"] for field in _SPLIT_FIELDS)
    value = row["val as served, final weights (%)"] if own_split else None
    ordered = {}
    for key, cell in row.items():
        ordered[key] = cell
        if key == "val as served, final weights (%)":
            ordered[ON_PRESET_IMAGES] = value
    return ordered


def merge(recorded: dict | None, rows: list[dict]) -> list[dict]:
    """The rows recorded before (`recorded` is the saved section, if any) with `rows` added or replacing theirs.

    Rows recorded before this column existed were compared with the preset
    of the commit their section names.
    """
    compared_at = (recorded or {}).get("commit", record.NOT_RECORDED)
    earlier = [
        _with_preset_images_column({**row, "preset as of commit": row.get("preset as of commit", compared_at)})
        for row in (recorded or {}).get("rows", [])
    ]
    return record.merge_rows({"rows": earlier}, rows, "workdir")


def from_workdirs(workdirs: list[str]) -> list[dict]:
    """One row per finished run, in the order given, each naming the commit whose presets it was compared with."""
    compared_at = record.commit()
    return [{**candidate_row(workdir), "preset as of commit": compared_at} for workdir in workdirs]
