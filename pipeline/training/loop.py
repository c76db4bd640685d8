"""The epoch loop `fit`: trains from a restored position, validates, checkpoints and stops on request.

`pipeline.training.driver.train_and_evaluate` drives it with the state of
`pipeline.training.state`; the tuner runs `fit` for each trial.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.cluster import strategies
from pipeline.data import input_pipeline as ip
from pipeline.data import sources as data_lib
from pipeline.runs import workdir as workdir_lib
from pipeline.training import optimizer as optimizer_lib
from pipeline.training import preemption, steps
from pipeline.training import progress as progress_lib
from pipeline.training import state as train_state

log = logging.getLogger(__name__)


def release_in_background(holder: list) -> None:
    """Drops the iterator in `holder` (its only reference) on another thread.

    Destroying a tf.data iterator waits for its autotuning thread to wake,
    which took seconds with the processor idle. Our datasets turn autotuning
    off (`input_pipeline.pipeline_options`), but the per-device datasets
    that tf.distribute builds around them autotune regardless, so the run's
    training stream and each validation's iterator are destroyed off the
    training thread. The thread is not a daemon: the interpreter waits for
    it at exit, since killing a thread inside TensorFlow's destructor aborts
    the process.
    """
    threading.Thread(target=holder.clear, name="release-iterator").start()


def evaluate(strategy, eval_steps_fn, eval_fn, split: data_lib.Split, calls: int = 1, on_progress=None) -> dict:
    """Loss and accuracy over a whole split, inference mode, each example once.

    Args:
      strategy: the distribution strategy.
      eval_steps_fn: from `steps.make_eval_steps`.
      eval_fn: from `input_pipeline.distributed_datasets`.
      split: the images and labels.
      calls: how many compiled calls the split's steps are divided into (at
        most one a step). Each call ends in an all-reduce, so every worker
        must pass the same; the sums come out the same for any number.
      on_progress: optional `fn(fraction of the split done)`, after each call.
    """
    ds, num_steps = eval_fn(split)
    iterator = [iter(ds)]
    chunk = max(-(-num_steps // calls), 1)
    totals = tf.zeros([3], tf.float64)
    for done in range(0, num_steps, chunk):
        n = min(chunk, num_steps - done)
        totals = eval_steps_fn(iterator[0], tf.constant(n), totals)
        if on_progress:
            on_progress((done + n) / num_steps)
    release_in_background(iterator)
    return steps.summarize(totals)


def topology_change(
    trained_on: tuple[int, int] | None, history: list[dict], strategy, epoch: int, epoch_step: int
) -> str | None:
    """A note when a resume trains on other workers or replicas than the restored checkpoint, else None.

    The global batch and the schedule stay the same, so the recipe does; but
    each replica's share of a batch, its batch-norm statistics and each
    worker's shard of the images differ, so the run is close to an
    uninterrupted one, not identical. A resume inside an epoch also draws the
    rest of that epoch from the new shards' shuffles.

    Args:
      trained_on: (workers, replicas) that wrote the restored checkpoint, or
        None for one written before checkpoints recorded it; then the last
        epoch of `history` says, if it recorded where it trained.
      history: the run's epochs so far.
      strategy: the strategy this resume trains with.
      epoch: completed epochs at the checkpoint.
      epoch_step: optimizer steps into the next epoch at the checkpoint.
    """
    if trained_on is None and history and "replicas" in history[-1]:
        trained_on = history[-1]["workers"], history[-1]["replicas"]
    now = strategies.num_workers(strategy), strategy.num_replicas_in_sync
    if trained_on is None or trained_on == now:
        return None
    if epoch_step:
        where, rest = (
            f"epoch {epoch + 1}'s first {epoch_step} steps",
            f"; the rest of epoch {epoch + 1} is drawn from the new shards",
        )
    else:
        where, rest = f"epoch {epoch}", ""
    return (
        f"{where} trained on {trained_on[0]} worker(s), {trained_on[1]} replica(s) in all; this resume "
        f"trains on {now[0]} worker(s), {now[1]} replica(s): the same global batch and schedule, but other "
        f"per-replica batches and batch-norm statistics, so the weights will be close to, not exactly, those of "
        f"an uninterrupted run{rest}"
    )


def write_summaries(writers: dict, epoch: int, record: dict) -> None:
    """TensorBoard scalars for one epoch, of each split `writers` names."""
    for split, writer in writers.items():
        with writer.as_default(step=epoch):
            tf.summary.scalar("loss", record[f"{split}_loss"])
            tf.summary.scalar("accuracy", record[f"{split}_accuracy"])
            if split == "train":
                tf.summary.scalar("learning_rate", record["learning_rate"])


def record_if_best(state: train_state.TrainState, record: dict) -> bool:
    """Remembers `record` as the best epoch when its validation accuracy is the highest so far."""
    if record["val_accuracy"] > float(state.best_val_accuracy.numpy()):
        state.best_val_accuracy.assign(record["val_accuracy"])
        state.best_epoch.assign(record["epoch"])
        return True
    return False


def epoch_record(epoch: int, running: dict, val: dict, state, strategy, seconds: float, elapsed: float) -> dict:
    """One epoch's line of `history.json` (validation left out when `val` is empty), also logged."""
    record = {
        "epoch": epoch,
        "train_loss": running["loss"],
        "train_accuracy": running["accuracy"],
        **({"val_loss": val["loss"], "val_accuracy": val["accuracy"]} if val else {}),
        "learning_rate": float(np.asarray(state.optimizer.learning_rate)),
        "seconds": seconds,
        "elapsed_seconds": elapsed,
        # Where the epoch trained: a resume may run on another number of workers or devices.
        "workers": strategies.num_workers(strategy),
        "replicas": strategy.num_replicas_in_sync,
    }
    log.info(
        "epoch %d: train loss %.4f acc %.4f | %s | %.1fs",
        epoch,
        record["train_loss"],
        record["train_accuracy"],
        f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f}" if val else "no validation split",
        seconds,
    )
    return record


