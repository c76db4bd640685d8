"""Resuming after kill -9, a stop mid-epoch, a periodic checkpoint or a stop in the final evaluation."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time

import pytest
import tensorflow as tf
from conftest import run, smoke_train_command, subprocess_env
from helpers import tiny_config

from pipeline import config as config_lib
from pipeline import presets
from pipeline.runs import workdir as workdir_lib
from pipeline.training import loop


def _latest_step(checkpoint_dir):
    """The optimizer step of the newest recorded checkpoint (checkpoints are numbered by step)."""
    latest = tf.train.latest_checkpoint(checkpoint_dir) if checkpoint_dir.exists() else None
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_at_next_epoch(tiny_data_dir, tmp_path):
    command = smoke_train_command(tmp_path, tiny_data_dir, "--epochs=40", "--max_train_examples=256")
    steps_per_epoch = 256 // 64
    child = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Wait for the checkpoint state file, not for the checkpoint's index: the index is written before
    # the manager records the checkpoint, so a kill in between leaves the previous one as the latest.
    while time.time() < deadline and _latest_step(tmp_path / "checkpoints") < 2 * steps_per_epoch:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    step = _latest_step(tmp_path / "checkpoints")
    killed_at = step // steps_per_epoch
    assert 2 <= killed_at < 40, "the run should have been killed mid-way"
    done = run(command, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr and f"ckpt-{step}" in done.stderr
    assert f"Epoch {killed_at + 1}/40" in done.stdout and "Epoch 1/40" not in done.stdout
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 41))
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_completed"] == 40


def _fit_to_fingerprint(config, workdir, stop_after_epoch=None, stop=None):
    """Trains `config` in `workdir` (resuming), optionally interrupted after an epoch or by `stop`."""
    from pipeline.data import input_pipeline as ip
    from pipeline.data import sources as data_lib
    from pipeline.runs import final_model
    from pipeline.training import optimizer as optimizer_lib
    from pipeline.training import preemption, restore
    from pipeline.training import state as train_state

    class Interrupted(Exception):
        pass

    def interrupt(record):
        if record["epoch"] == stop_after_epoch:
            raise Interrupted

    strategy = tf.distribute.get_strategy()
    dataset = data_lib.load(config.data)
    steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
    state = train_state.build_state(config, strategy, "float32", steps_per_epoch, workdir, dataset.train.images)
    restore.restore(state, workdir, strategy, steps_per_epoch)
    history = workdir_lib.load_history(workdir, int(state.epoch.numpy()))
    try:
        loop.fit(config, strategy, state, dataset, history, workdir, False, on_epoch_end=interrupt, stop=stop)
    except (Interrupted, preemption.TrainingStopped):
        return None
    optimizer_lib.keep_averaged_weights(state.optimizer, state.model.trainable_variables)  # As the driver does.
    return final_model.fingerprint(state.model)


def with_fast_techniques(config: config_lib.Config) -> config_lib.Config:
    """`config` trained with every technique of the `fast` preset, and a moving average of the weights.

    Each technique has state a resume must restore: momentum, flips by
    epoch, the average kept in the optimiser.
    """
    fast = presets.preset("fast")
    techniques = ("stem_init", "conv_init", "batch_norm_scale")
    return config.replace(
        model=dataclasses.replace(config.model, **{k: getattr(fast.model, k) for k in techniques}),
        augment=dataclasses.replace(config.augment, flip_mode=fast.augment.flip_mode),
        train=dataclasses.replace(
            config.train,
            optimizer=fast.train.optimizer,
            momentum=fast.train.momentum,
            learning_rate=0.05,
            ema_momentum=fast.train.ema_momentum or 0.9,
        ),
    )


@pytest.mark.parametrize("techniques", [False, True], ids=["smoke", "smoke_with_fast_techniques"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny_data_dir, tmp_path, techniques):
    # Dropout is on in the smoke preset: the resumed run must continue its
    # random masks (checkpointed seed-generator state), not replay them.
    config = tiny_config(tiny_data_dir, epochs=3)
    config = with_fast_techniques(config) if techniques else config
    assert config.model.dropout
    uninterrupted = _fit_to_fingerprint(config, tmp_path / "straight")
    assert _fit_to_fingerprint(config, tmp_path / "resumed", stop_after_epoch=1) is None
    assert _fit_to_fingerprint(config, tmp_path / "resumed") == uninterrupted


class _StopAfterCalls:
    """A stop request that arrives after `calls` compiled calls, as a signal would."""

    def __init__(self, calls: int):
        self.calls, self.signum = calls, int(signal.SIGTERM)

    def agreed(self, strategy) -> bool:
        self.calls -= 1
        return self.calls < 0


def with_mixed_targets(config: config_lib.Config) -> config_lib.Config:
    """`config` trained with random erasing and CutMix (float targets)."""
    return config.replace(augment=dataclasses.replace(config.augment, erase_probability=0.5, cutmix_probability=0.5))


def with_lookahead(config: config_lib.Config) -> config_lib.Config:
    """`config` with `fast`'s techniques, the weights restarting from their average every 3 steps."""
    config = with_fast_techniques(config)
    return config.replace(train=dataclasses.replace(config.train, ema_overwrite_steps=3))


