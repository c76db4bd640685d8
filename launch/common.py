"""Flags shared by the entry points and the one function that turns them into a Config."""

from __future__ import annotations

import dataclasses
import sys

from absl import flags, logging

from pipeline import config as config_lib

FLAGS = flags.FLAGS


def define_config_flags() -> None:
    """Flags that override fields of the preset or --config file (unset: keep it)."""
    flags.DEFINE_string("preset", "default", f"Named config: {', '.join(sorted(config_lib.PRESETS))}.")
    flags.DEFINE_string("config", None, "JSON config file (e.g. a tuner's best_config.json); overrides --preset.")
    flags.DEFINE_string("data_dir", None, "Directory with the four Fashion-MNIST IDX files (gzipped or not).")
    flags.DEFINE_integer("epochs", None, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("global_batch_size", None, "Global batch size (all replicas together).", lower_bound=1)
    flags.DEFINE_float("learning_rate", None, "Peak learning rate.", lower_bound=0.0)
    flags.DEFINE_integer("seed", None, "Random seed for initialisation, shuffling and augmentation.")
    flags.DEFINE_string(
        "dropout",
        None,
        "Dropout rate after the blocks (with batch norm: the last) and before the classifier, or 'off'.",
    )
    flags.DEFINE_boolean("augment", None, "Augment training batches (flip, shift).")
    flags.DEFINE_boolean("batch_norm", None, "Batch normalisation after each convolution.")
    flags.DEFINE_list("filters", None, "Conv filters per block, e.g. 32,64,128.")
    flags.DEFINE_integer("kernel_size", None, "Conv kernel size.", lower_bound=1)
    flags.DEFINE_enum(
        "test_time_augmentation",
        None,
        ["none", "flip", "flip_and_shift"],
        "Views averaged at inference (evaluation, export): none, flip (2x), flip_and_shift (10x).",
    )
    flags.DEFINE_float("weight_decay", None, "AdamW decoupled weight decay.", lower_bound=0.0)
    flags.DEFINE_float("label_smoothing", None, "Label smoothing.", lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_integer(
        "early_stopping_patience", None, "Stop after N epochs without a better val accuracy.", lower_bound=1
    )
    flags.DEFINE_boolean("scale_learning_rate", None, "Scale the learning rate linearly with the global batch.")
    flags.DEFINE_enum(
        "precision",
        None,
        ["auto", "float32", "mixed_bfloat16", "mixed_float16"],
        "Dtype policy; auto picks bfloat16 where the hardware has it.",
    )
    flags.DEFINE_integer("steps_per_execution", None, "Training steps per compiled call.", lower_bound=1)
    flags.DEFINE_boolean("jit_compile", None, "XLA-compile the training step (slower on CPU; try it on GPUs).")
    flags.DEFINE_integer(
        "max_train_examples", None, "Use only this many training examples (quick checks).", lower_bound=1
    )


def _dropout(text: str) -> float | None:
    if text.lower() in ("off", "none", "0"):
        return None
    try:
        return float(text)
    except ValueError:
        raise config_lib.ConfigError(f"--dropout={text!r}: give a rate like 0.3, or 'off'") from None


def _filters(items: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in items)
    except ValueError:
        raise config_lib.ConfigError(f"--filters={','.join(items)}: give integers like 32,64,128") from None


def config_from_flags() -> config_lib.Config:
    """The preset (or --config file) with every given flag applied; validated."""
    base = config_lib.load(FLAGS.config) if FLAGS.config else config_lib.preset(FLAGS.preset)
    given = lambda name: FLAGS[name].present  # noqa: E731 - a tiny local predicate.
    pick = lambda name: {name: FLAGS[name].value} if given(name) else {}  # noqa: E731
    model = {**pick("batch_norm"), **pick("kernel_size"), **pick("test_time_augmentation")}
    if given("dropout"):
        model["dropout"] = _dropout(FLAGS.dropout)
    if given("filters"):
        model["filters"] = _filters(FLAGS.filters)
    augment = {"enabled": FLAGS.augment} if given("augment") else {}
    data = {**pick("data_dir"), **pick("max_train_examples")}
    train = {}
    for name in (
        "epochs",
        "global_batch_size",
        "learning_rate",
        "seed",
        "weight_decay",
        "label_smoothing",
        "early_stopping_patience",
        "scale_learning_rate",
        "precision",
        "steps_per_execution",
        "jit_compile",
    ):
        train.update(pick(name))
    config = base.replace(
        model=dataclasses.replace(base.model, **model),
        augment=dataclasses.replace(base.augment, **augment),
        data=dataclasses.replace(base.data, **data),
        train=dataclasses.replace(base.train, **train),
    )
    return config_lib.validate(config)


def fail(message: str, code: int = 1) -> None:
    """Prints a one-line error (no traceback) and exits non-zero."""
    logging.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
