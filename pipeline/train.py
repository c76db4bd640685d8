"""`train_and_evaluate`: the one library call behind `fmnist-train`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import data as data_lib
from pipeline import distribution, final_model, models, report, steps, train_lib
from pipeline import export as export_lib
from pipeline import input_pipeline as ip
from pipeline import workdir as workdir_lib

log = logging.getLogger(__name__)


def fit(
    config,
    strategy,
    state,
    dataset,
    history: list[dict],
    out_dir: Path,
    progress: bool,
    on_epoch_end=None,
    deadline: float | None = None,
) -> list[dict]:
    """Trains from the restored epoch to `config.train.epochs`, checkpointing each epoch.

    Args:
      on_epoch_end: optional `fn(record)` called after each epoch (tuning).
      deadline: optional `time.time()` after which no new epoch starts.

    Returns the full per-epoch history (earlier sessions' epochs included).
    """
    steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
    train_steps = steps.make_train_steps(strategy, state.model, state.optimizer, config.train)
    eval_steps = steps.make_eval_steps(strategy, models.single_view(state.model))
    train_fn, eval_fn = train_lib.distributed_datasets(config, strategy, dataset)
    writers = {s: tf.summary.create_file_writer(str(out_dir / "tensorboard" / s)) for s in ("train", "val")}
    elapsed = history[-1]["elapsed_seconds"] if history else 0.0
    for epoch in range(int(state.epoch.numpy()) + 1, config.train.epochs + 1):
        if train_lib.should_stop(config, state, epoch - 1):
            log.info("early stopping: no better validation accuracy since epoch %d", int(state.best_epoch.numpy()))
            break
        if deadline is not None and time.time() > deadline:
            log.info("time budget reached before epoch %d", epoch)
            break
        start = time.perf_counter()
        if progress:
            print(f"Epoch {epoch}/{config.train.epochs}", flush=True)
        running = train_lib.train_epoch(
            train_steps, train_fn(epoch), steps_per_epoch, config.train.steps_per_execution, progress
        )
        val = train_lib.evaluate(strategy, eval_steps, eval_fn, dataset.validation)
        seconds = time.perf_counter() - start
        elapsed += seconds
        record = {
            "epoch": epoch,
            "train_loss": running["loss"],
            "train_accuracy": running["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "learning_rate": float(np.asarray(state.optimizer.learning_rate)),
            "seconds": seconds,
            "elapsed_seconds": elapsed,
        }
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs",
            epoch,
            record["train_loss"],
            record["train_accuracy"],
            val["loss"],
            val["accuracy"],
            seconds,
        )
        if train_lib.record_if_best(state, record):
            state.best_manager.save(checkpoint_number=epoch)
        history.append(record)
        train_lib.write_summaries(writers, epoch, record)
        state.epoch.assign(epoch)
        # History before checkpoint: a crash between the two re-runs the epoch
        # and the history is truncated to the checkpoint's epoch on resume.
        if distribution.is_chief(strategy):
            workdir_lib.write_json(out_dir / "history.json", history)
        state.manager.save(checkpoint_number=epoch)
        if on_epoch_end:
            on_epoch_end(record)
    return history


def final_metrics(config, strategy, state, dataset, history, policy: str, started: float) -> dict:
    """Evaluates train, validation and test in inference mode; returns metrics.json content."""
    eval_steps = steps.make_eval_steps(strategy, state.model)
    _, eval_fn = train_lib.distributed_datasets(config, strategy, dataset)
    metrics = {"preset": config.name}
    for name in ("train", "val", "test"):
        split = {"train": dataset.train, "val": dataset.validation, "test": dataset.test}[name]
        result = train_lib.evaluate(strategy, eval_steps, eval_fn, split)
        metrics[f"{name}_accuracy"], metrics[f"{name}_loss"] = result["accuracy"], result["loss"]
    if config.model.test_time_augmentation != "none":
        # What the network alone scores, so the views' share stays visible.
        single = train_lib.evaluate(
            strategy, steps.make_eval_steps(strategy, models.single_view(state.model)), eval_fn, dataset.test
        )
        metrics.update(test_accuracy_single_view=single["accuracy"], test_loss_single_view=single["loss"])
    metrics.update(
        generalization_gap=metrics["train_accuracy"] - metrics["test_accuracy"],
        epochs_completed=int(state.epoch.numpy()),
        best_epoch=int(state.best_epoch.numpy()),
        weights="best" if config.train.early_stopping_patience else "last",
        train_seconds=history[-1]["elapsed_seconds"] if history else 0.0,
        wall_seconds=time.perf_counter() - started,
        parameters=int(state.model.count_params()),
        precision=policy,
        strategy=distribution.strategy_name(strategy),
        replicas=strategy.num_replicas_in_sync,
        workers=distribution.num_workers(strategy),
        global_batch_size=config.train.global_batch_size,
        data_source=dataset.source,
        examples={"train": len(dataset.train), "val": len(dataset.validation), "test": len(dataset.test)},
    )
    return metrics


def _export_once(workdir: Path, export_base, metrics: dict) -> Path:
    """Exports unless this same final model was already exported (a rerun of a finished run)."""
    previous = workdir / "exported_epoch.json"
    if previous.exists():
        record = workdir_lib.read_json(previous)
        if record["epochs_completed"] == metrics["epochs_completed"] and Path(record["path"]).exists():
            log.info("final model already exported to %s", record["path"])
            return Path(record["path"])
    path = export_lib.export_run(workdir, export_base)
    workdir_lib.write_json(previous, {"epochs_completed": metrics["epochs_completed"], "path": str(path)})
    return path


def train_and_evaluate(
    config: config_lib.Config,
    workdir: str | Path,
    strategy: tf.distribute.Strategy,
    progress: bool = True,
    make_report: bool = True,
    export: bool = True,
    export_base: str | Path | None = None,
) -> dict:
    """Trains (resuming if the workdir holds a checkpoint), evaluates, writes metrics.json.

    Args:
      config: the run's configuration (validated here).
      workdir: output directory; only the chief writes there.
      strategy: the distribution strategy (the default strategy for one device).
      progress: show a per-epoch progress bar on the chief.
      make_report: write WORKDIR/report/ (plots and tables) at the end.
      export: export the final model for TF Serving at the end.
      export_base: where to export (default WORKDIR/export).

    Returns:
      The metrics dict also written to `WORKDIR/metrics.json`.
    """
    started = time.perf_counter()
    config, workdir = config_lib.validate(config), Path(workdir)
    chief = distribution.is_chief(strategy)
    if chief:
        workdir_lib.ensure_writable(workdir)
        workdir_lib.check_resume_compatible(workdir, config)
    # Batch arithmetic first: an indivisible batch must fail before any work.
    ip.per_replica_batch_size(config.train.global_batch_size, strategy.num_replicas_in_sync)
    d = config.data
    dataset = data_lib.load(d.data_dir, d.validation_size, d.split_seed, d.max_train_examples, d.max_eval_examples)
    policy = distribution.resolve_precision(config.train.precision)
    log.info(
        "precision %s, strategy %s with %d replicas",
        policy,
        distribution.strategy_name(strategy),
        strategy.num_replicas_in_sync,
    )
    out_dir = distribution.write_dir(workdir, strategy)
    try:
        steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
        state = train_lib.build_state(config, strategy, policy, steps_per_epoch, out_dir)
        done = train_lib.restore(state, workdir, strategy)
        if chief:
            config_lib.save(config, workdir / "config.json")
        history = workdir_lib.load_history(workdir, done)
        history = fit(config, strategy, state, dataset, history, out_dir, progress and chief)
        if config.train.early_stopping_patience:
            state.best_manager.checkpoint.restore(tf.train.latest_checkpoint(workdir / "best")).expect_partial()
        metrics = final_metrics(config, strategy, state, dataset, history, policy, started)
        final_model.save_final_model(state.model, out_dir)
        # Every worker logs this; equal fingerprints prove the replicas agree.
        log.info("final weights fingerprint %s", final_model.fingerprint(state.model))
        if chief:
            workdir_lib.write_json(workdir / "metrics.json", metrics)
            if make_report:
                report.build_report(workdir)
            if export:
                metrics["export"] = str(_export_once(workdir, export_base, metrics))
                workdir_lib.write_json(workdir / "metrics.json", metrics)
        return metrics
    finally:
        distribution.cleanup_write_dir(out_dir, workdir)
