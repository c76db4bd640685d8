"""The cluster files' fmnist-train arguments, parsed by fmnist-train's own flags."""

from __future__ import annotations

import re

import pytest
from absl import flags
from conftest import REPO

from launch import common
from launch import train as train_cli  # noqa: F401 - defines fmnist-train's flags.
from pipeline import presets
from pipeline.training import optimizer as optimizer_lib

CLUSTER = REPO / "launch" / "cluster"


def _sbatch_arguments() -> list[str]:
    """The arguments slurm.sbatch passes to fmnist-train (shell variables filled in)."""
    text = (CLUSTER / "slurm.sbatch").read_text()
    command = re.search(r"srun [^\n]*fmnist-train \\\n(.*?)\"\$@\"", text, re.S).group(1)
    arguments = [a.strip().rstrip("\\").strip() for a in command.splitlines()]
    # An array task's seed (`"${seed[@]}"`) is checked by running a job array (tests/test_slurm.py).
    return [a.replace('"$WORKDIR"', "/runs/x") for a in arguments if a and not a.startswith('"${')]


def _tfjob_arguments() -> list[str]:
    text = (CLUSTER / "tfjob.yaml").read_text()
    block = re.search(r"command:\n\s+- fmnist-train\n((?:\s+- --.*\n)+)", text).group(1)
    return [line.strip()[2:] for line in block.splitlines()]


@pytest.mark.parametrize(
    "arguments, strategy",
    # A Slurm job may be one task (its node's GPUs mirrored) or several (one cluster); a TFJob's TF_CONFIG always
    # names its cluster, of one worker or more.
    [(_sbatch_arguments(), "auto"), (_tfjob_arguments(), "multi_worker")],
    ids=["slurm", "tfjob"],
)
def test_cluster_files_train_at_their_presets_own_rate(arguments, strategy):
    assert any(a.startswith("--workdir=") for a in arguments) and f"--strategy={strategy}" in arguments
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["fmnist-train", *arguments])
        config = common.config_from_flags()
        preset = presets.preset(flags.FLAGS.preset)
    finally:
        flags.FLAGS.unparse_flags()
    rate = optimizer_lib.peak_learning_rate(config.train) / config.train.global_batch_size
    preset_rate = optimizer_lib.peak_learning_rate(preset.train) / preset.train.global_batch_size
    assert rate == pytest.approx(preset_rate, rel=1e-12), (arguments, rate, preset_rate)
