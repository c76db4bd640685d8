"""Faults that really happen: signals to real processes, a second run, corrupt files, a full disk.

The table of these faults and their outcomes is in WORKSPACE.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import run, smoke_train_command, start, wait_for

from pipeline.runs import lock as workdir_lock
from pipeline.runs import workdir as workdir_lib

# Long enough epochs (about 180 steps of the smoke model) to signal a process mid-epoch.
LONG = ["--max_train_examples=11520", "--validation_size=64", "--noexport", "--noreport"]


def _train(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return smoke_train_command(workdir, data_dir, *LONG, *extra)


def _epochs_done(workdir: Path) -> int:
    try:
        return len(json.loads((workdir / "history.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _fingerprint(output: str) -> str:
    return output.split("final weights fingerprint ", 1)[1].split()[0]


def _without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "elapsed_seconds")} for h in history]


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_the_rerun_ends_exactly_as_uninterrupted(
    long_data_dir, tmp_path, machine_precision
):
    fixed = f"--precision={machine_precision}"
    reference = run(_train(tmp_path / "reference", long_data_dir, "--epochs=2", fixed), timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    workdir = tmp_path / "run"
    child = start(_train(workdir, long_data_dir, "--epochs=2", fixed))
    wait_for(lambda: _epochs_done(workdir) >= 1)
    time.sleep(0.3)  # Into epoch 2.
    signalled = time.time()
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr[-3000:]
    assert time.time() - signalled < 10
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM at optimizer step"), last
    assert "epoch 2 in progress" in last and "rerun the same command to resume" in last
    assert "Traceback" not in stderr
    # The rerun may change steps_per_execution: the position is kept in optimizer steps.
    resumed = run(_train(workdir, long_data_dir, "--epochs=2", "--steps_per_execution=7", fixed), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 2 in progress" in resumed.stderr and "Epoch 1/2" not in resumed.stdout
    assert _fingerprint(resumed.stderr) == _fingerprint(reference.stderr)
    history, expected = (json.loads((d / "history.json").read_text()) for d in (workdir, tmp_path / "reference"))
    assert _without_times(history) == _without_times(expected)


@pytest.mark.slow
def test_ctrl_c_once_checkpoints_and_twice_exits_at_once(long_data_dir, tmp_path):
    once = tmp_path / "once"
    child = start(_train(once, long_data_dir, "--epochs=20"))
    wait_for(lambda: (once / "checkpoints" / "checkpoint").exists())
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130 and "stopped by SIGINT" in stderr.strip().splitlines()[-1], stderr[-2000:]
    # A whole epoch per compiled call: the second Ctrl-C arrives while the first waits for the call.
    twice = tmp_path / "twice"
    child = start(_train(twice, long_data_dir, "--epochs=20", "--steps_per_execution=180"))
    wait_for(lambda: (twice / "checkpoints" / "checkpoint").exists())
    # Past epoch 1's own stop check, which follows its checkpoint: into epoch 2's call, which takes seconds.
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    time.sleep(0.05)
    signalled = time.time()
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130 and "exiting at once" in stderr, stderr[-2000:]
    assert time.time() - signalled < 2 and "stopped by SIGINT" not in stderr


@pytest.mark.slow
def test_the_stop_message_starts_a_line_of_its_own_beside_the_progress_bar(long_data_dir, tmp_path):
    child = start(_train(tmp_path, long_data_dir, "--epochs=20"), merge_stderr=True)
    wait_for(lambda: (tmp_path / "checkpoints" / "checkpoint").exists(), process=child)
    time.sleep(0.5)  # Into the next epoch, whose progress bar is drawn on one line.
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=60)
    assert child.returncode == 143, output[-2000:]
    assert re.search(r"(^|\n)SIGTERM: stopping at the next step boundary", output), output[-2000:]


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(long_data_dir, tmp_path):
    first = start(_train(tmp_path, long_data_dir, "--epochs=20"))
    wait_for(lambda: (tmp_path / "checkpoints").exists())
    second = run(_train(tmp_path, long_data_dir, "--epochs=20"), timeout=120)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert "is in use by" in line and f"pid {first.pid}" in line and socket.gethostname() in line, line
    first.kill()
    first.wait()
    assert (tmp_path / workdir_lock.LOCK_FILE).exists()  # kill -9 leaves its lock behind.
    third = run(_train(tmp_path, long_data_dir, "--epochs=20"), timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "taking over the lock" in third.stderr and f"pid {first.pid} has exited" in third.stderr
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def _tiny_run(data_dir: Path, workdir: Path, epochs: int):
    from helpers import tiny_config

    from pipeline.training.driver import train_and_evaluate

    config = tiny_config(data_dir, epochs=epochs)
    return train_and_evaluate(config, workdir, tf.distribute.get_strategy(), progress=False, make_report=False)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tiny_data_dir, tmp_path, caplog):
    _tiny_run(tiny_data_dir, tmp_path, epochs=2)
    newest = tf.train.latest_checkpoint(tmp_path / "checkpoints")
    (data_file,) = Path(newest).parent.glob(f"{Path(newest).name}.data-*")
    _truncate(data_file)
    with caplog.at_level("WARNING"):
        metrics = _tiny_run(tiny_data_dir, tmp_path, epochs=3)
    assert metrics["epochs_completed"] == 3
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert f"{Path(newest).name} is unreadable" in warnings and "9 optimizer steps (1.0 epochs)" in warnings
    assert (tmp_path / "checkpoints" / "corrupt" / data_file.name).exists()  # Moved aside, not deleted.
    assert [h["epoch"] for h in json.loads((tmp_path / "history.json").read_text())] == [1, 2, 3]


def test_no_usable_checkpoint_is_a_clear_error(tiny_data_dir, tmp_path):
    _tiny_run(tiny_data_dir, tmp_path, epochs=2)
    for data_file in (tmp_path / "checkpoints").glob("ckpt-*.data-*"):
        _truncate(data_file)
    with pytest.raises(workdir_lib.WorkdirError, match="no usable checkpoint .* train from scratch"):
        _tiny_run(tiny_data_dir, tmp_path, epochs=3)
    assert _tiny_run(tiny_data_dir, tmp_path, epochs=1)["epochs_completed"] == 1  # As the error says.


@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs where the test may mount one (root on Linux); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here; test_full_disk_is_reported_with_an_injected_error covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_line_keeps_earlier_checkpoints_and_the_rerun_cleans_up(tiny_data_dir, small_disk, tmp_path):
    # Room for the first checkpoint and the best weights, not for a second checkpoint.
    _tiny_run(tiny_data_dir, tmp_path / "measure", epochs=1)
    checkpoint_bytes = sum(f.stat().st_size for f in (tmp_path / "measure" / "checkpoints").glob("ckpt-*"))
    best_bytes = sum(f.stat().st_size for f in (tmp_path / "measure" / "best").glob("ckpt-*"))
    ballast = small_disk / "ballast"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    ballast.write_bytes(b"\0" * int(free - best_bytes - 1.6 * checkpoint_bytes))
    workdir = small_disk / "run"
    command = [
        sys.executable,
        "-m",
        "launch.train",
        f"--workdir={workdir}",
        "--preset=smoke",
        f"--data_dir={tiny_data_dir}",
        "--validation_size=64",
        "--epochs=4",
        "--noreport",
        "--noexport",
    ]
    done = run(command, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not write") and str(workdir) in line and "No space left" in line, line
    latest = tf.train.latest_checkpoint(workdir / "checkpoints")
    assert latest, "the checkpoint saved before the disk filled must survive"
    tf.train.load_checkpoint(latest)  # Intact: it reads.
    ballast.unlink()  # Space again: the rerun resumes and removes what the failed write left.
    done = run(command, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    assert not list(workdir.rglob("*_temp*")) and not list(workdir.glob(".*.tmp"))


def test_full_disk_is_reported_with_an_injected_error(tiny_data_dir, tmp_path, monkeypatch):
    from pipeline.training import state as train_state

    saves = []

    def full(self, checkpoint_number=None, **kwargs):
        if Path(self.directory).name == train_state.CHECKPOINTS:
            saves.append(checkpoint_number)
        if len(saves) > 1:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return original(self, checkpoint_number=checkpoint_number, **kwargs)

    original = tf.train.CheckpointManager.save
    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    with pytest.raises(workdir_lib.WorkdirError, match="could not write a checkpoint to .*No space left on device"):
        _tiny_run(tiny_data_dir, tmp_path, epochs=3)
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith(f"ckpt-{saves[0]}")


@pytest.mark.slow
def test_concurrent_exports_publish_distinct_whole_versions(tiny_data_dir, tmp_path):
    _tiny_run(tiny_data_dir, tmp_path / "run", epochs=1)
    base = tmp_path / "models"
    command = [sys.executable, "-m", "launch.export", f"--workdir={tmp_path / 'run'}", f"--export_base={base}"]
    exports = [start(command) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in exports]
    assert [p.returncode for p in exports] == [0, 0], outputs
    published = sorted(Path(out.strip().splitlines()[-1]).name for out, _ in outputs)
    assert published == ["1", "2"]
    for version in published:
        assert (base / version / "saved_model.pb").exists() and (base / version / "assets.extra").is_dir()
    assert not list(base.glob(".*incomplete*"))


@pytest.mark.slow
def test_a_run_resumes_with_the_precision_it_recorded_and_an_unfitting_checkpoint_is_an_error(tiny_data_dir, tmp_path):
    def train(*extra):
        return run(smoke_train_command(tmp_path, tiny_data_dir, "--noexport", "--noreport", *extra), timeout=300)

    first = train("--precision=mixed_float16", "--epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["precision"] == "mixed_float16"
    # `auto` picks another policy on this CPU; the run goes on as it trained.
    resumed = train("--precision=auto", "--epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing with mixed_float16, the precision this run trained with" in resumed.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == "mixed_float16"
    # A run recorded with another policy (as `auto` resolved on other hardware) cannot use these checkpoints.
    config["train"]["precision"] = "float32"
    (tmp_path / "config.json").write_text(json.dumps(config))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    refused = train("--precision=auto", "--epochs=3")
    assert refused.returncode == 1
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert "is intact but does not fit this run's model and optimizer (precision float32" in line
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == kept  # Nothing quarantined.
