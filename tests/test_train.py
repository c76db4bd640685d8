"""Training end to end on tiny data: metrics, the moving average, evaluation, bad input, presets, determinism."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
import weakref

import numpy as np
import pytest
import tensorflow as tf
from conftest import run, smoke_train_command, subprocess_env
from helpers import tiny_config

from pipeline import config as config_lib
from pipeline import config_files, presets
from pipeline.data import input_pipeline as ip
from pipeline.data import sources as data_lib
from pipeline.model import network as models
from pipeline.training import loop, steps
from pipeline.training.driver import train_and_evaluate

METRIC_KEYS = {
    "train_accuracy",
    "train_loss",
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "test_loss",
    "test_accuracy_single_view",  # The smoke preset averages views at inference.
    "test_loss_single_view",
    "epochs_completed",
    "wall_seconds",
}


def test_one_epoch_writes_metrics_config_history_and_checkpoint(tiny_data_dir, tmp_path):
    metrics = train_and_evaluate(tiny_config(tiny_data_dir), tmp_path, tf.distribute.get_strategy(), progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert METRIC_KEYS <= set(saved) and saved == json.loads(json.dumps(metrics))
    assert saved["epochs_completed"] == 1 and saved["examples"] == {"train": 576, "val": 64, "test": 160}
    assert 0 <= saved["test_accuracy"] <= 1 and saved["test_loss"] > 0
    # The config as given, with the precision `auto` resolved to (a resume continues with it).
    assert config_files.load_file(tmp_path / "config.json") == tiny_config(tiny_data_dir, precision=saved["precision"])
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1
    # Checkpoints are numbered by optimizer step: one epoch of 576 examples at batch 64.
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-9")
    assert list((tmp_path / "tensorboard" / "train").iterdir())


def test_learns_and_resumes_to_more_epochs(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir, epochs=2, learning_rate=1e-2)
    first = train_and_evaluate(config, tmp_path, tf.distribute.get_strategy(), progress=False)
    assert first["val_accuracy"] > 0.5  # The synthetic classes are easy to separate.
    longer = dataclasses.replace(config.train, epochs=3)
    resumed = train_and_evaluate(config.replace(train=longer), tmp_path, tf.distribute.get_strategy(), False)
    history = json.loads((tmp_path / "history.json").read_text())
    assert resumed["epochs_completed"] == 3 and [h["epoch"] for h in history] == [1, 2, 3]


def test_validation_the_best_and_the_final_weights_are_the_moving_average(tiny_data_dir, tmp_path):
    strategy = tf.distribute.get_strategy()
    runs = {}
    for ema in (None, 0.9):
        for patience in (None, 5):  # The last weights, or the best epoch's.
            # In float32: the final metrics run the served float32 network, so under a mixed policy they would
            # differ from the epoch's validation by the arithmetic as well as by any difference in weights.
            config = tiny_config(
                tiny_data_dir, epochs=2, ema_momentum=ema, early_stopping_patience=patience, precision="float32"
            )
            config = config.replace(model=dataclasses.replace(config.model, test_time_augmentation="none"))
            workdir = tmp_path / f"{ema}_{patience}"
            runs[ema] = metrics = train_and_evaluate(config, workdir, strategy, progress=False, export=False)
            chosen = json.loads((workdir / "history.json").read_text())[metrics["best_epoch"] - 1 if patience else -1]
            # The final evaluation sees the weights that epoch's validation saw.
            assert np.isclose(metrics["val_loss"], chosen["val_loss"], rtol=1e-5), (ema, patience)
    assert runs[0.9]["val_loss"] != runs[None]["val_loss"]


def test_workdir_of_another_config_is_refused(tiny_data_dir, tmp_path):
    train_and_evaluate(tiny_config(tiny_data_dir), tmp_path, tf.distribute.get_strategy(), progress=False)
    other = tiny_config(tiny_data_dir, learning_rate=0.5)
    with pytest.raises(Exception, match="different config .*learning_rate.*pass --config=.*config.json"):
        train_and_evaluate(other, tmp_path, tf.distribute.get_strategy(), progress=False)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs=-1"], "epochs"),
        (["--global_batch_size=0"], "global_batch_size"),
        (["--preset=nope"], "unknown preset 'nope'"),
        (["--dropout=lots"], "--dropout='lots'"),
        (["--global_batch_size=4096"], "smaller --global_batch_size"),
        (
            ["--strategy=mirrored", "--logical_cpus=2", "--global_batch_size=65"],
            "global batch size 65 is not divisible by the 2 replicas",
        ),
    ],
)
def test_bad_flags_exit_nonzero_with_a_message(tiny_data_dir, tmp_path, flags, message):
    done = run(smoke_train_command(tmp_path / "w", tiny_data_dir, *flags), timeout=120)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_unwritable_workdir_and_missing_data(tiny_data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        smoke_train_command(blocker / "w", tiny_data_dir),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "not writable" in done.stderr and "Traceback" not in done.stderr
    done = run(smoke_train_command(blocker, tiny_data_dir), timeout=120)
    expected = f"error: workdir {blocker} is a file, not a directory; choose another --workdir"
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == expected
    done = run(smoke_train_command(tmp_path / "w", tmp_path / "no_data"), timeout=120)
    assert done.returncode != 0 and "does not exist" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["fast", "default", "best"])
def test_each_preset_trains_a_few_steps_and_exports(tiny_data_dir, tmp_path, name):
    base = presets.preset(name)
    config = base.replace(
        data=config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64, max_train_examples=256),
        train=dataclasses.replace(base.train, epochs=1, global_batch_size=64, steps_per_execution=2),
    )
    metrics = train_and_evaluate(config, tmp_path, tf.distribute.get_strategy(), progress=False, make_report=False)
    assert metrics["epochs_completed"] == 1 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()


def test_mixed_bfloat16_trains_and_exports(tiny_data_dir, tmp_path):
    # What `precision=auto` picks on CPUs with AVX512_BF16 or AMX and on recent
    # GPUs. This CPU emulates bfloat16 (slowly), which is enough to check that
    # the fused batch norm, the loss and the export work in it.
    config = tiny_config(tiny_data_dir, epochs=2, learning_rate=3e-3, precision="mixed_bfloat16")
    metrics = train_and_evaluate(config, tmp_path, tf.distribute.get_strategy(), progress=False, make_report=False)
    assert metrics["precision"] == "mixed_bfloat16"
    assert metrics["val_accuracy"] > 0.5 and np.isfinite(metrics["test_loss"])
    served = tf.saved_model.load(metrics["export"]).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8)
    probabilities = served(images=tf.constant(images))["probabilities"]
    assert probabilities.dtype == tf.float32
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-3)
    # The metrics called "as served" are the export's own, computed in float32,
    # not those of the bfloat16 arithmetic the network trained in.
    test = data_lib.load(config.data).test
    served_test = served(images=tf.constant(test.images))["probabilities"].numpy().astype(np.float64)
    assert metrics["test_accuracy"] == np.mean(served_test.argmax(axis=1) == test.labels)
    served_loss = -np.mean(np.log(served_test[np.arange(len(test)), test.labels.astype(int)]))
    np.testing.assert_allclose(metrics["test_loss"], served_loss, rtol=1e-6)


def test_an_epochs_iterator_is_released_off_the_training_thread():
    # Destroying a tf.data iterator can wait seconds for tf.data's autotuning
    # thread; `release_in_background` drops it on another thread.
    released = threading.Event()
    where = []

    class Iterator:
        def __del__(self):
            where.append(threading.current_thread().name)
            released.set()

    holder = [Iterator()]
    loop.release_in_background(holder)
    assert released.wait(10) and where == ["release-iterator"]
    dataset_iterator = [iter(tf.data.Dataset.range(3).prefetch(2))]
    reference = weakref.ref(dataset_iterator[0])
    loop.release_in_background(dataset_iterator)
    deadline = time.time() + 10
    while reference() is not None and time.time() < deadline:
        time.sleep(0.01)
    assert reference() is None


def test_an_evaluation_shown_in_steps_sums_as_one_call(tiny_data_dir):
    config = tiny_config(tiny_data_dir)
    strategy = tf.distribute.get_strategy()
    dataset = data_lib.load(config.data)
    eval_steps = steps.make_eval_steps(strategy, models.build_model(config.model))
    _, eval_fn = ip.distributed_datasets(config, strategy, dataset)
    fractions = []
    whole = loop.evaluate(strategy, eval_steps, eval_fn, dataset.train)
    shown = loop.evaluate(strategy, eval_steps, eval_fn, dataset.train, calls=4, on_progress=fractions.append)
    assert shown == whole
    assert loop.evaluate(strategy, eval_steps, eval_fn, dataset.train, calls=100) == whole
    assert fractions == pytest.approx([1 / 3, 2 / 3, 1])  # 9 steps in 3 calls.


@pytest.mark.slow
def test_deterministic_runs_are_recorded_and_repeat_exactly(tiny_data_dir, tmp_path, machine_precision):
    histories = []
    # One precision for both (see `machine_precision`): the runs compared differ in nothing else.
    flags = ("--deterministic", "--noexport", "--noreport", f"--precision={machine_precision}")
    for name in ("a", "b"):
        command = smoke_train_command(tmp_path / name, tiny_data_dir, *flags)
        done = run(command, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((tmp_path / name / "config.json").read_text())["train"]["deterministic"] is True
        history = json.loads((tmp_path / name / "history.json").read_text())
        histories.append([{k: v for k, v in r.items() if "seconds" not in k} for r in history])
    assert histories[0] == histories[1]
