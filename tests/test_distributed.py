"""Multi-worker training over 127.0.0.1: agreement, chief-only outputs, kill and resume, cluster errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import LAUNCH, REPO, fmnist_train, run, scratch_env, start, subprocess_env, wait_for
from helpers import MALFORMED_TF_CONFIG_CASES


@pytest.mark.slow
def test_two_workers_agree_and_only_the_chief_writes(tiny_data_dir, tmp_path, machine_precision):
    env, scratch = scratch_env(tmp_path)
    workdir = tmp_path / "run"
    fixed = f"--precision={machine_precision}"  # The two jobs compared train alike.
    done = subprocess.run(
        [*LAUNCH, "--num_workers=2", "--", *fmnist_train(workdir, tiny_data_dir, "--epochs=2", fixed)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    prints = re.findall(r"\[(worker \d)\] .*final weights fingerprint (\w+)", done.stdout)
    assert len(prints) == 2 and prints[0][1] == prints[1][1], prints
    assert "2 replica(s) x batch 32 = global batch 64" in done.stdout
    # Each worker runs on its own share of the cores, with thread pools to match.
    threads = dict(re.findall(r"\[(worker \d)\] threads: (intra-op \d+, inter-op \d+)", done.stdout))
    assert threads == {"worker 0": "intra-op 1, inter-op 1", "worker 1": "intra-op 1, inter-op 1"}
    cores = dict(re.findall(r"\[(worker \d)\] threads: .*; cores ([\d,]+)", done.stdout))
    if len(os.sched_getaffinity(0)) >= 2:  # Each worker reads its own cores, none shared.
        assert len(cores) == 2 and not set(cores["worker 0"].split(",")) & set(cores["worker 1"].split(",")), cores
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["epochs_completed"] == 2
    assert metrics["strategy"] == "multi_worker"
    assert list(scratch.iterdir()) == [], "non-chief temporary directories must be removed"
    # Each worker feeds its replica from its own iterator: the same batches as through tf.distribute's.
    through_tf_distribute = [
        *LAUNCH,
        "--num_workers=2",
        "--",
        *fmnist_train(tmp_path / "tf_distribute", tiny_data_dir, "--epochs=2", "--input_distribution=tf_distribute"),
        fixed,
    ]
    again = run(through_tf_distribute, timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-3000:]
    assert _chief_fingerprint(again.stdout) == prints[0][1]


@pytest.mark.slow
def test_killed_worker_stops_the_job_and_a_rerun_resumes(tiny_data_dir, tmp_path, machine_precision):
    env, _ = scratch_env(tmp_path)
    workdir = tmp_path / "run"

    def two_workers(workdir):
        return [
            *LAUNCH,
            "--num_workers=2",
            "--",
            *fmnist_train(workdir, tiny_data_dir, "--epochs=30", "--max_train_examples=256"),
            f"--precision={machine_precision}",
        ]

    command = two_workers(workdir)
    launcher = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids, lines = {}, []
    deadline = time.time() + 300
    for line in launcher.stdout:
        lines.append(line)
        if match := re.match(r"launcher: started (worker \d) \(pid (\d+)\)", line):
            pids[match[1]] = int(match[2])
        latest = tf.train.latest_checkpoint(workdir / "checkpoints") if (workdir / "checkpoints").exists() else None
        # Checkpoints are numbered by optimizer step: 4 steps per epoch here.
        if (latest and int(latest.rsplit("-", 1)[1]) >= 3 * 4) or time.time() > deadline:
            break
    os.kill(pids["worker 1"], signal.SIGKILL)
    rest, _ = launcher.communicate(timeout=120)
    output = "".join(lines) + rest
    assert launcher.returncode != 0
    assert "worker 1 failed (signal 9)" in output
    killed_at = int(tf.train.latest_checkpoint(workdir / "checkpoints").rsplit("-", 1)[1])
    assert killed_at < 30
    done = run(command, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"ckpt-{killed_at}" in done.stdout and "resumed from" in done.stdout
    history = json.loads((workdir / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 31))
    assert json.loads((workdir / "metrics.json").read_text())["epochs_completed"] == 30
    # Resumed at an epoch boundary with the data order, augmentation and
    # dropout states restored, the run ends exactly where an uninterrupted one does.
    straight = run(two_workers(tmp_path / "straight"), timeout=600, env=env)
    assert straight.returncode == 0, straight.stdout[-3000:]
    assert _chief_fingerprint(done.stdout) == _chief_fingerprint(straight.stdout)


@pytest.mark.slow
def test_a_worker_whose_peer_dies_fails_with_a_message_without_any_launcher(tiny_data_dir, tmp_path):
    from launch import local_cluster

    env, _ = scratch_env(tmp_path)
    workers = [f"127.0.0.1:{port}" for port in local_cluster.free_ports(2)]
    processes = []
    for index in range(2):
        spec = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        command = fmnist_train(tmp_path / "run", tiny_data_dir, "--epochs=200", "--max_train_examples=256")
        processes.append(
            subprocess.Popen(
                command,
                env=dict(env, TF_CONFIG=json.dumps(spec)),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    survivor, victim = processes
    lines = []
    for line in survivor.stdout:  # Wait until training runs.
        lines.append(line)
        if "epoch 2:" in line:
            break
    victim.kill()
    victim.wait()
    rest, _ = survivor.communicate(timeout=120)  # The coordination service notices within seconds.
    output = "".join(lines) + rest
    assert survivor.returncode != 0
    assert "lost contact with a peer worker" in output, output[-3000:]


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_worker_at_one_step_and_the_rerun_is_exact(
    long_data_dir, tmp_path, machine_precision
):
    env, _ = scratch_env(tmp_path)

    def two_workers(workdir):
        # The straight run is compared with the resumed one: both train in one precision.
        extra = ["--epochs=2", "--max_train_examples=11520", "--validation_size=64", f"--precision={machine_precision}"]
        return [*LAUNCH, "--num_workers=2", "--", *fmnist_train(workdir, long_data_dir, *extra)]

    workdir = tmp_path / "run"
    launcher = start(two_workers(workdir), env=env, merge_stderr=True)
    wait_for((workdir / "history.json").exists, timeout=300, process=launcher)
    time.sleep(0.5)  # Into epoch 2.
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, output[-3000:]
    stops = re.findall(r"\[(worker \d)\] error: stopped by SIGTERM at optimizer step (\d+)", output)
    assert len(stops) == 2 and stops[0][1] == stops[1][1], output[-3000:]
    assert "every task saved its checkpoint" in output
    resumed = run(two_workers(workdir), timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"ckpt-{stops[0][1]}" in resumed.stdout and "epoch 2 in progress" in resumed.stdout
    straight = run(two_workers(tmp_path / "straight"), timeout=600, env=env)
    assert straight.returncode == 0, straight.stdout[-3000:]
    assert _chief_fingerprint(resumed.stdout) == _chief_fingerprint(straight.stdout)


def _chief_fingerprint(output: str) -> str:
    (fingerprint,) = re.findall(r"\[worker 0\] .*final weights fingerprint (\w+)", output)
    return fingerprint


@pytest.mark.parametrize("tf_config, message", MALFORMED_TF_CONFIG_CASES)
def test_fmnist_train_reports_a_malformed_tf_config_in_one_line(tf_config, message, tiny_data_dir, tmp_path):
    env = dict(subprocess_env(), TF_CONFIG=tf_config)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.train",
            f"--workdir={tmp_path}",
            "--preset=smoke",
            f"--data_dir={tiny_data_dir}",
            "--strategy=multi_worker",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # One line, before TensorFlow starts (no TensorFlow log line precedes it).
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr[-2000:]
    assert message in done.stderr and done.stderr.startswith("error: TF_CONFIG")


PACKING_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
from pipeline.cluster import environment as cluster_env
from pipeline.cluster import strategies

strategy = strategies.make_strategy("multi_worker")
rng = np.random.default_rng(strategy.cluster_resolver.task_id)
tensors = [tf.constant(rng.normal(size=shape), tf.float32) for shape in ((3, 3, 1, 32), (32,), (1152, 256), (10,))]
unpacked = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=0)

@tf.function
def both():
    def fn():
        context = tf.distribute.get_replica_context()
        packed = context.all_reduce("sum", [tf.identity(t) for t in tensors])
        single = [context.all_reduce("sum", tf.identity(t), options=unpacked) for t in tensors]
        return packed, single
    return strategy.run(fn)

packed, single = both()
print(json.dumps({"max_difference": max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(packed, single))}))
"""


