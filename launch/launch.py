"""fmnist-launch: run a command as a local multi-worker or tuner cluster on 127.0.0.1.

  fmnist-launch --num_workers=2 -- fmnist-train --workdir=runs/mw --strategy=multi_worker
  fmnist-launch --tuner_workers=2 -- fmnist-tune --workdir=runs/tune

Across hosts use TensorFlow's own runtime via Slurm or Kubeflow (launch/cluster/).
"""

from __future__ import annotations

import shutil
import sys

from absl import flags

from launch import common

flags.DEFINE_integer("num_workers", None, "MultiWorkerMirroredStrategy workers (sets TF_CONFIG).", lower_bound=1)
flags.DEFINE_integer("tuner_workers", None, "KerasTuner workers besides the oracle chief.", lower_bound=1)
flags.DEFINE_boolean(
    "pin_cores", True, "Run each worker on its own share of the cores (Linux); --nopin_cores lets them run anywhere."
)
flags.DEFINE_list(
    "gpus",
    None,
    "GPU ids to share out, each process its own consecutive share (CUDA_VISIBLE_DEVICES); "
    "default: CUDA_VISIBLE_DEVICES, else every GPU the NVIDIA driver lists. --gpus= uses none.",
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    from launch import local_cluster

    command = argv[1:]
    if not command:
        common.fail("no command: fmnist-launch --num_workers=2 -- fmnist-train --workdir=DIR ...", 2)
    if (FLAGS.num_workers is None) == (FLAGS.tuner_workers is None):
        common.fail("give exactly one of --num_workers or --tuner_workers", 2)
    if shutil.which(command[0]) is None:
        common.fail(f"command {command[0]!r} not found on PATH (is the project installed: pip install -e .?)", 2)
    from pipeline.cluster import environment as cluster_env

    gpus = cluster_env.visible_gpus() if FLAGS.gpus is None else FLAGS.gpus
    try:
        if FLAGS.num_workers is not None:
            tasks = local_cluster.tf_config_tasks(FLAGS.num_workers, FLAGS.pin_cores, gpus)
        else:
            tasks = local_cluster.tuner_tasks(FLAGS.tuner_workers, FLAGS.pin_cores, gpus)
    except cluster_env.ClusterError as e:
        common.fail(str(e), 2)
    if FLAGS.num_workers is not None:
        print(local_cluster.open_ports_warning(tasks), file=sys.stderr, flush=True)
    sys.exit(local_cluster.run_cluster(tasks, command))


def run() -> None:
    """Console-script entry point."""
    common.run_app(main, __name__)


if __name__ == "__main__":
    run()
