"""The run workdir: config, history and metrics files, written atomically.

Layout (see WORKSPACE.md): config.json, history.json, metrics.json,
checkpoints/, best/, tensorboard/, report/, export/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline import config as config_lib
from pipeline import config_fields, config_files


class WorkdirError(RuntimeError):
    """The workdir cannot be used for this run; the message says why and what to do."""


@contextlib.contextmanager
def writing(what: str, where: str | Path):
    """Turns a failed write (a full, read-only or vanished disk) into a one-line WorkdirError.

    Every file here is written under a temporary name and renamed into place,
    so a failed write leaves the earlier files (checkpoints, exports) intact.
    """
    import tensorflow as tf

    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        reason = _reason(e)
        raise WorkdirError(
            f"could not write {what} to {where}: {reason}; {_remedy(reason)} "
            "(everything saved before is intact; rerun the same command to resume)"
        ) from None


def _remedy(reason: str) -> str:
    if reason in ("No space left on device", "Disk quota exceeded"):
        return "free space there or choose another location"
    if reason in ("Permission denied", "Read-only file system"):
        return "make it writable or choose another location"
    return "choose another location"


# The operating system's words for a failed write, inside TensorFlow's longer messages.
_OS_REASONS = re.compile(r"No space left on device|Read-only file system|Permission denied|Disk quota exceeded")


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    found = _OS_REASONS.search(text)
    return found[0] if found else text.strip().splitlines()[-1][:200]


def write_json(path: Path, data) -> None:
    """Writes JSON via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path.name, path.parent):
        try:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def remove_leftovers(workdir: Path) -> list[Path]:
    """Removes what an interrupted write left: temporary JSON files and checkpoint `_temp` directories.

    Call it only while holding the workdir's lock: then no other run is writing here.
    """
    found = list(workdir.glob(".*.tmp")) + [workdir / "config.json.tmp"]
    for sub in ("checkpoints", "best", "final"):
        found += list((workdir / sub).glob("*_temp*")) if (workdir / sub).is_dir() else []
    removed = [p for p in found if p.exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def read_json(path: Path):
    """Reads a JSON file written by `write_json`."""
    return json.loads(Path(path).read_text())


# The file that marks each kind of directory: a training run's, and a search's (`tuning.search`).
KIND_FILES = {"training run": "config.json", "search": "search_config.json"}


def require_finished(workdir: Path, fix: str) -> None:
    """Raises WorkdirError naming what is missing unless `workdir` holds a finished run's metrics.json.

    Args:
      workdir: the run directory.
      fix: what the user should do when the run is unfinished, e.g.
        "finish the run with fmnist-train first".
    """
    if not workdir.is_dir():
        what = "is a file, not a run directory" if workdir.exists() else "does not exist"
        raise WorkdirError(f"{workdir} {what}: give the --workdir a finished fmnist-train run wrote")
    if (workdir / KIND_FILES["search"]).exists() and not (workdir / "metrics.json").exists():
        raise WorkdirError(
            f"{workdir} holds a search, not a training run: its retrained best is {workdir / 'best_run'} "
            "(fmnist-tune --retrain_best)"
        )
    if not (workdir / "metrics.json").exists():
        raise WorkdirError(f"{workdir} has no metrics.json: {fix}")


def check_directory_can_be_written(path: Path) -> str | None:
    """Why `path` could not be written as a directory (made where missing), or None; creates nothing."""
    if path.exists():
        if not path.is_dir():
            return "it is a file, not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else "Permission denied"
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        return f"{parent} is a file, not a directory"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"


def check_kind(workdir: Path, kind: str, command: str) -> None:
    """Raises WorkdirError when `workdir` holds a directory of another kind than `kind` (a `KIND_FILES` key)."""
    for other, marker in KIND_FILES.items():
        if other != kind and (workdir / marker).exists():
            raise WorkdirError(
                f"{workdir} holds a {other} ({marker}), not a {kind}; give {command} a --workdir of its own"
            )


def ensure_writable(workdir: Path) -> None:
    """Creates the workdir if needed and fails early when it cannot be written."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file, not a directory; choose another --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir") from None


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


# Changing these only extends a run or changes how (not what) it computes;
# anything else would make the resumed checkpoint belong to another experiment.


def check_resume_compatible(workdir: Path, config: config_lib.Config) -> config_lib.Config | None:
    """The recorded config when the workdir holds an earlier run of this config (resume), else None.

    The recorded config is read as the run wrote it: a field it predates
    takes the value that run used (its `config.setting(old=...)`).

    Raises:
      WorkdirError: when the workdir belongs to a run with another config.
    """
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        recorded = config_files.load_run_config(path, type(config))
        old = config_files.to_dict(config_lib.as_compared(recorded))
    except config_lib.ConfigError as e:
        raise WorkdirError(f"{path} is unreadable ({e}); remove it or use a new --workdir") from None
    new = config_files.to_dict(config_lib.as_compared(config))
    if new["train"]["precision"] == "auto":
        # `auto` continues with the policy the run recorded (`recorded_precision`).
        new["train"]["precision"] = old["train"]["precision"]
    resumable = config_fields.resumable_fields(type(config))  # Declared with each field.
    changes = [d for d in _differences(old, new) if not d.startswith(resumable)]
    if changes:
        raise WorkdirError(
            f"workdir {workdir} holds a run with a different config ({'; '.join(changes)}); "
            f"to resume it as it was, pass --config={path}; otherwise use a new --workdir"
        )
    return recorded


DATA_RECORD = "data.json"


def check_data(workdir: Path, fingerprint: str, source: str) -> None:
    """Records the run's data fingerprint, or refuses data other than the one the run trained on.

    A run trains only once its config.json is written; a data record without
    one is from a start that stopped before training, and is replaced.

    Raises:
      WorkdirError: when the workdir's run trained on other examples (or in another order).
    """
    path = workdir / DATA_RECORD
    if path.exists() and (workdir / "config.json").exists():
        recorded = read_json(path)
        if recorded["fingerprint"] != fingerprint:
            raise WorkdirError(
                f"workdir {workdir} trained on data with fingerprint {recorded['fingerprint']} "
                f"({recorded['source']}), but this run's data has fingerprint {fingerprint} ({source}); "
                "resume with the same data, or use a new --workdir"
            )
        return
    write_json(path, {"fingerprint": fingerprint, "source": source})


def recorded_data(workdir: Path) -> dict | None:
    """The data record the chief wrote (`check_data`), or None."""
    path = workdir / DATA_RECORD
    return read_json(path) if path.exists() else None


def recorded_precision(workdir: Path) -> str | None:
    """The dtype policy a run in `workdir` trained with, or None (a new run, or one recorded as `auto`).

    A run records the policy `auto` resolved to, so a resume on other
    hardware, where `auto` would pick another one, continues as it trained.
    """
    path = workdir / "config.json"
    if not path.exists():
        return None
    precision = config_files.load_run_config(path).train.precision
    return None if precision == "auto" else precision


def load_history(workdir: Path, epochs_done: int) -> list[dict]:
    """Per-epoch records of the completed epochs (those the checkpoint holds)."""
    path = workdir / "history.json"
    if not path.exists():
        return []
    return read_json(path)[:epochs_done]


def validated(history: list[dict]) -> bool:
    """Whether every epoch of a run was validated (a final fit, `data.validation_size` 0, holds out no images)."""
    return all("val_accuracy" in record for record in history)


def write_dir(workdir: Path, strategy) -> Path:
    """Where this process writes: the workdir for the chief, a temp dir otherwise.

    Non-chief workers must still write checkpoints (saving is collective), so
    they get a private temporary directory removed by `cleanup_write_dir`.
    """
    # Imported here: the rest of this module, and the lock, work without TensorFlow.
    from pipeline.cluster import strategies

    if strategies.is_chief(strategy):
        return workdir
    task_type, task_id = strategies.task(strategy)
    return Path(tempfile.mkdtemp(prefix=f"fmnist-{task_type}{task_id}-"))


def cleanup_write_dir(path: Path, workdir: Path) -> None:
    """Removes a non-chief's temporary directory; never touches the workdir."""
    if path.resolve() != workdir.resolve():
        shutil.rmtree(path, ignore_errors=True)
