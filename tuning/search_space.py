"""The search space: the one function that maps KerasTuner `hp` onto a Config.

Every hyperparameter's default is read from the base config, so an empty
`HyperParameters()` yields exactly the base config (the `default` preset
unless told otherwise). Groups not named in `search` are registered as
`hp.Fixed` at their base value: searched only where asked.
"""

from __future__ import annotations

import dataclasses

import keras_tuner as kt

from pipeline import config as config_lib
from pipeline import config_files

GROUPS = (
    "filters",
    "kernel_size",
    "dense_units",
    "dropout",
    "batch_norm",
    "learning_rate",
    "weight_decay",
    "augment",
)
# Rates whose scale depends on the recipe (SGD at 0.4, Adam at 1e-3) are
# searched relative to the base config's: from base / 10 to base x 3, on a log scale.
RELATIVE_RANGE = (0.1, 3.0)
FILTER_CHOICES = ((16, 32, 48, 64), (32, 48, 64, 96, 128), (64, 96, 128, 192, 256))


def _choice(hp, name: str, values, default, searched: bool):
    if not searched:
        return hp.Fixed(name, default)
    return hp.Choice(name, sorted(set(values) | {default}), default=default)


def _filters(hp, base: config_lib.ModelConfig, searched: bool) -> tuple[int, ...]:
    choices = FILTER_CHOICES + (FILTER_CHOICES[-1],) * max(0, len(base.filters) - len(FILTER_CHOICES))
    return tuple(_choice(hp, f"filters_{i}", choices[i], default, searched) for i, default in enumerate(base.filters))


def _dropout(hp, base: config_lib.ModelConfig, searched: bool) -> float | None:
    # Conditional hyperparameter: the rate exists only when dropout is on.
    if not searched:
        use = hp.Fixed("dropout", base.dropout is not None)
    else:
        use = hp.Boolean("dropout", default=base.dropout is not None)
    if not use:
        return None
    with hp.conditional_scope("dropout", [True]):
        default = base.dropout if base.dropout is not None else 0.2
        if not searched:
            return hp.Fixed("dropout_rate", default)
        low, high = min(0.05, default), max(0.5, default)
        return round(hp.Float("dropout_rate", low, high, default=default), 4)


def _augment(hp, base: config_lib.AugmentConfig, searched: bool) -> config_lib.AugmentConfig:
    # "Strength" is the shift in pixels (0 switches augmentation off) plus erasing.
    default_shift = base.max_shift if base.enabled else 0
    shift = _choice(hp, "augment_shift", range(0, 5), default_shift, searched)  # The default is always a choice.
    erase = _choice(hp, "augment_erase", (0.0, 0.25, 0.5), base.erase_probability, searched)
    if (shift, erase) == (default_shift, base.erase_probability):
        return base
    return dataclasses.replace(base, enabled=bool(shift or erase), max_shift=shift, erase_probability=erase)


def config_from_hp(hp: kt.HyperParameters, base: config_lib.Config, search=GROUPS) -> config_lib.Config:
    """Maps hyperparameters onto `base`; registers each one (with its default) in `hp`."""
    unknown = set(search) - set(GROUPS)
    if unknown:
        raise config_lib.ConfigError(f"unknown search group(s) {sorted(unknown)}; choose from {list(GROUPS)}")
    m, t = base.model, base.train
    model = dataclasses.replace(
        m,
        filters=_filters(hp, m, "filters" in search),
        kernel_size=_choice(hp, "kernel_size", (3, 5), m.kernel_size, "kernel_size" in search),
        dense_units=_choice(hp, "dense_units", (128, 256, 512), m.dense_units, "dense_units" in search),
        dropout=_dropout(hp, m, "dropout" in search),
        batch_norm=(
            hp.Boolean("batch_norm", default=m.batch_norm)
            if "batch_norm" in search
            else hp.Fixed("batch_norm", m.batch_norm)
        ),
    )
    rate = _relative(hp, "learning_rate", t.learning_rate, "learning_rate" in search)
    decay = _relative(hp, "weight_decay", t.weight_decay, "weight_decay" in search)
    augment = _augment(hp, base.augment, "augment" in search)
    train = dataclasses.replace(t, learning_rate=rate, weight_decay=decay)
    return config_files.validate(base.replace(model=model, augment=augment, train=train))


def _relative(hp, name: str, base: float, searched: bool) -> float:
    """`base` scaled by a log-uniform factor in `RELATIVE_RANGE` (fixed when not searched or zero)."""
    if not searched or base <= 0:
        return hp.Fixed(name, base)
    low, high = RELATIVE_RANGE
    return hp.Float(name, base * low, base * high, sampling="log", default=base)
