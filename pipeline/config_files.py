"""Run configurations from and to dicts and files.

Unknown or mistyped keys fail loudly, so a typo in a config file never falls
back to a default; a run's own config.json is read with the values it used
for fields it predates (`config.setting(old=...)`); `validate` rejects values
no run could use. Writes are atomic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Literal

from pipeline.config import FIELDS_ADDED, Config, ConfigError
from pipeline.config_fields import declared_fields, fields_added

log = logging.getLogger(__name__)


def to_dict(config) -> dict:
    """Converts a config dataclass to plain JSON-compatible data."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(value, hint, where: str):
    """Checks `value` against a type hint, converting lists to tuples."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, _) = typing.get_args(hint)
        return tuple(_coerce(v, inner, f"{where}[]") for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def run_config_from_dict(data: dict, where: str = "config", config_cls=None) -> Config:
    """Reads a run's recorded config, filling fields it predates from their `setting(old=...)`."""
    data = json.loads(json.dumps(data))
    added = FIELDS_ADDED if config_cls in (None, Config) else fields_added(config_cls)
    for dotted, value in added.items():
        section, field = dotted.split(".")
        if isinstance(data.get(section), dict):
            data[section].setdefault(field, value)
    return validate(from_dict(config_cls or Config, data, where=where))


def from_dict(cls, data: dict, where: str = "config", base=None):
    """Builds dataclass `cls` from `data`; unknown or mistyped keys raise ConfigError.

    Missing keys take `base`'s values (an instance of `cls`, section by
    section), or without one the dataclass defaults, so a file may hold only
    overrides.
    """
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(hints)}")
    kwargs = {}
    for key, value in data.items():
        if base is not None and dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            kwargs[key] = from_dict(hints[key], value, f"{where}.{key}", getattr(base, key))
        else:
            kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


IMAGE_SIDE = 28  # Fashion-MNIST images are 28x28.


def feature_map_sides(model) -> list[int]:
    """The side of each block's output map for a `ModelConfig`; a side below 1 ends the list.

    Convolutions with "valid" padding take kernel_size - 1 pixels off a side,
    max-pooling halves it (rounding down with "valid" padding, up with
    "same"); a block of layout "pool_first" pools after its first convolution.
    """
    shrink = model.kernel_size - 1 if model.padding == "valid" else 0
    before_pool = model.convs_per_block if model.block_layout == "pool_last" else 1
    side, sides = IMAGE_SIDE, []
    for _ in model.filters:
        side -= before_pool * shrink
        side = side // 2 if model.pool_padding == "valid" else -(-side // 2) if side >= 1 else side
        side -= (model.convs_per_block - before_pool) * shrink
        sides.append(side)
        if side < 1:
            break
    return sides


def _check_geometry(model) -> None:
    sides = feature_map_sides(model)
    if sides[-1] >= 1:
        return
    fits = len(sides) - 1
    raise ConfigError(
        f"model.filters: {len(model.filters)} blocks shrink the {IMAGE_SIDE}x{IMAGE_SIDE} images below one pixel "
        f"(block sides {', '.join(map(str, sides))}); give at most {fits} entries with these kernel, padding and "
        "pooling settings"
        if fits
        else f'model.kernel_size {model.kernel_size} with padding "valid" leaves no pixel of the '
        f'{IMAGE_SIDE}x{IMAGE_SIDE} images after one block; use padding "same" or a smaller kernel'
    )