def should_stop(config: config_lib.Config, state: train_state.TrainState, epoch: int) -> bool:
    """Early stopping: `patience` epochs since the best one."""
    patience = config.train.early_stopping_patience
    return patience is not None and epoch - int(state.best_epoch.numpy()) >= patience


def train_epoch(
    config: config_lib.Config,
    strategy,
    state: train_state.TrainState,
    train_steps_fn,
    iterator,
    steps_per_epoch: int,
    progress: bool,
    stop: preemption.StopSignal | None,
    seconds_before: float,
) -> dict[str, float]:
    """Trains the rest of one epoch in compiled calls of `steps_per_execution` steps.

    `iterator` is the run's stream of batches (`input_pipeline.train_dataset`),
    at this epoch's next batch. After every call: show progress; when a stop was requested on any worker,
    save the position and raise `TrainingStopped`; every
    `checkpoint_every_steps` steps, save the position.
    """
    chunk = config.train.steps_per_execution
    bar = progress_lib.bar(steps_per_epoch, stateful_metrics=["loss", "accuracy"]) if progress else None
    done, totals = int(state.epoch_step.numpy()), state.epoch_totals.numpy()
    started = time.perf_counter()
    while done < steps_per_epoch:
        n = min(chunk, steps_per_epoch - done)
        totals = train_steps_fn(iterator, tf.constant(n), tf.constant(totals, tf.float64)).numpy()
        done += n
        if bar:
            running = steps.summarize(totals)
            bar.update(done, [("loss", running["loss"]), ("accuracy", running["accuracy"])])
        # At the epoch's end `fit` asks, after validating and checkpointing the epoch.
        stopping = done < steps_per_epoch and stop is not None and stop.agreed(strategy)
        if done < steps_per_epoch and (stopping or state.checkpoint_every_steps):
            state.epoch_step.assign(done)
            state.epoch_totals.assign(totals)
            state.epoch_seconds.assign(seconds_before + time.perf_counter() - started)
            # Periodic checkpoints: when the manager's own interval says one is due.
            path = train_state.save(state, periodic=not stopping)
            if stopping:
                progress_lib.end_line(bar)
                raise preemption.TrainingStopped(_stopped_message(stop, state, path), stop.signum)
    return steps.summarize(totals)


