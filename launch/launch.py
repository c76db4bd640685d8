"""fmnist-launch: run a command as a local multi-worker or tuner cluster on 127.0.0.1.

  fmnist-launch --num_workers=2 -- fmnist-train --workdir=runs/mw --strategy=multi_worker
  fmnist-launch --tuner_workers=2 -- fmnist-tune --workdir=runs/tune

Across hosts use TensorFlow's own runtime via Slurm or Kubeflow (launch/cluster/).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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

# What each of our multi-process commands is launched with; another command
# of ours runs as one process, and a command not ours (a wrapper) is passed on.
_LAUNCHED_WITH = {"fmnist-train": "num_workers", "fmnist-tune": "tuner_workers"}


def _our_commands() -> dict[str, str]:
    """{module: console script} of this project, as setup.py installs them (`launch.train`: `fmnist-train`)."""
    from importlib.metadata import entry_points

    scripts = entry_points(group="console_scripts")
    return {script.module: script.name for script in scripts if script.dist and script.dist.name == "fmnist-pipeline"}


def _our_command(command: list[str]) -> str | None:
    """The fmnist-* command `command` runs, when it is one of ours."""
    ours = _our_commands()
    name = Path(command[0]).name
    if name in ours.values():
        return name
    if "-m" in command[:-1]:
        return ours.get(command[command.index("-m") + 1])
    return None


def check_command(command: list[str], flag: str) -> str | None:
    """Why `command` cannot be launched with --`flag` (num_workers or tuner_workers), or None."""
    ours = _our_command(command)
    if ours is None or _LAUNCHED_WITH.get(ours) == flag:
        return None
    if ours in _LAUNCHED_WITH:
        return f"{ours} is launched with --{_LAUNCHED_WITH[ours]}, not --{flag}"
    return f"{ours} runs as one process: run it without fmnist-launch"


def main(argv: list[str]) -> None:
    from launch import local_cluster

    command = argv[1:]
    if not command:
        common.fail("no command: fmnist-launch --num_workers=2 -- fmnist-train --workdir=DIR ...", 2)
    if (FLAGS.num_workers is None) == (FLAGS.tuner_workers is None):
        common.fail("give exactly one of --num_workers or --tuner_workers", 2)
    mismatch = check_command(command, "num_workers" if FLAGS.num_workers is not None else "tuner_workers")
    if mismatch:
        common.fail(mismatch, 2)
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
