"""Slurm's variables and GPU shares, read from environment mappings (no Slurm, no GPU needed)."""

from __future__ import annotations

import pytest

from pipeline.cluster import environment as cluster_env


def _step(procid: int, nodeid: int, localid: int, **extra) -> dict:
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": str(procid),
        "SLURM_NODEID": str(nodeid),
        "SLURM_LOCALID": str(localid),
        "SLURM_STEP_NUM_TASKS": "5",
        "SLURM_STEP_NODELIST": "gpu[07-08],cpu3",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
        **extra,
    }


def test_hostlists_and_task_counts_expand_like_slurm():
    assert cluster_env.expand_hostlist("n[1-2],m5,o[3-4,6,07-09]") == [
        "n1", "n2", "m5", "o3", "o4", "o6", "o07", "o08", "o09"
    ]  # fmt: skip
    assert cluster_env.expand_hostlist("node[001-003]") == ["node001", "node002", "node003"]
    assert cluster_env.expand_hostlist("vm") == ["vm"]
    assert cluster_env.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]


def test_every_task_computes_the_same_cluster_and_its_own_index():
    layout = [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1), (4, 2, 0)]
    clusters = [cluster_env.slurm_cluster(_step(*task)) for task in layout]
    base = 20000 + (4242 % 2000) * 16
    expected = [f"gpu07:{base}", f"gpu07:{base + 1}", f"gpu08:{base}", f"gpu08:{base + 1}", f"cpu3:{base}"]
    assert all(spec == {"worker": expected} for spec, _ in clusters)
    assert [index for _, index in clusters] == [0, 1, 2, 3, 4]


def test_reserved_ports_are_used_and_a_non_block_layout_is_refused():
    spec, _ = cluster_env.slurm_cluster(_step(0, 0, 0, SLURM_STEP_RESV_PORTS="12000-12001"))
    assert spec["worker"][:2] == ["gpu07:12000", "gpu07:12001"]
    with pytest.raises(cluster_env.ClusterError, match="block"):
        cluster_env.slurm_cluster(_step(1, 1, 0))  # Cyclic: task 1 on the second node.
    with pytest.raises(cluster_env.ClusterError, match="SLURM_PROCID"):
        cluster_env.slurm_cluster({"SLURM_STEP_NODELIST": "a", "SLURM_STEP_TASKS_PER_NODE": "1"})


