"""Typed, frozen run configuration: every field declared once, with every default.

`Config` holds one section of each kind: `DataConfig` and `AugmentConfig` here,
`ModelConfig` in `pipeline.config_model`, `TrainConfig` in
`pipeline.config_train`; this module hands all of them on, with the value types
other modules name, so callers import `pipeline.config` alone. Each field's
`setting(...)` holds its help text, its flag, its value for runs recorded
before it existed and whether a resume may change it; the flags, the old-run
fill-in, the resume check and the README's flag list derive from it
(`pipeline.config_fields`).
Reading, checking and writing configs is `pipeline.config_files`; named
presets are `pipeline.presets`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pipeline import config_fields
from pipeline.config_fields import ConfigError as ConfigError  # Callers catch `config.ConfigError`.
from pipeline.config_fields import setting
from pipeline.config_model import ModelConfig as ModelConfig
from pipeline.config_model import TestTimeAugmentation as TestTimeAugmentation
from pipeline.config_train import Precision as Precision
from pipeline.config_train import TrainConfig as TrainConfig

FlipMode = Literal["random", "alternating"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split."""

    # None: search the standard locations in order.
    data_dir: str | None = setting(
        None, "Directory with the four Fashion-MNIST IDX files (gzipped or not).", flag=True, resumable=True
    )
    validation_size: int = setting(
        5000,
        "Training images held out (class-balanced) as the validation split; default 5000. 0 trains on all of "
        "them: a final fit of a recipe chosen on validation, with no per-epoch validation or early stopping.",
        flag=True,
        lower=0,
    )
    split_seed: int = 0
    # Cap on training examples (after the validation split); None uses all.
    # Used by the `smoke` preset and by tests, never by real runs.
    max_train_examples: int | None = setting(
        None, "Use only this many training examples (quick checks).", flag=True, lower=1
    )
    max_eval_examples: int | None = None
    # The order examples are split and sharded in. "canonical": sorted by a
    # digest of their content, so every source (IDX files, tensorflow-datasets,
    # which stores them in another order) gives the same validation split and
    # shards. "file": as the source lists them.
    order: Literal["canonical", "file"] = setting("canonical", old="file")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-batch augmentation; evaluation data is never augmented."""

    enabled: bool = setting(True, "Augment training batches (flip, shift).", flag="augment")
    flip: bool = True
    # "random": each image is mirrored with probability 1/2 in every epoch.
    # "alternating": a random half in the first epoch, then every image is
    # mirrored in every other epoch, so any two consecutive epochs show each
    # image both ways instead of the same way half the time.
    flip_mode: FlipMode = setting("alternating", old="random")
    max_shift: int = 2  # Padded random crop: pixels of shift in each direction.
    erase_probability: float = 0.0  # Random erasing (cutout) per example.
    erase_max_fraction: float = 0.25  # Largest erased area as image fraction.
    # The last this many epochs train without random erasing: the network
    # learns from erased images, then ends on whole ones, the kind it is
    # served (the "refined" augmentation of He et al., 2019, "Data
    # augmentation revisited"). Counted back from `train.epochs`; 0 erases to
    # the end.
    erase_off_final_epochs: int = setting(0, old=0)
    # CutMix: the fraction of training images that get a box pasted from
    # another image of their batch, their target mixing the two labels by
    # area (`augment.cutmix`); 0 is off. Unlike erasing, every pixel
    # the network sees still belongs to a real garment, and the target says
    # how much of each it sees.
    cutmix_probability: float = setting(0.0, old=0.0)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs; saved as `config.json` in the workdir."""

    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()

    def replace(self, **sections) -> Config:
        """Returns a copy with top-level fields or whole sections replaced."""
        return dataclasses.replace(self, **sections)


def as_compared(config: Config) -> Config:
    """`config` with the fields that change nothing in its run at their defaults, for telling two runs apart.

    `train.base_batch_size` (the batch the learning rate was chosen at)
    matters only when the rate is scaled from it (`train.scale_learning_rate`).
    """
    if config.train.scale_learning_rate:
        return config
    chosen_at = type(config.train)().base_batch_size
    return config.replace(train=dataclasses.replace(config.train, base_batch_size=chosen_at))


FIELDS_ADDED = config_fields.fields_added(Config)
