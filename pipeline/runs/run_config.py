"""A run's config.json across versions: the fields a run predates keep the values it used.

A run started by an older version has no entry in its config.json for a
field added since, and trained as that field's `setting(old=...)` says. Its
checkpoints hold that network and optimiser, so the run can only go on with
those values. Rerunning the command that started it (a requeued Slurm job
after an upgrade, say) therefore resumes with them, unless the command line
sets such a field itself: then it asks for another run, and the workdir check
refuses it with its one-line reason. Rewriting the config.json of such a run
leaves those fields out again, so every later rerun reads it the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from pipeline import config_files
from pipeline.config import Config

log = logging.getLogger(__name__)

RUN_CONFIG = "config.json"


def predated_fields(path: Path) -> dict[str, object]:
    """The fields the run config at `path` predates, as `section.field` -> the value the run used.

    {} when there is no such file, it cannot be read, or it lists every field:
    the workdir check says what is wrong with a file that cannot be read.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return config_files.fields_predated(data) if isinstance(data, dict) else {}


def value_of(config: Config, name: str):
    """The value of the field `section.field` in `config`."""
    section, field = name.split(".")
    return getattr(getattr(config, section), field)


def with_values(config: Config, values: dict[str, object]) -> Config:
    """`config` with each `section.field` in `values` set to its value."""
    sections: dict[str, dict] = {}
    for name, value in values.items():
        section, field = name.split(".")
        sections.setdefault(section, {})[field] = value
    return config.replace(**{s: dataclasses.replace(getattr(config, s), **f) for s, f in sections.items()})


def as_the_run_ran(config: Config, workdir: Path, given: Iterable[str]) -> Config:
    """`config` with the fields the workdir's run predates at the values it used, except the `given` ones.

    Args:
      config: the configuration the command line asks for.
      workdir: the run's directory; without an older run there, `config` is
        returned as it is.
      given: the `section.field` names the command line sets itself (flags
        and the keys of its --config file).
    """
    given = set(given)
    kept = {
        name: value
        for name, value in predated_fields(Path(workdir) / RUN_CONFIG).items()
        if name not in given and value_of(config, name) != value
    }
    if kept:
        log.info(
            "%s predates %s: kept at the value the run used (%s)",
            Path(workdir) / RUN_CONFIG,
            ", ".join(kept),
            ", ".join(f"{name}={value!r}" for name, value in kept.items()),
        )
    return with_values(config, kept) if kept else config


def save(config: Config, path: Path) -> None:
    """Writes a run's config.json, leaving out again the fields the file there predates and the run kept.

    A field is left out only while its value is still the one the run used
    before the field existed.
    """
    data = config_files.to_dict(config)
    for name, old in predated_fields(path).items():
        if value_of(config, name) == old:
            section, field = name.split(".")
            del data[section][field]
    config_files.write_json_atomically(data, path)