def test_in_slurm_step_needs_several_tasks():
    assert cluster_env.in_slurm_step(_step(0, 0, 0))
    assert not cluster_env.in_slurm_step({**_step(0, 0, 0), "SLURM_STEP_NUM_TASKS": "1"})
    assert not cluster_env.in_slurm_step({"SLURM_JOB_ID": "1"})
    # The batch script's shell: the job's task count, but one process, not a step's task.
    assert not cluster_env.in_slurm_step({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_the_tasks_of_a_slurm_step_running_fmnist_tune_are_one_search_not_one_training_cluster():
    roles = [cluster_env.slurm_search_roles(_step(*task)) for task in [(0, 0, 0), (1, 0, 1), (4, 2, 0)]]
    port = str(20000 + (4242 % 2000) * 16)
    assert [r["KERASTUNER_TUNER_ID"] for r in roles] == ["chief", "tuner1", "tuner4"]
    assert roles[0]["FMNIST_SEARCH_TUNERS"] == "tuner1,tuner2,tuner3,tuner4" and "FMNIST_SEARCH_TUNERS" not in roles[1]
    assert all(r["KERASTUNER_ORACLE_IP"] == "gpu07" and r["KERASTUNER_ORACLE_PORT"] == port for r in roles)
    reserved = cluster_env.slurm_search_roles(_step(2, 1, 0, SLURM_STEP_RESV_PORTS="12000-12001"))
    assert reserved["KERASTUNER_ORACLE_PORT"] == "12000"
    # Once they are set (by the user, or for this process), the step trains no cluster.
    searching = {**_step(1, 0, 1), **roles[1]}
    assert cluster_env.in_slurm_step(searching) and not cluster_env.in_slurm_training_step(searching)
    assert cluster_env.slurm_search_roles(searching) == {}
    assert cluster_env.in_slurm_training_step(_step(1, 0, 1))
    assert cluster_env.slurm_search_roles({**_step(0, 0, 0), "SLURM_STEP_NUM_TASKS": "1"}) == {}


def test_a_slurm_searchs_tuners_share_every_gpu_and_its_chief_sees_those_of_its_node():
    def shares(tasks_per_node: str, gpus: str, tasks: list[tuple[int, int, int]]) -> list[str]:
        out = []
        for procid, nodeid, localid in tasks:
            env = _step(procid, nodeid, localid, SLURM_STEP_TASKS_PER_NODE=tasks_per_node, CUDA_VISIBLE_DEVICES=gpus)
            env.update(cluster_env.slurm_search_roles(env))
            out.append(",".join(cluster_env.assign_slurm_gpus(env)))
        return out

    # 2 nodes of 2 GPUs and 2 tasks: the chief's node's one tuner mirrors over both, the chief retrains on both after.
    assert shares("2(x2)", "0,1", [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]) == ["0,1", "0,1", "0", "1"]
    # 4 GPUs among the chief's node's 3 tuners: shares differ by one GPU, none idle.
    assert shares("4", "0,1,2,3", [(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 0, 3)]) == ["0,1,2,3", "0", "1", "2,3"]
    assert shares("2", "NoDevFiles", [(0, 0, 0), (1, 0, 1)]) == ["", ""]  # CPU nodes.
    with pytest.raises(cluster_env.ClusterError, match="at most one tuner per GPU"):
        shares("3", "0", [(1, 0, 1)])
    # A training step (no search roles) splits its nodes' GPUs evenly, the chief's share its own.
    assert cluster_env.assign_slurm_gpus(_step(0, 0, 0, SLURM_STEP_TASKS_PER_NODE="2", CUDA_VISIBLE_DEVICES="0,1")) == [
        "0"
    ]


def test_visible_gpus_without_nvidia_smi(tmp_path):
    driver = tmp_path / "gpus"
    assert cluster_env.visible_gpus({}, driver) == []  # A CPU node: no driver directory.
    driver.mkdir()
    for bus in ("0000:07:00.0", "0000:08:00.0", "0000:09:00.0", "0000:0a:00.0"):
        (driver / bus).mkdir()
    assert cluster_env.visible_gpus({}, driver) == ["0", "1", "2", "3"]
    assert cluster_env.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, driver) == ["2", "3"]
    assert cluster_env.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver) == []
    # As CUDA reads the variable: indices or UUIDs up to the first entry that is neither.
    assert cluster_env.visible_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, driver) == []  # Slurm, no GPUs.
    assert cluster_env.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, driver) == []
    assert cluster_env.visible_gpus({"CUDA_VISIBLE_DEVICES": "1, 3,-1,2"}, driver) == ["1", "3"]
    uuids = "GPU-5d3e1a2b-0000-1111-2222-333344445555,MIG-0c1d2e3f-aaaa-bbbb-cccc-ddddeeeeffff"
    assert cluster_env.visible_gpus({"CUDA_VISIBLE_DEVICES": uuids}, driver) == uuids.split(",")


def test_a_slurm_job_without_gpus_trains_its_tasks_on_cpus(tmp_path):
    # Slurm sets CUDA_VISIBLE_DEVICES=NoDevFiles in a job that asked for no GPUs: two tasks, no GPU shares.
    env = _step(1, 0, 1, CUDA_VISIBLE_DEVICES="NoDevFiles")
    assert cluster_env.assign_slurm_gpus(env, tmp_path / "no_driver") == []


def test_gpu_shares_are_disjoint_and_refuse_more_processes_than_gpus():
    gpus = ["0", "1", "2", "3"]
    assert [cluster_env.gpu_share(gpus, i, 2) for i in range(2)] == [["0", "1"], ["2", "3"]]
    assert [cluster_env.gpu_share(gpus, i, 4) for i in range(4)] == [["0"], ["1"], ["2"], ["3"]]
    assert cluster_env.gpu_share([], 1, 2) == []
    with pytest.raises(cluster_env.ClusterError, match="at most one process per GPU"):
        cluster_env.gpu_share(["0"], 0, 2)


def test_each_slurm_task_keeps_its_own_gpus(tmp_path):
    env = _step(3, 1, 1, CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert cluster_env.assign_slurm_gpus(env) == ["2", "3"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    driver = tmp_path / "gpus"
    for bus in ("a", "b"):
        (driver / bus).mkdir(parents=True)
    node = _step(1, 0, 1)  # No CUDA_VISIBLE_DEVICES: the driver's GPUs, split between the node's 2 tasks.
    assert cluster_env.assign_slurm_gpus(node, tmp_path / "gpus") == ["1"]
    cpu = _step(4, 2, 0)
    assert cluster_env.assign_slurm_gpus(cpu, tmp_path / "none") == []
    bound = _step(1, 0, 1, CUDA_VISIBLE_DEVICES="1", SLURM_GPUS_PER_TASK="1")
    assert cluster_env.assign_slurm_gpus(bound) == ["1"]  # Slurm bound it already.
    assert cluster_env.assign_slurm_gpus({"SLURM_JOB_ID": "1"}) is None
