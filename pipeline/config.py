"""Typed, frozen run configuration with named presets.

Every default lives here. A run's configuration is written to
`WORKDIR/config.json`; loading a dict with an unknown key fails loudly so a
typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Literal

BatchNormKernel = Literal["fused", "keras"]
BatchNormStatistics = Literal["global", "per_replica"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Schedule = Literal["constant", "cosine"]
Optimizer = Literal["adam", "adamw", "sgd"]
FlipMode = Literal["random", "alternating"]
StemInit = Literal["default", "whitening"]
ConvInit = Literal["default", "identity"]
TestTimeAugmentation = Literal["none", "flip", "flip_and_shift"]
AllReduceDtype = Literal["auto", "float32", "bfloat16"]
InputDistribution = Literal["auto", "tf_distribute"]


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split."""

    data_dir: str | None = None  # None: search the standard locations in order.
    validation_size: int = 5000
    split_seed: int = 0
    # Cap on training examples (after the validation split); None uses all.
    # Used by the `smoke` preset and by tests, never by real runs.
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # The order examples are split and sharded in. "canonical": sorted by a
    # digest of their content, so every source (IDX files, tensorflow-datasets,
    # which stores them in another order) gives the same validation split and
    # shards. "file": as the source lists them.
    order: Literal["canonical", "file"] = "canonical"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A family of plain CNNs; the `seed` preset is the tutorial's model."""

    # One entry per block. Two narrow convolutions per block train as fast as
    # one twice as wide on a CPU and, in the same training time, reached
    # higher validation accuracy (the benchmark record compares the recipes).
    filters: tuple[int, ...] = (16, 32, 64)
    convs_per_block: int = 2
    kernel_size: int = 3
    padding: Literal["same", "valid"] = "same"
    batch_norm: bool = True
    # Weight of the old value in BN's moving statistics. Keras's 0.99 averages
    # over ~100 steps and lags far behind weights that change fast early in
    # training, so inference-mode accuracy trails training accuracy badly;
    # 0.9 (PyTorch's default) tracks the weights within ~10 steps.
    batch_norm_momentum: float = 0.9
    # Train batch norm's scale (gamma). False freezes it at 1: the following
    # ReLU and convolution are scale-equivariant, so the scale adds little but
    # optimiser work.
    batch_norm_scale: bool = False
    # Initialisation of the first convolution. "whitening": its first filters
    # start as the whitening transform of the training images' k x k patches
    # (the leading eigenvectors of the patch covariance, each scaled by
    # 1/sqrt(eigenvalue), with both signs; `models.whitening_kernel`), so the
    # first layer's outputs start decorrelated with unit variance instead of
    # as random projections.
    stem_init: StemInit = "whitening"
    # Initialisation of the other convolutions. "identity": the first
    # min(in, out) filters start as the identity (a dirac at the centre tap),
    # so a new network passes the stem's features through every block.
    conv_init: ConvInit = "identity"
    # "fused": TensorFlow's fused kernel (`pipeline.model.batch_norm`), faster on CPU
    # with the same weights and semantics; "keras": Keras' own layer. The
    # benchmarks' execution-settings comparison measures both.
    batch_norm_kernel: BatchNormKernel = "fused"
    # With batch norm, a block's last ReLU follows its max-pooling: max and ReLU
    # commute exactly, so the outputs are the same, but the ReLU touches a
    # quarter of the values. False is the textbook conv-BN-ReLU-pool order.
    relu_after_pooling: bool = True
    # Dropout rate after the blocks and before the classifier; None is off.
    # With batch norm only the last block gets it (models._block says why).
    dropout: float | None = 0.3
    dense_units: int = 256
    # Views averaged at inference (evaluation, report, export, serving); never
    # in training. "flip": the image and its mirror (2 views); "flip_and_shift":
    # both, each also shifted one pixel up, down, left and right (10 views).
    # The training augmentation taught the network these views, so averaging
    # their probabilities cancels part of each single view's error; metrics.json
    # reports both. The views go through the network as one batch, so batch-1
    # latency grows far less than the view count (serving benchmark).
    test_time_augmentation: TestTimeAugmentation = "flip_and_shift"


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-batch augmentation; evaluation data is never augmented."""

    enabled: bool = True
    flip: bool = True
    # "random": each image is mirrored with probability 1/2 in every epoch.
    # "alternating": a random half in the first epoch, then every image is
    # mirrored in every other epoch, so any two consecutive epochs show each
    # image both ways instead of the same way half the time.
    flip_mode: FlipMode = "alternating"
    max_shift: int = 2  # Padded random crop: pixels of shift in each direction.
    erase_probability: float = 0.0  # Random erasing (cutout) per example.
    erase_max_fraction: float = 0.25  # Largest erased area as image fraction.


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, precision and stopping."""

    epochs: int = 31
    global_batch_size: int = 512
    learning_rate: float = 0.4
    optimizer: Optimizer = "sgd"
    # Decoupled weight decay of the kernels (AdamW, SGD): every step shrinks
    # them by learning_rate * weight_decay. Adam ignores it.
    weight_decay: float = 0.005
    # SGD only: Nesterov momentum.
    momentum: float = 0.9
    schedule: Schedule = "cosine"
    warmup_epochs: float = 1.0
    # Linear scaling rule: lr *= global_batch_size / base_batch_size.
    scale_learning_rate: bool = False
    base_batch_size: int = 128
    label_smoothing: float = 0.0
    # Stop after this many epochs without a better validation accuracy and
    # restore the best weights; None trains every epoch and keeps the last.
    early_stopping_patience: int | None = None
    precision: Precision = "auto"
    steps_per_execution: int = 16
    # With several replicas, batch norm normalises with "global" statistics
    # (moments all-reduced over the global batch in every forward and backward
    # pass) or "per_replica" ones (each replica's own batch; the moving
    # statistics are averaged over the replicas after every compiled call, so
    # every replica and checkpoint holds the same ones). One replica: no
    # difference. The benchmark record compares the two.
    batch_norm_statistics: BatchNormStatistics = "per_replica"
    # The dtype the replicas' gradients are summed in. "auto": bfloat16 when
    # the precision is mixed_bfloat16 and the all-reduce op accepts bfloat16
    # (RING collectives between CPU workers, not NCCL between GPUs), else float32. A mixed_bfloat16 model's
    # gradients come out of bfloat16 arithmetic, so most of them are bfloat16
    # values already; summing them in bfloat16 halves the bytes every step
    # sends. One replica: nothing is all-reduced, no difference.
    all_reduce_dtype: AllReduceDtype = "auto"
    # How a multi-worker process's batches reach its replicas. "auto": a
    # worker whose only replica is its CPU feeds it from its own tf.data
    # iterator; every other case goes through tf.distribute's distributed
    # dataset. "tf_distribute": always through tf.distribute. The batches
    # and their order are the same either way.
    input_distribution: InputDistribution = "auto"
    # Also checkpoint inside an epoch every this many optimizer steps (long
    # epochs on preemptible machines); None checkpoints at epoch ends and on
    # SIGTERM only.
    checkpoint_every_steps: int | None = None
    # XLA-compile the training step. Off: on CPU it ran the default model far
    # slower (benchmark record, execution settings); on GPUs it often pays,
    # so it stays an option.
    jit_compile: bool = False
    # TensorFlow's op determinism (`tf.config.experimental.enable_op_determinism`):
    # GPU kernels that sum in a varying order (cuDNN convolutions' backward
    # passes, scatter-adds) are replaced by deterministic ones, so a run
    # resumed on GPUs ends with exactly an uninterrupted run's weights. CPU
    # runs repeat exactly without it (with it they use other kernels, so
    # their results differ in the last digits); on GPUs it costs speed.
    deterministic: bool = False
    seed: int = 0


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