@pytest.mark.parametrize(
    "techniques", ["none", "fast", "cutmix", "lookahead"], ids=lambda t: f"smoke_with_{t}_techniques"
)
def test_stopped_mid_epoch_and_resumed_equals_an_uninterrupted_run(tiny_data_dir, tmp_path, techniques):
    # 9 steps per epoch in calls of 2; the loop asks after each call but an epoch's last (the epoch's end
    # asks instead), so 5 asks per epoch: the stop lands after step 2 of epoch 2.
    config = tiny_config(tiny_data_dir, epochs=3, steps_per_execution=2, checkpoint_every_steps=4)
    config = {
        "none": config,
        "fast": with_fast_techniques(config),
        "cutmix": with_mixed_targets(config),
        "lookahead": with_lookahead(config),  # The stop lands between two restarts (step 11).
    }[techniques]
    uninterrupted = _fit_to_fingerprint(config, tmp_path / "straight")
    assert _fit_to_fingerprint(config, tmp_path / "resumed", stop=_StopAfterCalls(5)) is None
    assert tf.train.latest_checkpoint(tmp_path / "resumed" / "checkpoints").endswith("ckpt-11")
    # The rerun takes other calls (3 steps each): the position is kept in optimizer steps.
    rerun = dataclasses.replace(config.train, steps_per_execution=3)
    assert _fit_to_fingerprint(config.replace(train=rerun), tmp_path / "resumed") == uninterrupted
    histories = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("straight", "resumed")]
    for history in histories:
        for record in history:
            del record["seconds"], record["elapsed_seconds"]
    assert histories[0] == histories[1] and len(histories[0]) == 3


class _Killed(Exception):
    pass


class _KillAfterCalls(_StopAfterCalls):
    """Ends the run abruptly after `calls` compiled calls, without a stop checkpoint (as kill -9 would)."""

    def agreed(self, strategy) -> bool:
        if super().agreed(strategy):
            raise _Killed
        return False


def test_killed_after_a_periodic_checkpoint_resumes_from_it_exactly(tiny_data_dir, tmp_path):
    # Calls of 1 step, a checkpoint every 4: killed after step 6 of epoch 2, the rerun starts from its step 4.
    config = tiny_config(tiny_data_dir, epochs=2, steps_per_execution=1, checkpoint_every_steps=4)
    uninterrupted = _fit_to_fingerprint(config, tmp_path / "straight")
    with pytest.raises(_Killed):
        _fit_to_fingerprint(config, tmp_path / "killed", stop=_KillAfterCalls(9 + 6))
    assert tf.train.latest_checkpoint(tmp_path / "killed" / "checkpoints").endswith(f"ckpt-{9 + 4}")
    assert _fit_to_fingerprint(config, tmp_path / "killed") == uninterrupted


def test_a_stop_during_the_final_evaluation_ends_it_within_one_call_and_the_rerun_finishes(
    tiny_data_dir, tmp_path, monkeypatch
):
    from pipeline.training import preemption
    from pipeline.training.driver import train_and_evaluate

    config = tiny_config(tiny_data_dir)
    stop = preemption.StopSignal()  # Not installed: the test raises its flag.
    final_calls = []
    per_epoch_evaluate = loop.evaluate

    def evaluate(strategy, eval_steps_fn, eval_fn, split, calls=1, on_progress=None):
        def signalled_during(*args):
            final_calls.append(args[1])
            stop.received = signal.SIGTERM
            return eval_steps_fn(*args)

        # The final evaluation runs in parts (`calls` > 1); a request arrives during its first call.
        inner = signalled_during if calls > 1 else eval_steps_fn
        return per_epoch_evaluate(strategy, inner, eval_fn, split, calls, on_progress)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    strategy = tf.distribute.get_strategy()
    with pytest.raises(preemption.TrainingStopped, match="stopped by SIGTERM after training") as stopped:
        train_and_evaluate(config, tmp_path, strategy, progress=False, make_report=False, export=False, stop=stop)
    assert stopped.value.exit_code == 143
    assert len(final_calls) == 1 and int(final_calls[0]) < 9  # One call of the train split's 9 steps.
    assert not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()
    metrics = train_and_evaluate(config, tmp_path, strategy, progress=False, make_report=False, export=False)
    assert metrics["epochs_completed"] == 1 and (tmp_path / "metrics.json").exists()


def test_fewer_epochs_than_trained_are_refused_and_more_extend_the_schedule(tiny_data_dir, tmp_path, caplog):
    from pipeline.training.driver import train_and_evaluate

    strategy = tf.distribute.get_strategy()
    quiet = dict(progress=False, make_report=False, export=False)
    train_and_evaluate(tiny_config(tiny_data_dir, epochs=2), tmp_path, strategy, **quiet)
    recorded = (tmp_path / "config.json").read_text()
    # Training stops at --epochs, so a shorter run would keep weights trained longer than its config says.
    with pytest.raises(
        workdir_lib.WorkdirError, match=r"--epochs=1 ends before .*\(epoch 2 completed\); pass --epochs=2"
    ):
        train_and_evaluate(tiny_config(tiny_data_dir, epochs=1), tmp_path, strategy, **quiet)
    assert (tmp_path / "config.json").read_text() == recorded
    with caplog.at_level("INFO", logger="pipeline.training.driver"):
        metrics = train_and_evaluate(tiny_config(tiny_data_dir, epochs=3), tmp_path, strategy, **quiet)
    assert metrics["epochs_completed"] == 3
    assert "train.epochs 2 -> 3: the schedule now spans 3 epochs; the learning rate at optimizer step 18" in caplog.text