@pytest.mark.slow
def test_packed_and_per_variable_all_reduce_agree(tmp_path):
    env, _ = scratch_env(tmp_path)
    done = run([*LAUNCH, "--num_workers=2", "--", sys.executable, "-c", PACKING_SCRIPT], timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    results = [json.loads(line.split("] ", 1)[1]) for line in done.stdout.splitlines() if "max_difference" in line]
    assert len(results) == 2 and all(r["max_difference"] <= 1e-6 for r in results), results


CRASH_LINES = re.compile(r"^\[worker \d\] (E\d{4} |.*(unhealthy|have crashed|lost contact|Traceback|StartAbort))", re.M)


@pytest.mark.slow
def test_a_successful_two_worker_run_ends_without_error_lines(tiny_data_dir, tmp_path):
    env, _ = scratch_env(tmp_path)
    command = ["fmnist-train", f"--workdir={tmp_path / 'run'}", "--preset=smoke", f"--data_dir={tiny_data_dir}"]
    done = run([*LAUNCH, "--num_workers=2", "--", *command], timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "run" / "export" / "1" / "saved_model.pb").exists()
    assert not CRASH_LINES.search(done.stdout), CRASH_LINES.search(done.stdout).group(0)


@pytest.mark.slow
def test_sigterm_during_the_chiefs_export_ends_every_worker_with_143(tiny_data_dir, tmp_path):
    env, _ = scratch_env(tmp_path)
    command = ["fmnist-train", f"--workdir={tmp_path / 'run'}", "--preset=smoke", f"--data_dir={tiny_data_dir}"]
    launcher = subprocess.Popen(
        [*LAUNCH, "--num_workers=2", "--", *command],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "report written to" in line:  # The chief exports next; worker 1 waits for it.
            launcher.send_signal(signal.SIGTERM)
            break
    lines += launcher.stdout.readlines()
    launcher.wait(timeout=120)
    output = "".join(lines)
    assert launcher.returncode == 143, output[-3000:]
    assert output.count("error: stopped by SIGTERM after training and evaluation") == 2, output[-3000:]
    assert "every task saved its checkpoint and stopped" in output
    assert not CRASH_LINES.search(output), CRASH_LINES.search(output).group(0)


@pytest.mark.slow
def test_a_worker_whose_data_differs_from_the_chiefs_is_refused_naming_both(tiny_data_dir, tmp_path):
    from conftest import write_dataset

    from launch import local_cluster

    env, _ = scratch_env(tmp_path)
    other = write_dataset(tmp_path / "other", n_train=700)
    workers = [f"127.0.0.1:{port}" for port in local_cluster.free_ports(2)]
    processes = []
    for index, data_dir in enumerate((tiny_data_dir, other)):
        spec = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                fmnist_train(tmp_path / "run", data_dir),
                env=dict(env, TF_CONFIG=json.dumps(spec)),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    chief = json.loads((tmp_path / "run" / "data.json").read_text())["fingerprint"]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 1, output[-3000:]
        (line,) = [line for line in output.splitlines() if line.startswith("error:")]
        assert "the workers' data differ" in line and f"the chief's {chief}" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing trained"
