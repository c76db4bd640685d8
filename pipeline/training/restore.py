"""Restoring a run's newest usable checkpoint, falling back past a corrupt one.

A checkpoint that cannot be read is moved aside, never deleted, and the one
before it is used; one that reads but does not fit the model or optimiser is
an error, since another config or precision wrote it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import tensorflow as tf

from pipeline.cluster import strategies
from pipeline.runs import workdir as workdir_lib
from pipeline.training import state as train_state

log = logging.getLogger(__name__)
QUARANTINE = "corrupt"


def _restore_one(state: train_state.TrainState, path: str) -> None:
    # Checkpoints written before the position was recorded resume at an epoch boundary, topology unknown (zeros).
    for variable in (state.epoch_step, state.epoch_totals, state.epoch_seconds, state.topology):
        variable.assign(tf.zeros_like(variable))
    state.core().restore(path).assert_existing_objects_matched().expect_partial()
    tf.train.Checkpoint(position=state.position()).restore(path).expect_partial()


def _readable(path: str) -> bool:
    """True when every tensor of the checkpoint at `path` reads back: it is intact, whatever it holds."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError):
        return False
    return True


def _quarantine(path: str, reason: str) -> None:
    """Moves a corrupt checkpoint's files aside (never deletes them) and drops it from the state file."""
    directory = Path(path).parent
    aside = directory / QUARANTINE
    aside.mkdir(exist_ok=True)
    for file in directory.glob(f"{Path(path).name}.*"):
        shutil.move(str(file), aside / file.name)
    (aside / f"{Path(path).name}.reason.txt").write_text(reason + "\n")
    state = tf.train.get_checkpoint_state(str(directory))
    kept = [p for p in state.all_model_checkpoint_paths if Path(p).name != Path(path).name]
    if kept:
        tf.compat.v1.train.update_checkpoint_state(str(directory), kept[-1], all_model_checkpoint_paths=kept)
    else:
        (directory / "checkpoint").unlink()


def restore(state: train_state.TrainState, workdir: Path, strategy, steps_per_epoch: int) -> int:
    """Restores the newest usable checkpoint in the chief's workdir; returns completed epochs.

    A checkpoint that cannot be read is named, moved to checkpoints/corrupt/
    (by the chief) and the previous one is used, with a warning saying how
    much training that loses. A checkpoint that reads but does not fit the
    model or optimiser (another config or precision) is never moved: it is
    a one-line error. Every worker reads the chief's checkpoint (the
    workdir must be shared on a multi-host cluster); a consistency check
    stops workers that disagree.

    Raises:
      WorkdirError: when checkpoints exist but none of them can be read, or
        one is intact but does not fit this run.
    """
    directory = workdir / train_state.CHECKPOINTS
    saved = tf.train.get_checkpoint_state(str(directory)) if directory.exists() else None
    candidates = list(reversed(saved.all_model_checkpoint_paths)) if saved else []
    failures, restored = [], None
    for path in candidates:
        path = str(directory / Path(path).name)
        try:
            _restore_one(state, path)
            restored = path
            break
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
            if _readable(path):
                raise workdir_lib.WorkdirError(
                    f"checkpoint {path} is intact but does not fit this run's model and optimizer "
                    f"(precision {state.policy}: {str(e).splitlines()[0][:160]}); resume with the config and "
                    "--precision it was written with (its config.json), or use a new --workdir"
                ) from None
            reason = f"{Path(path).name} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            failures.append(reason)
            log.warning("checkpoint %s", reason)
            if strategies.is_chief(strategy):
                _quarantine(path, reason)
    if failures and restored is None:
        raise workdir_lib.WorkdirError(
            f"no usable checkpoint in {directory} ({'; '.join(failures)}; moved to {directory / QUARANTINE}); "
            "rerun the same command to train from scratch in this workdir, or use a new --workdir"
        )
    if restored:
        if failures:
            lost = _step(candidates[0]) - _step(restored)
            log.warning(
                "resumed from the older checkpoint %s: %d optimizer steps (%.1f epochs) will be trained again",
                Path(restored).name,
                lost,
                lost / steps_per_epoch,
            )
        log.info("resumed from %s (%s)", restored, train_state.describe_position(state))
        workers, replicas = (int(n) for n in state.topology.numpy())
        state.restored_topology = (workers, replicas) if replicas else None
    # Checkpoints from here on record where they are written.
    state.topology.assign(train_state.topology_of(strategy))
    _check_workers_agree(strategy, int(state.optimizer.iterations.numpy()))
    # Anew: it reads the state file after any quarantine, and counts its interval from the restored step.
    train_state.reset_manager(state, int(state.optimizer.iterations.numpy()))
    return int(state.epoch.numpy())


def _step(path: str) -> int:
    """The optimizer step (or, for older checkpoints, the epoch) in a checkpoint's name."""
    return int(Path(path).name.rsplit("-", 1)[1])


def _check_workers_agree(strategy, step: int) -> None:
    if not strategies.workers_agree(strategy, float(step)):
        raise workdir_lib.WorkdirError(
            "workers restored different checkpoints: the workdir must be on a file system every "
            "worker can read (NFS, GCS, a shared volume)"
        )
