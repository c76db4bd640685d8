"""What the environment says about the cluster: Slurm's job step, and the GPUs each process may use.

Pure functions of an environment mapping, so they run (and are tested)
without Slurm, without GPUs and before TensorFlow initialises its devices,
which is when a process's GPUs must be chosen.

TensorFlow's own `SlurmClusterResolver` is not used: it runs `nvidia-smi` to
count GPUs (a traceback on CPU nodes, which have none), divides by the GPUs
per task (zero on CPU nodes), and sets `CUDA_VISIBLE_DEVICES` while it
resolves the cluster, after the process has already initialised its GPUs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

# Where the NVIDIA driver lists one directory per GPU: counting GPUs needs no nvidia-smi.
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
# Ports of a job step's tasks when Slurm reserves none (MpiParams=ports=...): a
# block per job, so jobs sharing a node rarely collide; FMNIST_PORT_BASE overrides.
PORT_RANGE_START, PORT_BLOCK, PORT_BLOCKS = 20000, 16, 2000
# Set in every task of a search whose roles come from Slurm's variables (`slurm_search_roles`).
SEARCH_FROM_SLURM = "FMNIST_SEARCH_FROM_SLURM"


class ClusterError(ValueError):
    """The cluster description (TF_CONFIG or Slurm) is unusable."""


def parse_tf_config(text: str) -> dict:
    """Parses and checks a TF_CONFIG value, raising ClusterError naming the fault."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({e}); see WORKSPACE.md for its format") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict):
        raise ClusterError('TF_CONFIG needs a "cluster" object, e.g. {"cluster": {"worker": ["host:port", ...]}, ...}')
    others = sorted(set(spec["cluster"]) - {"chief", "worker"})
    if others:
        # Parameter servers belong to ParameterServerStrategy, and a side-car
        # evaluator has nothing to do: the chief validates every epoch itself.
        raise ClusterError(
            f"TF_CONFIG lists {', '.join(repr(t) for t in others)} tasks, but MultiWorkerMirroredStrategy trains "
            'with "chief" and "worker" tasks only (the chief validates every epoch): make every process a "worker"'
        )
    task = spec.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ClusterError('TF_CONFIG needs a "task" object with "type" and "index"')
    members = spec["cluster"].get(task["type"])
    if not isinstance(members, list) or not all(isinstance(m, str) and ":" in m for m in members):
        raise ClusterError(f'TF_CONFIG cluster has no list of "host:port" for task type {task["type"]!r}')
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(members):
        raise ClusterError(f"TF_CONFIG task index {task['index']!r} is outside 0..{len(members) - 1}")
    return spec


def tf_config_tasks(env: Mapping[str, str] = os.environ) -> int:
    """How many tasks TF_CONFIG's cluster names (checked by `parse_tf_config`); 0 without TF_CONFIG."""
    if "TF_CONFIG" not in env:
        return 0
    return sum(len(members) for members in parse_tf_config(env["TF_CONFIG"])["cluster"].values())


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list, expanded in order: 'n[1-2],m5' -> ['n1', 'n2', 'm5']."""
    hosts, part, depth = [], "", 0
    for char in hostlist + ",":
        if char == "," and depth == 0:
            if part:
                match = re.fullmatch(r"([^\[\]]*)(?:\[([^\]]+)\])?(.*)", part)
                prefix, ranges, suffix = match.group(1), match.group(2), match.group(3)
                if ranges is None:
                    hosts.append(part)
                for item in (ranges or "").split(",") if ranges else []:
                    low, _, high = item.partition("-")
                    for number in range(int(low), int(high or low) + 1):
                        hosts.append(f"{prefix}{str(number).zfill(len(low))}{suffix}")
            part = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        part += char
    return hosts


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm's tasks-per-node list, expanded: '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for item in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match is None:
            raise ClusterError(f"cannot read Slurm's tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def in_slurm_step(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a Slurm job step of several tasks (`srun`): one training cluster, or one search.

    Only srun's tasks have `SLURM_STEP_NUM_TASKS`. The batch script's own
    shell also has `SLURM_PROCID` (0) and the job's `SLURM_NTASKS`, but it is
    one process: a command run there without srun trains alone.
    """
    return "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def in_slurm_training_step(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a Slurm step of several tasks that train as one cluster: not a search's (`slurm_search_roles`)."""
    return in_slurm_step(env) and "KERASTUNER_TUNER_ID" not in env


