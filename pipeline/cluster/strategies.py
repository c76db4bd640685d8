"""Strategies, the chief rule, and per-worker output directories.

The strategy is always an object passed into the library; code never reaches
for a global one. `is_chief` is the single rule that gates every write.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Literal

import tensorflow as tf
from tensorflow.python.framework import op_def_registry

from pipeline.cluster import environment as cluster_env
from pipeline.cluster.environment import ClusterError, parse_tf_config

StrategyKind = Literal["auto", "default", "mirrored", "multi_worker"]
log = logging.getLogger(__name__)


def use_logical_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices (multi-device code on a laptop).

    Must run before TensorFlow initialises its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def check_given_gpus_are_seen(env=os.environ) -> None:
    """Raises ClusterError when CUDA_VISIBLE_DEVICES (fmnist-launch, Slurm, the user) gives GPUs TensorFlow cannot see.

    The usual causes: a TensorFlow built without CUDA on a GPU machine, or a
    driver or CUDA library it cannot load; either way training would run on
    the CPU, many times slower, with nothing to say so.
    """
    given = env.get("CUDA_VISIBLE_DEVICES", "")
    if not cluster_env.cuda_device_ids(given) or tf.config.list_physical_devices("GPU"):
        return
    if tf.test.is_built_with_cuda():
        cause = "check the NVIDIA driver and CUDA libraries (nvidia-smi; --verbosity=1 shows TensorFlow's reason)"
    else:
        cause = f"TensorFlow {tf.__version__} here is built without CUDA: pip install 'tensorflow[and-cuda]'"
    raise ClusterError(
        f"CUDA_VISIBLE_DEVICES={given} gives this process GPUs, but TensorFlow sees none; {cause}, "
        "or set CUDA_VISIBLE_DEVICES= (empty) to train on CPUs"
    )


def _in_cluster() -> bool:
    if "TF_CONFIG" not in os.environ:
        return cluster_env.in_slurm_training_step()
    return cluster_env.tf_config_tasks() > 1


def _cluster_resolver():
    if "TF_CONFIG" in os.environ:
        parse_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if cluster_env.in_slurm_training_step():
        spec, index = cluster_env.slurm_cluster()
        gpus = len(tf.config.list_physical_devices("GPU"))
        log.info(
            "cluster from Slurm: task %d of %d, %s", index, len(spec["worker"]), f"{gpus} GPU(s)" if gpus else "CPU"
        )
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(spec),
            task_type="worker",
            task_id=index,
            num_accelerators={"GPU": gpus},
            rpc_layer="grpc",
        )
    if "SLURM_JOB_ID" in os.environ:
        raise ClusterError(
            "--strategy=multi_worker needs several tasks, and this Slurm job step has one: start it with srun over "
            "several tasks (--ntasks-per-node, --nodes), or use --strategy=auto to mirror over this task's GPUs"
        )
    raise ClusterError(
        "--strategy=multi_worker needs TF_CONFIG (or a Slurm job step of several tasks); start the workers with "
        "fmnist-launch, the Slurm script or the TFJob manifest (see README)"
    )


def make_strategy(kind: StrategyKind, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Creates the strategy named by `kind`.

    Args:
      kind: `auto` is multi-worker when TF_CONFIG names several tasks, else
        mirrors over local GPUs when there are two or more (without GPUs,
        over the CPU's logical devices when `use_logical_cpus` made two or
        more), else the default strategy; `mirrored` uses `devices` (all local
        GPUs, or the CPU, when None); `multi_worker` reads the cluster from
        TF_CONFIG or Slurm.
      devices: device names for `mirrored`.
    """
    # Physical, not logical, devices: listing logical ones initialises the
    # runtime, after which collective ops can no longer be configured.
    gpus = tf.config.list_physical_devices("GPU")
    cpu = tf.config.list_physical_devices("CPU")[0]
    logical_cpus = len(tf.config.get_logical_device_configuration(cpu) or [])
    in_cluster = _in_cluster()
    if kind == "auto":
        several = len(gpus) >= 2 or (not gpus and logical_cpus >= 2)
        kind = "multi_worker" if in_cluster else "mirrored" if several else "default"
    if in_cluster and kind in ("default", "mirrored"):
        # Every task would train a model of its own, into the same workdir.
        source = "TF_CONFIG names several tasks" if "TF_CONFIG" in os.environ else "a Slurm step of several tasks"
        raise ClusterError(
            f"this process is one task of a cluster ({source}), and --strategy={kind} would train it alone: "
            "use --strategy=multi_worker (or auto)"
        )
    if devices and kind != "mirrored":
        raise ValueError(f"devices {devices} are for the mirrored strategy, not {kind!r}; add --strategy=mirrored")
    if kind == "default" and logical_cpus >= 2:
        raise ValueError(
            f"the default strategy trains one replica on one device, not the {logical_cpus} logical CPUs asked for; "
            "use --strategy=mirrored (or auto), or drop --logical_cpus"
        )
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices or None)
    if kind == "multi_worker":
        options = communication_options(len(gpus))
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=_cluster_resolver(), communication_options=options
        )
    raise ValueError(f"unknown strategy {kind!r}; choose auto, default, mirrored or multi_worker")


# Gradients are all-reduced in packs of up to this many bytes: one collective
# for all of a small model's gradients instead of one per variable.
BYTES_PER_PACK = 32 * 1024 * 1024


def communication_options(num_gpus: int):
    """Collective settings across workers: packed tensors, NCCL between GPUs, RING (gRPC) between CPUs.

    No timeout: TensorFlow enforces a collective's timeout with a thread that
    sleeps for the whole timeout, one per collective, so a timeout on the
    per-step all-reduce keeps steps-per-second x timeout threads alive, until
    a worker can start no more threads and aborts. A dead or hung peer is
    detected by TensorFlow's coordination service instead: it stops sending
    heartbeats, the service aborts the collectives, and the workers fail with
    `lost contact with a peer worker` (tests/test_distributed.py).
    """
    implementation = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=BYTES_PER_PACK,
        implementation=implementation.NCCL if num_gpus else implementation.RING,
    )


