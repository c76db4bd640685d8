"""What every entry point shares: config flags, `--help`, a quiet console, one-line errors."""

from __future__ import annotations

import contextlib
import dataclasses
import logging as std_logging
import os
import re
import sys
import tempfile
import types
import typing

from absl import app, flags, logging

from pipeline import config as config_lib
from pipeline import config_fields, config_files, presets

FLAGS = flags.FLAGS


def define_config_flags(flag_values: flags.FlagValues = FLAGS, config_cls=None) -> None:
    """--preset, --config, and a flag for every config field declared with one (`config.setting(flag=...)`).

    Each flag's type, choices, bounds and help come from its field's
    declaration; unset, a flag keeps the preset's (or --config file's) value.
    """
    flags.DEFINE_string(
        "preset", "default", f"Named config: {', '.join(sorted(presets.PRESETS))}.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "config",
        None,
        "JSON config file (e.g. a tuner's best_config.json), applied over --preset: "
        "the keys it leaves out keep the preset's values.",
        flag_values=flag_values,
    )
    for name, _, field, hint in config_fields.flag_fields(config_cls or config_lib.Config):
        meta, kwargs = field.metadata, {"flag_values": flag_values}
        bounds = {k: v for k, v in (("lower_bound", meta["lower"]), ("upper_bound", meta["upper"])) if v is not None}
        base = _base_type(hint)
        if meta["parse"] is not None:
            flags.DEFINE_string(name, None, meta["help"], **kwargs)
        elif typing.get_origin(base) is typing.Literal:
            flags.DEFINE_enum(name, None, [str(c) for c in typing.get_args(base)], meta["help"], **kwargs)
        elif base is bool:
            flags.DEFINE_boolean(name, None, meta["help"], **kwargs)
        elif base is int:
            flags.DEFINE_integer(name, None, meta["help"], **bounds, **kwargs)
        elif base is float:
            flags.DEFINE_float(name, None, meta["help"], **bounds, **kwargs)
        else:
            flags.DEFINE_string(name, None, meta["help"], **kwargs)


def _base_type(hint):
    """`int | None` -> int; other hints unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def config_from_flags(flag_values: flags.FlagValues = FLAGS, config_cls=None) -> config_lib.Config:
    """The preset, the --config file over it, then every given flag; validated."""
    base = presets.preset(flag_values.preset)
    if flag_values.config:
        base = config_files.load_file(flag_values.config, base)
    changes: dict[str, dict] = {}
    for name, section, field, _ in config_fields.flag_fields(config_cls or type(base)):
        if flag_values[name].present:
            value = flag_values[name].value
            parse = field.metadata["parse"]
            changes.setdefault(section, {})[field.name] = parse(value) if parse else value
    sections = {s: dataclasses.replace(getattr(base, s), **fields) for s, fields in changes.items()}
    return config_files.validate(base.replace(**sections))


def fail(message: str, code: int = 1) -> None:
    """Prints a one-line error (no traceback) and exits non-zero."""
    logging.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def reject_arguments(argv: list[str]) -> None:
    """Fails with usage exit code 2 when a command that takes only flags is given positional arguments."""
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; all options are --flags", 2)


def input_errors() -> tuple[type[Exception], ...]:
    """The errors of a command's inputs (its config, data or workdir), each reported as its one-line message.

    Imported when called, after `start_tensorflow`, like the rest of the pipeline.
    """
    from pipeline import config as config_lib
    from pipeline.data import sources as data_lib
    from pipeline.runs import workdir

    return (config_lib.ConfigError, data_lib.DataError, workdir.WorkdirError)


# Our own loggers: shown at INFO. Everything else (TensorFlow, Keras,
# matplotlib) shows warnings and errors only, unless --verbosity >= 1.
OWN_LOGGERS = ("pipeline", "tuning", "launch", "benchmarks")
# TensorFlow's C++ start-up lines: its INFO lines, the banner before absl's
# log initialisation, the CUDA probe that fails on machines without GPUs, and
# TFLite's line as its interpreter applies the XNNPACK delegate.
_NATIVE_CHATTER = re.compile(
    r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog|E\d{4} .*(cuInit|cuda_(platform|dnn|fft|blas))"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate|E\d{4} .*oneDNN supports DT_HALF only)"
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
def native_logs_filtered():
    """Holds back TensorFlow's C++ chatter written to file descriptor 2 (start-up, TFLite's delegate).

    TensorFlow writes these lines from C++ before its logging is initialised,
    so TF_CPP_MIN_LOG_LEVEL does not reach them. Anything else written
    meanwhile (warnings, errors) is passed on once the block is over.
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


def measure_precision_quietly(precision: str) -> None:
    """Runs `precision`'s once-per-process measurement of this CPU now, with TensorFlow's native lines held back.

    Timing float16 on a CPU without float16 kernels makes oneDNN log an
    error-level line about falling back to Eigen's; the measurement's own
    warning says what matters to the user, that float16 is the slower here.
    Call it once the strategy exists (the measurement starts TensorFlow's runtime).
    """
    if precision != "mixed_float16":
        return
    from pipeline.training import precision as precision_lib

    with native_logs_filtered():
        precision_lib.resolve_precision(precision)


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


def start_tensorflow(training: bool = False) -> None:
    """Picks this process's GPUs, applies the thread settings, imports TensorFlow and probes its devices quietly.

    In a Slurm job step each task keeps only its share of the node's GPUs:
    TensorFlow reads CUDA_VISIBLE_DEVICES once, when it initialises its devices.

    Args:
      training: the command trains, so GPUs it was given (CUDA_VISIBLE_DEVICES)
        that TensorFlow cannot see are an error, not hours on the CPU.
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
    with native_logs_filtered():
        import tensorflow as tf

        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.list_physical_devices()
    if training:
        from pipeline.cluster import strategies

        try:
            strategies.check_given_gpus_are_seen()
        except strategies.ClusterError as e:
            fail(str(e))
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


class WithoutLines:
    """A text stream that passes everything on but whole lines equal to one of `dropped` (a library's stray prints).

    Text that cannot become such a line is passed on at once, so progress
    bars still redraw.
    """

    def __init__(self, stream, dropped: tuple[str, ...]):
        self.stream, self.dropped, self.pending = stream, dropped, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line not in self.dropped:
                self.stream.write(line + "\n")
        if not any(line.startswith(self.pending) for line in self.dropped):
            self.stream.write(self.pending)
            self.pending = ""
        return len(text)

    def flush(self) -> None:
        # `print` writes the text and its end before any flush, so a held-back
        # start of a dropped line is flushed only when a line never ended.
        self.stream.write(self.pending)
        self.pending = ""
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)
