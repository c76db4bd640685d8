"""The training driver: `train_and_evaluate`, the one library call behind `fmnist-train`.

It reads top to bottom: lock and check the workdir, load the data, build and
restore the state, train, evaluate, save, report and export. The pieces live
in `pipeline.training.state` (the checkpointed state), `pipeline.training.loop`
(the epoch loop) and `pipeline.training.steps` (the compiled steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
import typing
from pathlib import Path

import tensorflow as tf

from pipeline import config as config_lib
from pipeline import config_files
from pipeline.cluster import strategies
from pipeline.data import input_pipeline as ip
from pipeline.data import sources as data_lib
from pipeline.model import network as models
from pipeline.model import views
from pipeline.runs import final_model, report, run_config
from pipeline.runs import workdir as workdir_lib
from pipeline.runs.lock import WorkdirLock
from pipeline.serving import export as export_lib
from pipeline.training import loop, precision, preemption, restore, steps
from pipeline.training import optimizer as optimizer_lib
from pipeline.training import progress as progress_lib
from pipeline.training import state as train_state

log = logging.getLogger(__name__)


def served_model(config, strategy, model, policy: str):
    """The trained weights in the float32 network that the export serves.

    Under a mixed policy the trained model computes in bfloat16 or float16,
    while the export (`final_model.load_final_model`) computes in float32, the
    precision every CPU and server runs. The final metrics are measured on
    this copy, so "as served" is what a served request gets.
    """
    if policy == "float32":
        return model
    with strategy.scope():
        served = models.build_model(config.model, dtype="float32")
    served.set_weights(model.get_weights())
    return served


def final_metrics(
    config,
    strategy,
    state,
    dataset,
    history,
    policy: str,
    data_fingerprint: str,
    started: float,
    stop=None,
    progress: bool = False,
) -> dict:
    """Evaluates train, validation (if any) and test in inference mode; returns metrics.json content.

    A final fit (`data.validation_size` 0) has no validation metrics and no
    best epoch. A stop request ends it after the compiled call under way (training is
    checkpointed by then). With `progress`, one progress bar covers every
    split's evaluation.
    """
    served = served_model(config, strategy, state.model, policy)
    _, eval_fn = ip.distributed_datasets(config, strategy, dataset)
    as_served = steps.make_eval_steps(strategy, served)
    view_count = views.VIEW_COUNTS.get(config.model.test_time_augmentation, 1)
    # (the metrics' names, the split, the compiled evaluation, views of each image), in the order evaluated.
    passes = [
        (("train_accuracy", "train_loss"), dataset.train, as_served, view_count),
        (("val_accuracy", "val_loss"), dataset.validation, as_served, view_count),
        (("test_accuracy", "test_loss"), dataset.test, as_served, view_count),
    ]
    passes = [entry for entry in passes if len(entry[1])]
    if view_count > 1:
        # What the network alone scores, so the views' share stays visible.
        single = steps.make_eval_steps(strategy, views.single_view(served))
        passes.append((("test_accuracy_single_view", "test_loss_single_view"), dataset.test, single, 1))
    bar = None
    if progress:
        plural = "s" * (view_count > 1)
        print(f"Final evaluation in float32, as served: {view_count} view{plural} of each image", flush=True)
        # Counted in views, the network's unit of work, so the time left is right.
        bar = progress_lib.bar(sum(len(split) * n for _, split, _, n in passes), unit_name="view")
    if stop is not None:
        stop.check(strategy, "training (every epoch is checkpointed)")
    metrics, evaluated = {"preset": config.name}, 0
    for (accuracy, loss), split, eval_steps, n in passes:
        after_call = functools.partial(_after_evaluation_call, strategy, stop, bar, evaluated, len(split) * n)
        # In parts on every worker, whether or not this one shows them (see `loop.evaluate`).
        result = loop.evaluate(strategy, eval_steps, eval_fn, split, calls=20, on_progress=after_call)
        evaluated += len(split) * n
        metrics[accuracy], metrics[loss] = result["accuracy"], result["loss"]
    metrics.update(
        generalization_gap=metrics["train_accuracy"] - metrics["test_accuracy"],
        epochs_completed=int(state.epoch.numpy()),
        best_epoch=int(state.best_epoch.numpy()) if len(dataset.validation) else None,
        weights="best" if config.train.early_stopping_patience else "last",
        train_seconds=history[-1]["elapsed_seconds"] if history else 0.0,
        wall_seconds=time.perf_counter() - started,
        parameters=int(state.model.count_params()),
        precision=policy,
        strategy=strategies.strategy_name(strategy),
        replicas=strategy.num_replicas_in_sync,
        workers=strategies.num_workers(strategy),
        global_batch_size=config.train.global_batch_size,
        data_source=dataset.source,
        data_fingerprint=data_fingerprint,
        examples={"train": len(dataset.train), "val": len(dataset.validation), "test": len(dataset.test)},
    )
    return metrics


def _after_evaluation_call(strategy, stop, bar, before: int, work: int, fraction: float) -> None:
    """Shows `fraction` of a pass of `work` units that starts after `before` on `bar`, if any; honours a stop.

    A stop request ends the final evaluation within one call, not one split:
    the trained weights are checkpointed by then, and a scheduler's grace
    period (Slurm's KillWait: 30 s by default, at a time limit) is shorter
    than a split of `best`.
    """
    if bar is not None:
        bar.update(before + round(fraction * work))
    if stop is not None:
        stop.check(strategy, "training (every epoch is checkpointed)")


def _agreed_precision(strategy, policy: str) -> str:
    """`policy` when every worker resolved the same, else float32 on all (one optimiser structure everywhere).

    Workers resolve `auto` on their own hardware, partly by measurement, so
    two nodes (or a close measurement) can disagree.
    """
    code = float(typing.get_args(config_lib.Precision).index(policy))
    if strategies.num_workers(strategy) == 1 or strategies.workers_agree(strategy, code):
        return policy
    log.warning("the workers resolved different precisions (this one %s): training in float32 on every worker", policy)
    return "float32"


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


def _check_workers_data(strategy, workdir: Path, fingerprint: str, source: str) -> None:
    """Stops every worker when any worker's data differs from the others' (the chief's is in data.json)."""
    # 48 bits of the fingerprint: exact in the float64 all-reduce.
    if strategies.workers_agree(strategy, float(int(fingerprint[:12], 16))):
        return
    chief = workdir_lib.recorded_data(workdir) or {"fingerprint": "unknown", "source": "unknown"}
    raise workdir_lib.WorkdirError(
        f"the workers' data differ: this worker's has fingerprint {fingerprint} ({source}), the chief's "
        f"{chief['fingerprint']} ({chief['source']}); give every worker the same data (--data_dir)"
    )


def train_and_evaluate(
    config: config_lib.Config,
    workdir: str | Path,
    strategy: tf.distribute.Strategy,
    progress: bool = True,
    make_report: bool = True,
    export: bool = True,
    export_base: str | Path | None = None,
    stop: preemption.StopSignal | None = None,
) -> dict:
    """Trains (resuming if the workdir holds a checkpoint), evaluates, writes metrics.json.

    Args:
      config: the run's configuration (validated here).
      workdir: output directory; only the chief writes there, holding its lock.
      strategy: the distribution strategy (the default strategy for one device).
      progress: show a per-epoch progress bar on the chief.
      make_report: write WORKDIR/report/ (plots and tables) at the end.
      export: export the final model for TF Serving at the end.
      export_base: where to export (default WORKDIR/export).
      stop: an installed `StopSignal`: SIGTERM or Ctrl-C then checkpoints the
        current step and raises `TrainingStopped`.

    Returns:
      The metrics dict also written to `WORKDIR/metrics.json`.
    """
    started = time.perf_counter()
    config, workdir = config_files.validate(config), Path(workdir)
    chief, previous = strategies.is_chief(strategy), None
    if chief:
        workdir_lib.check_kind(workdir, "training run", "fmnist-train")
        workdir_lib.ensure_writable(workdir)
        if export:  # Before training, not after it.
            export_lib.check_export_base(Path(export_base) if export_base else workdir / "export")
    # The workers of a multi-worker job share their chief's lock.
    with WorkdirLock(workdir) if chief else contextlib.nullcontext():
        if chief:
            previous = workdir_lib.check_resume_compatible(workdir, config)  # The run's config so far.
            for leftover in workdir_lib.remove_leftovers(workdir):
                log.info("removed %s, left by an interrupted write", leftover)
        # Batch arithmetic first: an indivisible batch must fail before any work.
        per_replica = ip.per_replica_batch_size(config.train.global_batch_size, strategy.num_replicas_in_sync)
        dataset = data_lib.load(config.data)
        log.info(
            "Fashion-MNIST from %s: %d train, %d validation, %d test",
            dataset.source,
            len(dataset.train),
            len(dataset.validation),
            len(dataset.test),
        )
        # Also arithmetic that must fail before anything is written.
        steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
        data_fingerprint = data_lib.fingerprint(dataset)
        if chief:
            workdir_lib.check_data(workdir, data_fingerprint, dataset.source)
        _check_workers_data(strategy, workdir, data_fingerprint, dataset.source)
        policy = precision.run_precision(config.train.precision, workdir_lib.recorded_precision(workdir))
        policy = _agreed_precision(strategy, policy)
        reduce_dtype = strategies.gradient_all_reduce_dtype(config.train.all_reduce_dtype, policy, strategy)
        log.info(
            "precision %s%s, strategy %s: %d replica(s) x batch %d = global batch %d%s; %s",
            policy,
            precision.auto_note(config.train.precision),
            strategies.strategy_name(strategy),
            strategy.num_replicas_in_sync,
            per_replica,
            config.train.global_batch_size,
            f"; gradients summed in {reduce_dtype.name}" if reduce_dtype is not None else "",
            optimizer_lib.describe_learning_rate(config.train),
        )
        if config.train.deterministic:
            tf.config.experimental.enable_op_determinism()
        out_dir = workdir_lib.write_dir(workdir, strategy)
        try:
            state = train_state.build_state(config, strategy, policy, steps_per_epoch, out_dir, dataset.train.images)
            done = restore.restore(state, workdir, strategy, steps_per_epoch)
            train_state.check_epochs_ahead(state, config.train.epochs)
            if previous is not None and (
                change := optimizer_lib.describe_new_length(
                    previous.train, config.train, steps_per_epoch, int(state.optimizer.iterations.numpy())
                )
            ):
                log.info(change)
            if chief:
                # The resolved policy is recorded, so a resume trains on with it.
                recorded = config.replace(train=dataclasses.replace(config.train, precision=policy))
                run_config.save(recorded, workdir / run_config.RUN_CONFIG)
            history = workdir_lib.load_history(workdir, done)
            training_left = int(state.epoch.numpy()) < config.train.epochs
            position = int(state.epoch.numpy()), int(state.epoch_step.numpy())
            if training_left and (note := loop.topology_change(state.restored_topology, history, strategy, *position)):
                log.info(note)
            history = loop.fit(config, strategy, state, dataset, history, out_dir, progress and chief, stop=stop)
            # The final model holds the moving average, if the run keeps one (the best weights already do).
            optimizer_lib.keep_averaged_weights(state.optimizer, state.model.trainable_variables)
            if config.train.early_stopping_patience:
                state.best_manager.checkpoint.restore(tf.train.latest_checkpoint(workdir / "best")).expect_partial()
            metrics = final_metrics(
                config, strategy, state, dataset, history, policy, data_fingerprint, started, stop, progress and chief
            )
            with workdir_lib.writing("the final weights", out_dir / final_model.FINAL_DIR):
                final_model.save_final_model(state.model, out_dir)
            # Every worker logs this; equal fingerprints prove the replicas agree.
            log.info("final weights fingerprint %s", final_model.fingerprint(state.model))
            if chief:
                workdir_lib.write_json(workdir / "metrics.json", metrics)
                # A stop requested by now skips the report and the export (a rerun writes them).
                stopping = stop is not None and stop.received is not None
                if make_report and not stopping:
                    with workdir_lib.writing("the report", workdir / "report"):
                        report.build_report(workdir)
                if export and not stopping:
                    metrics["export"] = str(_export_once(workdir, export_base, metrics))
                    workdir_lib.write_json(workdir / "metrics.json", metrics)
            # Every worker waits here until the chief has written everything: a
            # worker that exits first reads to the chief's coordination service
            # as a crashed peer. A stop requested on any worker ends them all alike.
            if stop is not None:
                stop.check(strategy, "training and evaluation")
            elif strategies.num_workers(strategy) > 1:
                strategies.all_workers_sum(strategy, 0.0)
            return metrics
        finally:
            workdir_lib.cleanup_write_dir(out_dir, workdir)