def all_reduce_op(strategy_kind: str, device_type: str) -> str:
    """The op that sums gradients across replicas for a strategy ("mirrored", "multi_worker") on CPUs or GPUs.

    Between GPUs both strategies sum with NCCL (MirroredStrategy's
    `NcclAllReduce`; MultiWorkerMirroredStrategy's collectives with the NCCL
    hint, `communication_options`), whose dtypes are those of `NcclAllReduce`.
    Between CPU workers the collectives run RING over gRPC (`CollectiveReduceV2`);
    MirroredStrategy on CPUs reduces to one device (`AddN`).
    """
    if device_type == "GPU":
        return "NcclAllReduce"
    return "CollectiveReduceV2" if strategy_kind == "multi_worker" else "AddN"


def op_accepts(op_name: str, dtype: tf.DType) -> bool:
    """True when TensorFlow's definition of `op_name` allows `dtype` for its tensors."""
    op_def = op_def_registry.get(op_name)
    if op_def is None:
        return False
    allowed = next(attr for attr in op_def.attr if attr.name == "T").allowed_values.list.type
    return dtype.as_datatype_enum in allowed


def _replica_device_type(strategy: tf.distribute.Strategy) -> str:
    devices = strategy.extended.worker_devices
    return "GPU" if any(tf.DeviceSpec.from_string(d).device_type == "GPU" for d in devices) else "CPU"


def choose_all_reduce_dtype(choice: str, policy: str, op_name: str) -> tf.DType | None:
    """The dtype gradients are cast to before `op_name` sums them; None leaves them as computed.

    `auto` sums in bfloat16 under mixed_bfloat16 (half the bytes on the wire)
    where the all-reduce op accepts it, else in float32. mixed_float16's
    gradients are loss-scaled and stay float32.

    Raises:
      ClusterError: `bfloat16` was asked for an op that does not accept it.
    """
    if choice == "auto":
        choice = "bfloat16" if policy == "mixed_bfloat16" and op_accepts(op_name, tf.bfloat16) else "float32"
    if choice == "bfloat16" and not op_accepts(op_name, tf.bfloat16):
        raise ClusterError(
            f"--all_reduce_dtype=bfloat16: {op_name}, which sums the gradients here, does not accept bfloat16; "
            "use --all_reduce_dtype=auto or float32"
        )
    return tf.bfloat16 if choice == "bfloat16" else None


def gradient_all_reduce_dtype(choice: str, policy: str, strategy: tf.distribute.Strategy) -> tf.DType | None:
    """`choose_all_reduce_dtype` for the op `strategy` sums gradients with; None with one replica.

    Args:
      choice: `TrainConfig.all_reduce_dtype` ("auto", "float32" or "bfloat16").
      policy: the model's resolved Keras dtype policy.
      strategy: the run's strategy.
    """
    if strategy.num_replicas_in_sync == 1:
        return None
    op_name = all_reduce_op(strategy_name(strategy), _replica_device_type(strategy))
    return choose_all_reduce_dtype(choice, policy, op_name)


def task(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None]:
    """(task_type, task_id) of this process, or (None, None) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes taking part in training (one input pipeline each)."""
    if task(strategy)[0] is None:
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("chief", [])) + len(spec.get("worker", []))


def direct_input_context(strategy: tf.distribute.Strategy) -> tf.distribute.InputContext | None:
    """This worker's `InputContext` when its only replica is its CPU in a multi-worker job, else None.

    Such a worker can feed its replica from its own dataset: tf.distribute
    would wrap that dataset in a MultiDeviceIterator (one per worker, even for
    a single device), whose per-element function calls and threads compete
    with the step for the worker's cores (the benchmark record measures both).
    With GPUs the iterator also prefetches onto the device, so it stays.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    devices = strategy.extended.worker_devices
    if len(devices) != 1 or tf.DeviceSpec.from_string(devices[0]).device_type != "CPU":
        return None
    task_type, task_id = task(strategy)
    if task_type is None:
        return None
    # TensorFlow's numbering of input pipelines: the chief first, then the workers.
    chiefs = len(strategy.cluster_resolver.cluster_spec().as_dict().get("chief", []))
    index = 0 if task_type == "chief" else task_id + chiefs
    return tf.distribute.InputContext(num_workers(strategy), index, strategy.num_replicas_in_sync)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The --strategy value that builds a strategy like this one."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default"


@functools.cache
def _compiled_sum(strategy: tf.distribute.Strategy):
    @tf.function
    def sum_over_replicas(local):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(local,)), axis=None)

    return sum_over_replicas


def all_workers_sum(strategy: tf.distribute.Strategy, value: float) -> float:
    """The sum over every replica of this worker's `value`: one compiled all-reduce (eager ones are slow)."""
    return float(_compiled_sum(strategy)(tf.constant(value, tf.float64)))


def workers_agree(strategy: tf.distribute.Strategy, value: float) -> bool:
    """True when every worker passed the same `value` (two scalar all-reduces; always True for one worker)."""
    if num_workers(strategy) == 1:
        return True
    mean = all_workers_sum(strategy, value) / strategy.num_replicas_in_sync
    return all_workers_sum(strategy, abs(value - mean)) == 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes the run's outputs.

    A single process is its own chief; in a cluster the chief is task `chief`,
    or `worker` 0 when the cluster has no `chief` task (TensorFlow's rule).
    """
    task_type, task_id = task(strategy)
    if task_type is None:
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