def _stopped_message(stop: preemption.StopSignal, state: train_state.TrainState, path: str) -> str:
    name = signal.Signals(stop.signum).name
    return (
        f"stopped by {name} at optimizer step {int(state.optimizer.iterations.numpy())} "
        f"({train_state.describe_position(state)}); checkpoint {path}; rerun the same command to resume"
    )


def fit(
    config: config_lib.Config,
    strategy,
    state: train_state.TrainState,
    dataset: data_lib.Dataset,
    history: list[dict],
    out_dir: Path,
    progress: bool,
    on_epoch_end=None,
    stop: preemption.StopSignal | None = None,
) -> list[dict]:
    """Trains from the restored position to `config.train.epochs`, checkpointing each epoch.

    Args:
      config: the run's configuration.
      strategy: the distribution strategy the state was built under.
      state: from `train_state.build_state`, restored by `restore.restore`.
      dataset: the three splits.
      history: the records of the epochs already completed.
      out_dir: where this process writes checkpoints and TensorBoard logs.
      progress: show a progress bar and a line per epoch.
      on_epoch_end: optional `fn(record) -> bool` called after each epoch,
        once it is checkpointed (tuning); True ends training there.
      stop: the installed `StopSignal`, if any: a requested stop saves a
        checkpoint at the next step boundary and raises `TrainingStopped`.

    Returns:
      The full per-epoch history, earlier invocations' epochs included.
    """
    steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
    train_steps = steps.make_train_steps(strategy, state.model, state.optimizer, config.train, state.policy)
    eval_steps = steps.make_eval_steps(strategy, state.network)
    train_fn, eval_fn = ip.distributed_datasets(config, strategy, dataset)
    # A final fit (`data.validation_size` 0) holds out no images to validate on.
    validating = len(dataset.validation) > 0
    splits = ("train", "val") if validating else ("train",)
    writers = {s: tf.summary.create_file_writer(str(out_dir / "tensorboard" / s)) for s in splits}
    elapsed = history[-1]["elapsed_seconds"] if history else 0.0
    # One stream of batches for the rest of the run, started in the first
    # epoch's time; the list holds its only reference, for `release_in_background`.
    stream = []
    try:
        for epoch in range(int(state.epoch.numpy()) + 1, config.train.epochs + 1):
            start_step = int(state.epoch_step.numpy())
            if start_step == 0 and should_stop(config, state, epoch - 1):
                log.info("early stopping: no better validation accuracy since epoch %d", int(state.best_epoch.numpy()))
                break
            start, seconds_before = time.perf_counter(), float(state.epoch_seconds.numpy())
            if progress:
                print(f"Epoch {epoch}/{config.train.epochs}", flush=True)
            if not stream:
                stream.append(iter(train_fn(epoch, start_step)))
            running = train_epoch(
                config,
                strategy,
                state,
                train_steps,
                stream[0],
                steps_per_epoch,
                progress,
                stop,
                seconds_before,
            )
            val = {}
            if validating:
                with optimizer_lib.averaged_weights(state.optimizer):
                    val = evaluate(strategy, eval_steps, eval_fn, dataset.validation)
                    if record_if_best(state, {"epoch": epoch, "val_accuracy": val["accuracy"]}):
                        with workdir_lib.writing("the best weights", out_dir / "best"):
                            state.best_manager.save(checkpoint_number=epoch)
            seconds = seconds_before + time.perf_counter() - start
            elapsed += seconds
            record = epoch_record(epoch, running, val, state, strategy, seconds, elapsed)
            history.append(record)
            write_summaries(writers, epoch, record)
            state.epoch.assign(epoch)
            for variable in (state.epoch_step, state.epoch_totals, state.epoch_seconds):
                variable.assign(tf.zeros_like(variable))
            # History before checkpoint: a crash between the two re-runs the epoch
            # and the history is truncated to the checkpoint's epoch on resume.
            if strategies.is_chief(strategy):
                workdir_lib.write_json(out_dir / "history.json", history)
            path = train_state.save(state)
            if on_epoch_end and on_epoch_end(record):
                break
            if stop is not None and epoch < config.train.epochs and stop.agreed(strategy):
                raise preemption.TrainingStopped(_stopped_message(stop, state, path), stop.signum)
    finally:
        release_in_background(stream)
    return history