# Fields added after runs were first written, with the value those runs used.
# A run's config.json without such a field is read with this value, so the
# run resumes, reports and exports as it trained.
FIELDS_ADDED = {
    "model.test_time_augmentation": "none",
    "model.batch_norm_kernel": "fused",
    "model.relu_after_pooling": True,
    "train.checkpoint_every_steps": None,
    "train.batch_norm_statistics": "global",
    "model.batch_norm_scale": True,
    "model.stem_init": "default",
    "model.conv_init": "default",
    "augment.flip_mode": "random",
    "train.momentum": 0.9,
    "train.all_reduce_dtype": "float32",
    "train.input_distribution": "tf_distribute",
    "train.deterministic": False,
    "data.order": "file",
}


def run_config_from_dict(data: dict, where: str = "config") -> Config:
    """Reads a run's recorded config, filling fields it predates from `FIELDS_ADDED`."""
    data = json.loads(json.dumps(data))
    for dotted, value in FIELDS_ADDED.items():
        section, field = dotted.split(".")
        if isinstance(data.get(section), dict):
            data[section].setdefault(field, value)
    return validate(from_dict(Config, data, where=where))


def from_dict(cls, data: dict, where: str = "config"):
    """Builds dataclass `cls` from `data`; unknown or mistyped keys raise ConfigError.

    Missing keys take the dataclass default, so a file may hold only overrides.
    """
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(hints)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


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
        (m.dense_units >= 1, "model.dense_units must be >= 1"),
        (d.validation_size >= 1, "data.validation_size must be >= 1"),
        (0 <= a.max_shift <= 8, "augment.max_shift must be in [0, 8]"),
        (0 <= a.erase_probability <= 1, "augment.erase_probability must be in [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return config


def save(config: Config, path: Path) -> None:
    """Writes the config as JSON, atomically (a temporary file renamed into place)."""
    tmp = Path(f"{path}.tmp")
    try:
        tmp.write_text(json.dumps(to_dict(config), indent=2) + "\n")
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
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None


def load_file(path: str | Path) -> Config:
    """Reads a config file to start a run from: missing fields take today's defaults."""
    return validate(from_dict(Config, _read(Path(path)), where=str(path)))


def load_run_config(path: str | Path) -> Config:
    """Reads a run's own config.json: fields it predates take the value the run used."""
    return run_config_from_dict(_read(Path(path)), where=str(path))