def validate(config: Config) -> Config:
    """Rejects values no run could use, naming the field; returns the config."""
    t, m, d, a = config.train, config.model, config.data, config.augment
    checks = [
        (t.epochs >= 1, "train.epochs must be >= 1"),
        (t.global_batch_size >= 1, "train.global_batch_size must be >= 1"),
        (t.learning_rate > 0, "train.learning_rate must be > 0"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
        (0 <= t.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
        (t.steps_per_execution >= 1, "train.steps_per_execution must be >= 1"),
        (
            t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 1,
            "train.checkpoint_every_steps must be >= 1 or null",
        ),
        (t.base_batch_size >= 1, "train.base_batch_size must be >= 1"),
        (
            t.early_stopping_patience is None or t.early_stopping_patience >= 1,
            "train.early_stopping_patience must be >= 1 or null",
        ),
        (len(m.filters) >= 1 and min(m.filters) >= 1, "model.filters needs positive entries"),
        (m.convs_per_block >= 1, "model.convs_per_block must be >= 1"),
        (m.kernel_size in (1, 3, 5, 7), "model.kernel_size must be 1, 3, 5 or 7"),
        (m.dropout is None or 0 < m.dropout < 1, "model.dropout must be in (0, 1) or null"),
        (0 <= m.batch_norm_momentum < 1, "model.batch_norm_momentum must be in [0, 1)"),
        (0 <= t.momentum < 1, "train.momentum must be in [0, 1)"),
        (t.ema_momentum is None or 0 < t.ema_momentum < 1, "train.ema_momentum must be in (0, 1) or null"),
        (t.sam_rho is None or t.sam_rho > 0, "train.sam_rho must be > 0 or null"),
        (0 < t.sam_ascent_fraction <= 1, "train.sam_ascent_fraction must be in (0, 1]"),
        (
            t.ema_overwrite_steps is None or t.ema_overwrite_steps >= 1,
            "train.ema_overwrite_steps must be >= 1 or null",
        ),
        (
            t.ema_overwrite_steps is None or t.ema_momentum is not None,
            "train.ema_overwrite_steps needs train.ema_momentum (the average it restarts from); set both or neither",
        ),
        (m.dense_units >= 1, "model.dense_units must be >= 1"),
        (d.validation_size >= 0, "data.validation_size must be >= 0"),
        (
            t.early_stopping_patience is None or d.validation_size >= 1,
            "train.early_stopping_patience needs validation images: set data.validation_size >= 1 "
            "(--validation_size) or early_stopping_patience to null",
        ),
        (
            d.max_train_examples is None or d.max_train_examples >= 1,
            "data.max_train_examples must be >= 1, or null for all",
        ),
        (
            d.max_eval_examples is None or d.max_eval_examples >= 1,
            "data.max_eval_examples must be >= 1, or null for all",
        ),
        (0 <= a.max_shift <= 8, "augment.max_shift must be in [0, 8]"),
        (0 <= a.erase_probability <= 1, "augment.erase_probability must be in [0, 1]"),
        (
            # An erased box's sides are drawn between a tenth of the image's and
            # the square root of this fraction (`augment._erase`).
            0.01 <= a.erase_max_fraction <= 1,
            "augment.erase_max_fraction must be in [0.01, 1] (the largest erased area as a fraction of the image)",
        ),
        (0 <= a.cutmix_probability <= 1, "augment.cutmix_probability must be in [0, 1]"),
        (
            0 <= a.erase_off_final_epochs <= t.epochs,
            "augment.erase_off_final_epochs must be in [0, train.epochs] (the final epochs trained without erasing)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_geometry(m)
    return config


def save(config: Config, path: Path) -> None:
    """Writes the config as JSON, atomically (a temporary file renamed into place)."""
    write_json_atomically(to_dict(config), path)


def write_json_atomically(data: dict, path: Path) -> None:
    """Writes a config's dict as JSON, atomically; a failure is a ConfigError naming the fix."""
    tmp = Path(f"{path}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"could not write {path}: {e.strerror or e}; free space there or choose another location"
        ) from None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        inside = [path / name for name in ("best_config.json", "config.json") if (path / name).is_file()]
        raise ConfigError(
            f"config file {path} is a directory; pass a JSON file" + (f", e.g. --config={inside[0]}" if inside else "")
        ) from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); pass a readable JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None


def fields_predated(data: dict) -> dict:
    """The fields a whole saved config (`save`) of an older version lacks, with their old values; {} otherwise.

    Such a file lists every field but ones added since (`setting(old=...)`),
    for example a tuner's `best_config.json` from before an upgrade.
    """
    declared = declared_fields(Config)
    if "name" not in data or not all(isinstance(data.get(s), dict) for s, _ in declared):
        return {}
    missing = [f"{s}.{f.name}" for s, f in declared if f.name not in data[s]]
    return {name: FIELDS_ADDED[name] for name in missing} if set(missing) <= set(FIELDS_ADDED) else {}


def fields_in_file(path: str | Path) -> set[str]:
    """The `section.field` names a config file sets."""
    return {f"{s}.{f}" for s, fields in _read(Path(path)).items() if isinstance(fields, dict) for f in fields}


def load_file(path: str | Path, base: Config | None = None) -> Config:
    """Reads a config file to start a run from.

    Fields the file leaves out take `base`'s values (a preset; without one
    today's defaults, the `default` preset), except in a whole config saved
    before fields were added: those take the value runs used before the field
    existed, so the file means what it meant when saved.
    """
    data = _read(Path(path))
    predated = fields_predated(data)
    if predated:
        # Said, because a file that lists nearly every field is read differently from one of overrides.
        log.info(
            "%s is a whole config saved before %s existed: read as it ran (%s)",
            path,
            ", ".join(predated),
            ", ".join(f"{name}={value!r}" for name, value in predated.items()),
        )
        return run_config_from_dict(data, where=str(path))
    return validate(from_dict(Config, data, where=str(path), base=base))


def load_run_config(path: str | Path, config_cls=None) -> Config:
    """Reads a run's own config.json: fields it predates take the value the run used."""
    return run_config_from_dict(_read(Path(path)), where=str(path), config_cls=config_cls)