def slurm_search_roles(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The KerasTuner variables that make the tasks of a Slurm step one distributed search.

    Task 0 is the oracle chief: it answers the other tasks' requests, then
    writes the results and (`--retrain_best`) retrains the best config on its
    node's GPUs. Task k is tuner k and trains its trials alone
    (`search_gpu_share` says on which GPUs). The
    oracle listens on the step's first node, on the port its first task would
    train on. Empty outside a step of several tasks, and when the variables
    are set already (the user's own).
    """
    if not in_slurm_step(env) or "KERASTUNER_TUNER_ID" in env:
        return {}
    try:
        hosts = expand_hostlist(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
        rank = int(env["SLURM_PROCID"])
    except KeyError as e:
        raise ClusterError(f"Slurm variable {e.args[0]} is not set; start fmnist-tune with srun") from None
    roles = {
        "KERASTUNER_TUNER_ID": "chief" if rank == 0 else f"tuner{rank}",
        "KERASTUNER_ORACLE_IP": hosts[0],
        "KERASTUNER_ORACLE_PORT": str(_step_ports(env, 1)[0]),
        SEARCH_FROM_SLURM: "1",  # Read by `assign_slurm_gpus`.
    }
    if rank == 0:  # The tuners the chief waits for (`tuning.chief.expected_tuners`).
        roles["FMNIST_SEARCH_TUNERS"] = ",".join(f"tuner{k}" for k in range(1, int(env["SLURM_STEP_NUM_TASKS"])))
    return roles


def _step_ports(env: Mapping[str, str], count: int) -> list[int]:
    """`count` ports for one node's tasks: Slurm's reserved ones when it has them."""
    reserved = env.get("SLURM_STEP_RESV_PORTS")
    if reserved:
        ports = []
        for item in reserved.split(","):
            low, _, high = item.partition("-")
            ports += range(int(low), int(high or low) + 1)
        if len(ports) >= count:
            return ports[:count]
    if "FMNIST_PORT_BASE" in env:
        base = int(env["FMNIST_PORT_BASE"])
    else:
        base = PORT_RANGE_START + (int(env.get("SLURM_JOB_ID", "0")) % PORT_BLOCKS) * PORT_BLOCK
    return list(range(base, base + count))


def slurm_cluster(env: Mapping[str, str] = os.environ) -> tuple[dict[str, list[str]], int]:
    """The job step's cluster ({"worker": [host:port, ...]}) and this task's index in it.

    Tasks are numbered as Slurm numbers them: by node in the step's node
    list, then by local id (srun's default block distribution). A step laid
    out otherwise is refused, since every task must compute the same list.
    """
    try:
        hosts = expand_hostlist(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
        tasks = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env["SLURM_TASKS_PER_NODE"])
        rank, node, local = int(env["SLURM_PROCID"]), int(env["SLURM_NODEID"]), int(env["SLURM_LOCALID"])
    except KeyError as e:
        raise ClusterError(f"Slurm variable {e.args[0]} is not set; start fmnist-train with srun") from None
    if len(hosts) != len(tasks):
        raise ClusterError(f"Slurm lists {len(hosts)} nodes but tasks for {len(tasks)}")
    ports = _step_ports(env, max(tasks))
    workers = [f"{host}:{ports[i]}" for host, count in zip(hosts, tasks, strict=True) for i in range(count)]
    if rank >= len(workers) or workers[rank] != f"{hosts[node]}:{ports[local]}":
        raise ClusterError(
            f"task {rank} (node {node}, local id {local}) is not where a block layout puts it; "
            "start the step with srun's default distribution (-m block)"
        )
    return {"worker": workers}, rank


def cuda_device_ids(value: str) -> list[str]:
    """The GPUs a CUDA_VISIBLE_DEVICES value names, read as CUDA reads it.

    CUDA takes the comma-separated indices or GPU-/MIG- UUIDs up to the first
    entry that is neither, so "", "-1" and "NoDevFiles" (what Slurm sets in
    a job without GPUs) hide every GPU.
    """
    ids = []
    for entry in (e.strip() for e in value.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        ids.append(entry)
    return ids


def visible_gpus(env: Mapping[str, str] = os.environ, driver_dir: Path = NVIDIA_PROC) -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else every GPU the driver lists."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return cuda_device_ids(env["CUDA_VISIBLE_DEVICES"])
    if driver_dir.is_dir():
        return [str(i) for i in range(len(list(driver_dir.iterdir())))]
    return []


def gpu_share(gpus: list[str], index: int, count: int) -> list[str]:
    """Process `index` of `count` on one host: its own consecutive share of `gpus` ([] without GPUs).

    Raises:
      ClusterError: when there are GPUs but fewer than processes (they would share one).
    """
    if not gpus:
        return []
    if len(gpus) < count:
        raise ClusterError(
            f"{count} processes on this host but {len(gpus)} GPU(s): run at most one process per GPU "
            "(fewer tasks per node or workers), or hide the GPUs with CUDA_VISIBLE_DEVICES="
        )
    size = len(gpus) // count
    return gpus[index * size : (index + 1) * size]


def search_gpu_share(gpus: list[str], rank: int, node: int, local: int, tasks_here: int) -> list[str]:
    """The GPUs of a task of a Slurm search (`slurm_search_roles`), so that none stays idle.

    The chief (task 0, the first on the step's first node) trains only once
    the search is over (`--retrain_best`): it sees every GPU of its node and
    takes memory as it needs it (`tuning.chief.leave_gpus_to_tuners`),
    while the node's tuners share those GPUs. Elsewhere a node's tuners share
    its GPUs. A trial mirrors over whatever its tuner has, so shares may
    differ by one GPU where the GPUs do not divide evenly.
    """
    if rank == 0:
        return gpus
    tuners, index = (tasks_here - 1, local - 1) if node == 0 else (tasks_here, local)
    if index < 0:  # Task 0 is not the first of the first node (an arbitrary distribution): even shares.
        return gpu_share(gpus, local, tasks_here)
    return tuner_gpu_share(gpus, index, tuners)


def tuner_gpu_share(gpus: list[str], index: int, count: int) -> list[str]:
    """Tuner `index` of `count` on one host: its consecutive share of `gpus`, every GPU given out.

    Unlike a training cluster's workers, which must hold equal shares, a
    tuner's trial mirrors over whatever it has, so shares may differ by one.
    """
    if gpus and len(gpus) < count:
        raise ClusterError(
            f"{count} tuner(s) on this host but {len(gpus)} GPU(s): run at most one tuner per GPU "
            "(fewer tasks per node or tuners), or hide the GPUs with CUDA_VISIBLE_DEVICES="
        )
    return gpus[index * len(gpus) // count : (index + 1) * len(gpus) // count]


def assign_slurm_gpus(env: dict[str, str] = os.environ, driver_dir: Path = NVIDIA_PROC) -> list[str] | None:
    """In a Slurm step, restricts this task to its share of the node's GPUs; returns it (None outside Slurm).

    Must run before TensorFlow initialises its devices. When Slurm binds GPUs
    to tasks itself (`--gpus-per-task`), its choice is kept.
    """
    if not in_slurm_step(env):
        return None
    if "SLURM_GPUS_PER_TASK" in env:
        return visible_gpus(env, driver_dir)
    node = int(env.get("SLURM_NODEID", "0"))
    tasks_here = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env["SLURM_TASKS_PER_NODE"])[node]
    gpus, local = visible_gpus(env, driver_dir), int(env.get("SLURM_LOCALID", "0"))
    if env.get(SEARCH_FROM_SLURM):
        share = search_gpu_share(gpus, int(env["SLURM_PROCID"]), node, local, tasks_here)
    else:
        share = gpu_share(gpus, local, tasks_here)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(share)
    return share
