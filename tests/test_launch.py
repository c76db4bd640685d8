"""`fmnist-launch` on one host: each process's task, ports, cores and GPUs, and what it says when a worker fails."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from conftest import LAUNCH, fmnist_train, run, scratch_env, start, subprocess_env


@pytest.mark.slow
def test_launcher_names_a_failing_worker(tmp_path):
    script = "import json, os, sys; sys.exit(json.loads(os.environ['TF_CONFIG'])['task']['index'] * 7)"
    done = run([*LAUNCH, "--num_workers=2", "--", sys.executable, "-c", script], timeout=60)
    assert done.returncode == 7 and "worker 1 failed (exit code 7)" in done.stderr


def test_local_cluster_gives_each_process_its_own_task_on_distinct_loopback_ports():
    from launch import local_cluster

    tasks = local_cluster.tf_config_tasks(3)
    specs = [json.loads(task.env["TF_CONFIG"]) for task in tasks]
    workers = specs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
    assert [s["task"] for s in specs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(s["cluster"] == specs[0]["cluster"] for s in specs)
    tuners = local_cluster.tuner_tasks(2)
    assert [t.env["KERASTUNER_TUNER_ID"] for t in tuners] == ["chief", "tuner0", "tuner1"]
    assert tuners[0].env["FMNIST_SEARCH_TUNERS"] == "tuner0,tuner1"  # The chief waits for each to hear the end.
    assert len({t.env["KERASTUNER_ORACLE_PORT"] for t in tuners}) == 1
    # Workers hold equal shares of the GPUs; tuners give out every GPU, and the chief sees them all.
    three = ["0", "1", "2"]
    assert [t.env.get("CUDA_VISIBLE_DEVICES") for t in local_cluster.tf_config_tasks(2, gpus=three)] == ["0", "1"]
    in_search = [t.env.get("CUDA_VISIBLE_DEVICES") for t in local_cluster.tuner_tasks(2, gpus=three)]
    assert in_search == [None, "0", "1,2"]


def test_each_local_worker_gets_its_share_of_the_cores_unless_threads_are_set(monkeypatch):
    from launch import local_cluster

    assert local_cluster.threads_per_process(2, cores=2) == 1
    assert local_cluster.threads_per_process(2, cores=5) == 2
    assert local_cluster.threads_per_process(3, cores=2) == 1  # More workers than cores: at least one each.
    for name in local_cluster.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = local_cluster.thread_env(2)
    assert env == {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": "2"}
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # The user's own setting wins.
    assert local_cluster.thread_env(2) == {}


def test_each_local_worker_is_pinned_to_its_own_cores():
    from launch import local_cluster

    assert local_cluster.core_shares(2, cores=[0, 1]) == [(0,), (1,)]
    assert local_cluster.core_shares(2, cores=[4, 0, 1, 2, 3]) == [(0, 1), (2, 3)]  # Sorted; one core left over.
    assert local_cluster.core_shares(3, cores=[0, 1]) == [None] * 3  # Too few cores: no pinning.
    unpinned = local_cluster.tf_config_tasks(2, pin_cores=False) + local_cluster.tuner_tasks(2, pin_cores=False)
    assert all(task.cores is None for task in unpinned)
    tuners = local_cluster.tuner_tasks(2)
    assert tuners[0].cores is None  # The oracle chief trains nothing.


CORES_SCRIPT = "import os, json; print(json.dumps(sorted(os.sched_getaffinity(0))))"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores")
def test_launched_processes_run_on_their_share_of_the_cores(tmp_path):
    env, _ = scratch_env(tmp_path)
    done = run([*LAUNCH, "--num_workers=2", "--", sys.executable, "-c", CORES_SCRIPT], timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    cores = dict(re.findall(r"\[(worker \d)\] (\[.*\])", done.stdout))
    shares = [json.loads(cores[f"worker {i}"]) for i in range(2)]
    assert shares[0] and shares[1] and not set(shares[0]) & set(shares[1]), shares
    unpinned = run([*LAUNCH, "--num_workers=2", "--nopin_cores", "--", sys.executable, "-c", CORES_SCRIPT], 120, env)
    everything = sorted(os.sched_getaffinity(0))
    assert re.findall(r"\[worker \d\] (\[.*\])", unpinned.stdout) == [json.dumps(everything)] * 2


GPUS_SCRIPT = "import os; print('gpus=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"


@pytest.mark.parametrize(
    "gpus, workers, expected",
    [("0,1,2,3", 2, ["0,1", "2,3"]), ("4,5", 2, ["4", "5"]), ("", 2, ["unset", "unset"])],
)
def test_launched_workers_each_see_only_their_share_of_the_gpus(tmp_path, gpus, workers, expected):
    # --gpus stands in for the machine's GPUs; each process reports what it was given.
    env, _ = scratch_env(tmp_path)
    command = [*LAUNCH, f"--num_workers={workers}", f"--gpus={gpus}", "--", sys.executable, "-c", GPUS_SCRIPT]
    done = run(command, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    seen = dict(re.findall(r"\[worker (\d)\] gpus=(\S+)", done.stdout))
    assert [seen[str(i)] for i in range(workers)] == expected
    tuners = run([*LAUNCH, "--tuner_workers=2", f"--gpus={gpus}", "--", sys.executable, "-c", GPUS_SCRIPT], 120, env)
    seen = dict(re.findall(r"\[(\w+)\] gpus=(\S+)", tuners.stdout))
    assert [seen["tuner0"], seen["tuner1"]] == expected and seen["chief"] == "unset"


def test_more_launched_workers_than_gpus_is_refused_in_one_line(tmp_path):
    env, _ = scratch_env(tmp_path)
    done = run([*LAUNCH, "--num_workers=3", "--gpus=0,1", "--", sys.executable, "-c", "pass"], timeout=120, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: 3 processes on this host but 2 GPU(s): run at most one process per GPU "
        "(fewer tasks per node or workers), or hide the GPUs with CUDA_VISIBLE_DEVICES="
    ]


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN.
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            found.append((str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


@pytest.mark.slow
def test_local_workers_listen_on_loopback_or_the_warning_names_the_port(long_data_dir, tmp_path):
    env, _ = scratch_env(tmp_path)
    command = [*LAUNCH, "--num_workers=2", "--", *fmnist_train(tmp_path / "run", long_data_dir, "--epochs=2")]
    launcher = start(command, env=env)
    pids, sockets = [], []
    for line in launcher.stdout:
        pids += [int(p) for p in re.findall(r"launcher: started worker \d \(pid (\d+)\)", line)]
        if "Epoch 1/2" in line:  # Training: every server is up.
            sockets = [s for pid in pids for s in _listening(pid)]
            break
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    warned = re.search(
        r"^warning: TensorFlow's workers listen on every network interface.*\(ports ([\d, ]+)\)", stderr, re.M
    )
    assert sockets, "the workers' listening sockets were read"
    for address, port in sockets:
        loopback = ipaddress.ip_address(address).is_loopback
        assert loopback or (warned and str(port) in warned.group(1).split(", ")), (address, port, stderr[:500])


def test_a_command_launched_in_the_wrong_mode_is_refused_in_one_line(tmp_path):
    from launch.launch import check_command

    assert check_command(["fmnist-train", "--workdir=x"], "num_workers") is None
    assert check_command([sys.executable, "-m", "launch.tune", "--workdir=x"], "tuner_workers") is None
    assert check_command(["./my_wrapper.sh"], "tuner_workers") is None  # Not ours: passed on.
    assert check_command(["fmnist-tune"], "num_workers") == (
        "fmnist-tune is launched with --tuner_workers, not --num_workers"
    )
    assert check_command([sys.executable, "-m", "launch.train"], "tuner_workers") == (
        "fmnist-train is launched with --num_workers, not --tuner_workers"
    )
    assert check_command(["/venv/bin/fmnist-predict", "a.png"], "num_workers") == (
        "fmnist-predict runs as one process: run it without fmnist-launch"
    )
    env, _ = scratch_env(tmp_path)
    done = run([*LAUNCH, "--tuner_workers=2", "--", "fmnist-train", f"--workdir={tmp_path / 'run'}"], 60, env=env)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: fmnist-train is launched with --num_workers, not --tuner_workers"
    ]
    assert not (tmp_path / "run").exists()


def test_fmnist_tune_in_a_tf_config_cluster_is_refused_in_one_line(tmp_path):
    # Its trials each train in one process; a distributed search is KerasTuner's chief and tuners.
    tf_config = '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}'
    env = dict(subprocess_env(), TF_CONFIG=tf_config)
    done = run([sys.executable, "-m", "launch.tune", f"--workdir={tmp_path / 'search'}", "--preset=smoke"], 60, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: TF_CONFIG names several tasks, but fmnist-tune trains each trial in one process: start a distributed "
        "search with fmnist-launch --tuner_workers=N, srun (Slurm) or the KERASTUNER_* variables (README, Tune), "
        "and unset TF_CONFIG"
    ]
    assert not (tmp_path / "search").exists()
