"""The project's own `launch/cluster/slurm.sbatch` and `tune.sbatch`, submitted unchanged to a real one-node Slurm.

The cluster (munged, slurmctld, slurmd from Debian's `slurm-wlm` and `munge`)
is started by `local_slurm` with a config written here. A training job runs 2
tasks on 1 node, which form one two-worker MultiWorkerMirroredStrategy job; a
search job's 2 tasks are its oracle chief and one tuner.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import local_slurm
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow
SCRIPT = REPO / "launch" / "cluster" / "slurm.sbatch"
SEARCH_SCRIPT = REPO / "launch" / "cluster" / "tune.sbatch"
# Epochs of 171 steps, long enough to signal one mid-way.
TRAIN_ARGS = ("--preset=smoke", "--epochs=2", "--max_train_examples=11000", "--seed=3")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = local_slurm.missing()
    if why:
        pytest.skip(why)
    with local_slurm.LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2) as cluster:
        yield cluster


def _submit(slurm, workdir: Path, data_dir: Path, log: Path, precision: str, script=SCRIPT, args=TRAIN_ARGS) -> int:
    # The job's tasks run the installed fmnist-train (or fmnist-tune), as a user's job does.
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "fmnist-train").exists():
        pytest.skip(f"fmnist-train is not installed beside {sys.executable} (pip install -e .)")
    env = {"WORKDIR": str(workdir), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    options = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", f"--output={log}"]
    # The jobs compared train in one precision (`auto` measures, and may measure differently).
    args = (*args, f"--data_dir={data_dir}", f"--precision={precision}")
    return slurm.submit(options, script, *args, env=env, cwd=REPO)


def _fingerprints(text: str) -> list[str]:
    return re.findall(r"final weights fingerprint (\w+)", text)


@pytest.fixture(scope="module")
def uninterrupted(slurm, long_data_dir, tmp_path_factory, machine_precision):
    root = tmp_path_factory.mktemp("slurm_run")
    job = _submit(slurm, root / "run", long_data_dir, root / "job.log", machine_precision)
    state = slurm.wait(job, timeout=600)
    return state, root / "run", (root / "job.log").read_text(errors="replace")


def _signal_once_logged(slurm, job: int, log: Path, marker: str) -> tuple[str, str]:
    """Sends the job SIGTERM a second after `marker` appears in its log; returns its final state and its log."""
    deadline = time.time() + 300
    while marker not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.time() < deadline and slurm.state(job) in ("PENDING", "RUNNING", "CONFIGURING"), (
            log.read_text(errors="replace") if log.exists() else slurm.state(job)
        )
        time.sleep(0.5)
    time.sleep(1.0)
    slurm.run("scancel", "--signal=TERM", str(job))  # What --signal=TERM@120 sends before the time limit.
    state = slurm.wait(job, timeout=600)
    return state, log.read_text(errors="replace")


def test_slurm_job_trains_two_tasks_as_one_multi_worker_job(uninterrupted):
    state, workdir, log = uninterrupted
    assert state == "COMPLETED", log[-3000:]
    assert "cluster from Slurm: task 0 of 2, CPU" in log and "cluster from Slurm: task 1 of 2, CPU" in log
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["replicas"] == 2 and metrics["strategy"] == "multi_worker"
    assert metrics["epochs_completed"] == 2
    assert (workdir / "export" / "1" / "saved_model.pb").exists()
    prints = _fingerprints(log)
    assert len(prints) == 2 and prints[0] == prints[1], "both tasks end with the same weights"
    # A clean end: no worker reports an error or a crashed peer.
    assert not re.search(r"^(\d+: )?E\d{4} |unhealthy|crashed|Traceback|error:", log, re.M), log[-3000:]
    # Each task's lines carry its task number, so the two tasks' reports of an epoch tell apart.
    assert re.search(r"^0: epoch 2: ", log, re.M) and re.search(r"^1: epoch 2: ", log, re.M), log[-3000:]
    # A job's log is a file: progress in plain lines, not a bar redrawn with escapes and backspaces.
    assert not re.search("[\x1b\b\r]", log), repr(log[:1000])


def test_a_slurm_job_of_one_task_trains_on_its_own_devices(slurm, tiny_data_dir, tmp_path, machine_precision):
    log = tmp_path / "job.log"
    bin_dir = Path(sys.executable).parent
    env = {"WORKDIR": str(tmp_path / "run"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    options = ["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2", "--gpus-per-node=0", f"--output={log}"]
    args = ("--preset=smoke", f"--data_dir={tiny_data_dir}", f"--precision={machine_precision}")
    job = slurm.submit(options, SCRIPT, *args, env=env, cwd=REPO)
    state = slurm.wait(job, timeout=600)
    text = log.read_text(errors="replace")
    assert state == "COMPLETED", text[-3000:] + slurm.diagnosis(job)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["workers"] == 1 and metrics["strategy"] == "default" and metrics["epochs_completed"] == 1


def test_a_slurm_job_array_trains_one_seed_per_array_task_each_in_its_own_workdir(slurm, tiny_data_dir, tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {"WORKDIR": str(tmp_path / "run"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    options = ["--array=0-1", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2", "--gpus-per-node=0"]
    options.append(f"--output={tmp_path / 'job-%a.log'}")
    args = ("--preset=smoke", f"--data_dir={tiny_data_dir}", "--precision=float32")
    job = slurm.submit(options, SCRIPT, *args, env=env, cwd=REPO)
    for index in (0, 1):
        state = slurm.wait(f"{job}_{index}", timeout=600)
        text = (tmp_path / f"job-{index}.log").read_text(errors="replace")
        assert state == "COMPLETED", text[-3000:]
        config = json.loads((tmp_path / f"run-{index}" / "config.json").read_text())
        assert config["train"]["seed"] == index and (tmp_path / f"run-{index}" / "metrics.json").exists()


def test_fmnist_train_in_the_batch_shell_of_a_job_of_several_tasks_trains_alone(slurm, tiny_data_dir, tmp_path):
    # Without srun there is one process; the job's task count must not make it wait for peers that never start.
    log, bin_dir = tmp_path / "job.log", Path(sys.executable).parent
    train = f"fmnist-train --workdir={tmp_path / 'run'} --preset=smoke --data_dir={tiny_data_dir} --precision=float32"
    options = ["--ntasks=2", "--cpus-per-task=1", f"--output={log}", "--time=5", f"--wrap={train}"]
    job = slurm.submit(options, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=REPO)
    state = slurm.wait(job, timeout=300)
    text = log.read_text(errors="replace")
    assert state == "COMPLETED" and "cluster from Slurm" not in text, text[-3000:] + slurm.diagnosis(job)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["workers"] == 1


def test_slurm_preemption_requeues_and_resumes_to_the_same_weights(
    slurm, uninterrupted, long_data_dir, tmp_path, machine_precision
):
    _, reference_dir, reference_log = uninterrupted
    log = tmp_path / "job.log"
    job = _submit(slurm, tmp_path / "run", long_data_dir, log, machine_precision)
    # Mid-epoch: once the second epoch's progress bar has started.
    state, text = _signal_once_logged(slurm, job, log, "Epoch 2/2")
    assert state == "COMPLETED", text[-3000:] + slurm.diagnosis(job)
    assert re.search(r"stopped by SIGTERM at optimizer step \d+ \(epoch 2 in progress", text), text[-3000:]
    assert "requeueing job" in text and "(restart 1)" in text
    assert re.search(r"resumed from .*ckpt-\d+ \(epoch 2 in progress", text), text[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    reference = json.loads((reference_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == reference["test_accuracy"]
    assert metrics["test_loss"] == reference["test_loss"]
    assert _fingerprints(text)[-2:] == _fingerprints(reference_log)
    assert not re.search(r"unhealthy|crashed|Traceback", text), text[-3000:]


# Three trials of two epochs of 11,000 images: a search long enough to signal mid-way.
SEARCH_ARGS = (
    "--preset=smoke",
    "--tuner=random",
    "--max_trials=3",
    "--max_epochs=2",
    "--max_train_examples=11000",
    "--search_space=filters",
)


def _search_ended_well(workdir: Path, text: str) -> None:
    rows = (workdir / "trials.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(",COMPLETED," in row for row in rows), rows
    assert "task 0 of 2 is the oracle chief, listening on" in text and "task 1 of 2 is a tuner of the oracle" in text
    assert (workdir / "best_run" / "export" / "1" / "saved_model.pb").exists()  # The script retrains the best.
    assert not re.search(r"unhealthy|crashed|Traceback|Connection refused", text), text[-3000:]


def test_a_slurm_search_is_one_oracle_chief_and_its_tuners_and_retrains_the_best(
    slurm, long_data_dir, tmp_path, machine_precision
):
    log = tmp_path / "job.log"
    job = _submit(slurm, tmp_path / "search", long_data_dir, log, machine_precision, SEARCH_SCRIPT, SEARCH_ARGS)
    state = slurm.wait(job, timeout=600)
    text = log.read_text(errors="replace")
    assert state == "COMPLETED", text[-3000:] + slurm.diagnosis(job)
    _search_ended_well(tmp_path / "search", text)


def test_a_slurm_search_stopped_by_sigterm_requeues_and_resumes(slurm, long_data_dir, tmp_path, machine_precision):
    log = tmp_path / "job.log"
    job = _submit(slurm, tmp_path / "search", long_data_dir, log, machine_precision, SEARCH_SCRIPT, SEARCH_ARGS)
    state, text = _signal_once_logged(slurm, job, log, "trial 1: up to epoch 2")
    assert state == "COMPLETED", text[-3000:] + slurm.diagnosis(job)
    # The tuner checkpoints its trial, the chief keeps the oracle's state; both end as stopped, not failed.
    assert "search stopped by SIGTERM: the oracle's state is saved" in text, text[-3000:]
    assert "requeueing job" in text and "(restart 1)" in text
    assert re.search(r"resumed from .*trial_1/checkpoints/ckpt-\d+", text), text[-3000:]
    _search_ended_well(tmp_path / "search", text)
