"""What every entry point shares: config flags, `--help`, a quiet console, one-line errors."""

from __future__ import annotations

import contextlib
import dataclasses
import logging as std_logging
import os
import re
import sys
import tempfile

from absl import app, flags, logging

from pipeline import config as config_lib
from pipeline import presets

FLAGS = flags.FLAGS


def define_config_flags() -> None:
    """Flags that override fields of the preset or --config file (unset: keep it)."""
    flags.DEFINE_string("preset", "default", f"Named config: {', '.join(sorted(presets.PRESETS))}.")
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
    flags.DEFINE_enum("optimizer", None, ["adam", "adamw", "sgd"], "Optimiser (sgd: with Nesterov momentum).")
    flags.DEFINE_float("weight_decay", None, "Decoupled weight decay of the kernels (adamw, sgd).", lower_bound=0.0)
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
    flags.DEFINE_enum(
        "batch_norm_statistics",
        None,
        ["global", "per_replica"],
        "With several replicas: normalise with global-batch statistics, or each replica's own (default).",
    )
    flags.DEFINE_enum(
        "all_reduce_dtype",
        None,
        ["auto", "float32", "bfloat16"],
        "With several replicas: the dtype gradients are summed in (auto: bfloat16 under mixed_bfloat16).",
    )
    flags.DEFINE_enum(
        "input_distribution",
        None,
        ["auto", "tf_distribute"],
        "Multi-worker input: auto feeds a worker's one CPU replica from its own iterator; tf_distribute never does.",
    )
    flags.DEFINE_integer(
        "checkpoint_every_steps",
        None,
        "Also checkpoint inside an epoch every N optimizer steps (long epochs, preemptible machines).",
        lower_bound=1,
    )
    flags.DEFINE_boolean("jit_compile", None, "XLA-compile the training step (slower on CPU; try it on GPUs).")
    flags.DEFINE_boolean(
        "deterministic",
        None,
        "TensorFlow's op determinism: exact resume and repeatable runs on GPUs, at some speed (CPUs are already).",
    )
    flags.DEFINE_integer(
        "max_train_examples", None, "Use only this many training examples (quick checks).", lower_bound=1
    )
    flags.DEFINE_integer(
        "validation_size",
        None,
        "Training images held out (class-balanced) as the validation split; default 5000.",
        lower_bound=1,
    )


def _parse_dropout(text: str) -> float | None:
    if text.lower() in ("off", "none", "0"):
        return None
    try:
        return float(text)
    except ValueError:
        raise config_lib.ConfigError(f"--dropout={text!r}: give a rate like 0.3, or 'off'") from None


def _parse_filters(items: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in items)
    except ValueError:
        raise config_lib.ConfigError(f"--filters={','.join(items)}: give integers like 32,64,128") from None


def config_from_flags() -> config_lib.Config:
    """The preset (or --config file) with every given flag applied; validated."""
    base = config_lib.load_file(FLAGS.config) if FLAGS.config else presets.preset(FLAGS.preset)
    given = lambda name: FLAGS[name].present  # noqa: E731 - a tiny local predicate.
    pick = lambda name: {name: FLAGS[name].value} if given(name) else {}  # noqa: E731
    model = {**pick("batch_norm"), **pick("kernel_size"), **pick("test_time_augmentation")}
    if given("dropout"):
        model["dropout"] = _parse_dropout(FLAGS.dropout)
    if given("filters"):
        model["filters"] = _parse_filters(FLAGS.filters)
    augment = {"enabled": FLAGS.augment} if given("augment") else {}
    data = {**pick("data_dir"), **pick("max_train_examples"), **pick("validation_size")}
    train = {}
    for name in (
        "epochs",
        "global_batch_size",
        "learning_rate",
        "optimizer",
        "seed",
        "weight_decay",
        "label_smoothing",
        "early_stopping_patience",
        "scale_learning_rate",
        "precision",
        "steps_per_execution",
        "checkpoint_every_steps",
        "batch_norm_statistics",
        "all_reduce_dtype",
        "input_distribution",
        "jit_compile",
        "deterministic",
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


# Our own loggers: shown at INFO. Everything else (TensorFlow, Keras,
# matplotlib) shows warnings and errors only, unless --verbosity >= 1.
OWN_LOGGERS = ("pipeline", "tuning", "launch", "benchmarks")
# TensorFlow's C++ start-up lines: its INFO lines, the banner before absl's
# log initialisation, and the CUDA probe that fails on machines without GPUs.
_NATIVE_CHATTER = re.compile(
    r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog|E\d{4} .*(cuInit|cuda_(platform|dnn|fft|blas)))"
)


