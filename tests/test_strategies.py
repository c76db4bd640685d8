"""The strategy's rules without a cluster: TF_CONFIG parsing, the chief, input feeding, collectives."""

from __future__ import annotations

import pytest
import tensorflow as tf
from helpers import MALFORMED_TF_CONFIG_CASES

from pipeline.cluster import environment as cluster_env
from pipeline.cluster import strategies


@pytest.mark.parametrize("tf_config, message", MALFORMED_TF_CONFIG_CASES)
def test_malformed_tf_config_is_a_clear_error(tf_config, message):
    with pytest.raises(strategies.ClusterError, match=message):
        cluster_env.parse_tf_config(tf_config)


def test_chief_rule():
    assert strategies.is_chief(tf.distribute.get_strategy())


def test_only_a_multi_worker_process_with_one_cpu_replica_feeds_it_directly():
    # One process: its datasets go through the strategy (a no-op for the default one).
    assert strategies.direct_input_context(tf.distribute.get_strategy()) is None
    assert strategies.direct_input_context(tf.distribute.MirroredStrategy(["/cpu:0"])) is None


def test_collectives_are_packed_ring_on_cpus_and_nccl_on_gpus():
    implementation = tf.distribute.experimental.CommunicationImplementation
    cpu, gpu = strategies.communication_options(0), strategies.communication_options(2)
    assert cpu.implementation == implementation.RING and gpu.implementation == implementation.NCCL
    assert cpu.bytes_per_pack == gpu.bytes_per_pack == strategies.BYTES_PER_PACK > 0
    # No timeout: TensorFlow would keep a sleeping thread per collective for the whole timeout.
    assert cpu.timeout_seconds is None and gpu.timeout_seconds is None


def test_auto_mirrors_over_logical_cpus_and_the_default_strategy_refuses_them(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, subprocess_env

    script = """
import tensorflow as tf
from pipeline.cluster import strategies
strategies.use_logical_cpus(2)
for kind, devices in (("default", None), ("default", ["/cpu:0"])):
    try:
        strategies.make_strategy(kind, devices)
    except ValueError as e:
        print("refused:", e)
print("auto:", strategies.make_strategy("auto").num_replicas_in_sync)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("refused: the default strategy trains one replica on one device, not the 2 logical")
    assert lines[1] == (
        "refused: devices ['/cpu:0'] are for the mirrored strategy, not 'default'; add --strategy=mirrored"
    )
    assert lines[2:] == ["auto: 2"]


@pytest.mark.parametrize("kind", ["default", "mirrored"])
@pytest.mark.parametrize(
    "cluster",
    [
        {"TF_CONFIG": '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}'},
        {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"},
    ],
    ids=["tf_config", "slurm"],
)
def test_a_task_of_a_cluster_refuses_a_strategy_that_would_train_it_alone(monkeypatch, kind, cluster):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name, value in cluster.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(strategies.ClusterError, match=f"--strategy={kind} would train it alone: use --strategy=multi"):
        strategies.make_strategy(kind)


def test_multi_worker_in_a_slurm_step_of_one_task_names_the_fix(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name, value in {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(strategies.ClusterError, match="this Slurm job step has one: start it with srun over sev"):
        strategies.make_strategy("multi_worker")
    assert strategies.strategy_name(strategies.make_strategy("auto")) == "default"


def test_the_tasks_of_a_slurm_search_each_train_their_trials_alone(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    step = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "KERASTUNER_TUNER_ID": "tuner1"}
    for name, value in step.items():
        monkeypatch.setenv(name, value)
    assert strategies.strategy_name(strategies.make_strategy("auto")) == "default"
    assert strategies.strategy_name(strategies.make_strategy("default")) == "default"


def test_gpus_named_in_cuda_visible_devices_must_be_seen_by_tensorflow():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has GPUs: the GPU tier checks an id CUDA cannot open")
    with pytest.raises(strategies.ClusterError, match="CUDA_VISIBLE_DEVICES=0,1 gives this process GPUs, but"):
        strategies.check_given_gpus_are_seen({"CUDA_VISIBLE_DEVICES": "0,1"})
    for hidden in ("", "-1", "NoDevFiles"):  # No GPU asked for: the CPU is what was meant.
        strategies.check_given_gpus_are_seen({"CUDA_VISIBLE_DEVICES": hidden})
    strategies.check_given_gpus_are_seen({})