class _ConsoleFormatter(std_logging.Formatter):
    """Our progress lines as plain text; warnings and errors say what they are."""

    def format(self, record: std_logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= std_logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        return message


def _verbose() -> bool:
    return FLAGS.is_parsed() and FLAGS.verbosity >= 1


@contextlib.contextmanager
def _native_logs_filtered():
    """Holds back TensorFlow's C++ start-up chatter written to file descriptor 2.

    TensorFlow writes these lines from C++ before its logging is initialised,
    so TF_CPP_MIN_LOG_LEVEL does not reach them. Anything else written
    meanwhile (warnings, errors) is passed on once start-up is over.
    """
    if _verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _NATIVE_CHATTER.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def define_thread_flags() -> None:
    """Flags that size TensorFlow's thread pools (`fmnist-launch` sets them per worker)."""
    flags.DEFINE_integer(
        "intra_op_threads",
        None,
        "Threads inside one op (default: TensorFlow's, or the launcher's share).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "inter_op_threads", None, "Ops run at once (default: TensorFlow's, or the launcher's share).", lower_bound=1
    )


def _thread_settings() -> tuple[int | None, int | None]:
    """(intra-op, inter-op) threads: the flags, else the environment (as `fmnist-launch` sets it), else None."""
    settings = []
    for flag, variable in (
        ("intra_op_threads", "TF_NUM_INTRAOP_THREADS"),
        ("inter_op_threads", "TF_NUM_INTEROP_THREADS"),
    ):
        value = FLAGS[flag].value if flag in FLAGS and FLAGS[flag].value else os.environ.get(variable)
        settings.append(int(value) if value else None)
    return settings[0], settings[1]


def start_tensorflow() -> None:
    """Picks this process's GPUs, applies the thread settings, imports TensorFlow and probes its devices quietly.

    In a Slurm job step each task keeps only its share of the node's GPUs:
    TensorFlow reads CUDA_VISIBLE_DEVICES once, when it initialises its devices.
    """
    from pipeline.cluster import environment as cluster_env

    try:
        gpus = cluster_env.assign_slurm_gpus()
    except cluster_env.ClusterError as e:
        fail(str(e))
    if gpus:
        std_logging.getLogger("launch").info("GPUs of this task: %s", ",".join(gpus))
    intra, inter = _thread_settings()
    if intra:
        os.environ.setdefault("OMP_NUM_THREADS", str(intra))  # oneDNN's pool, read when TensorFlow loads.
    with _native_logs_filtered():
        import tensorflow as tf

        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.list_physical_devices()
    if intra or inter:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        std_logging.getLogger("launch").info(
            "threads: intra-op %s, inter-op %s; cores %s",
            intra or "default",
            inter or "default",
            ",".join(str(c) for c in cores) or "any",
        )


def _quiet_console() -> None:
    if _verbose():
        return
    handler = logging.get_absl_handler()
    handler.setFormatter(_ConsoleFormatter())
    # Through absl, not on the root logger: TensorFlow saves and restores absl's
    # verbosity around SavedModel export, which would undo a root-level setting.
    logging.set_verbosity(logging.WARNING)
    for name in OWN_LOGGERS:
        std_logging.getLogger(name).setLevel(std_logging.INFO)


def run_app(main, module_name: str) -> None:
    """Runs an absl `main` as a console script whose `--help` describes `module_name`.

    absl's `--help` prints the docstring of `__main__` and the key flags of
    `sys.argv[0]`; for a console script both are pip's wrapper, which has
    neither. So the command's own module lends its docstring and key flags
    (its own and those it adopts) to the wrapper.
    """
    module = sys.modules[module_name]
    sys.modules["__main__"].__doc__ = module.__doc__
    for flag in FLAGS.get_key_flags_for_module(module_name):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def quiet_main(argv):
        _quiet_console()
        return main(argv)

    app.run(quiet_main)
