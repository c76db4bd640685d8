"""Shared fixtures: tiny synthetic IDX data sets and the real data beside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import helpers
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"


def make_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Learnable synthetic images: class k lights up row band k, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
    for k in range(10):
        images[labels == k, 2 + 2 * k : 4 + 2 * k, 4:24] = 250
    return images


def write_dataset(directory: Path, n_train: int = 640, n_test: int = 160, compress: bool = True) -> Path:
    """Writes four IDX files with `n_train` / `n_test` examples; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        stem = "t10k" if part == "test" else "train"
        suffix = ".gz" if compress else ""
        helpers.write_idx(directory / f"{stem}-images-idx3-ubyte{suffix}", make_images(labels, n), compress)
        helpers.write_idx(directory / f"{stem}-labels-idx1-ubyte{suffix}", labels, compress)
    return directory


@pytest.fixture(scope="session")
def machine_precision() -> str:
    """What `--precision=auto` picks on this machine, resolved once.

    Runs that a test compares with each other pass it explicitly: `auto`
    measures, and on a loaded machine two separate runs can measure on
    either side of its threshold and train in different precisions.
    """
    from pipeline.training import precision

    return precision.resolve_precision("auto")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def long_data_dir(tmp_path_factory) -> Path:
    """Enough synthetic images for epochs of about 180 smoke-model steps (a second or more)."""
    return write_dataset(tmp_path_factory.mktemp("long_data"), n_train=11600, n_test=160)


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
    """A finished smoke run on the tiny data, exported as version 1: (workdir, metrics)."""
    import tensorflow as tf

    from pipeline import config as config_lib
    from pipeline import presets
    from pipeline.training.driver import train_and_evaluate

    workdir = tmp_path_factory.mktemp("run")
    base = presets.preset("smoke")
    config = base.replace(data=config_lib.DataConfig(data_dir=str(tiny_data_dir), validation_size=64))
    metrics = train_and_evaluate(config, workdir, tf.distribute.get_strategy(), progress=False, make_report=False)
    return workdir, metrics


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real Fashion-MNIST not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _no_ambient_data(monkeypatch):
    # Tests name their data explicitly; a developer's environment must not leak in.
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)


LAUNCH = [sys.executable, "-m", "launch.launch"]


def fmnist_train(workdir, data_dir, *extra: str) -> list[str]:
    """The installed `fmnist-train --preset=smoke` on `data_dir`, without export or report."""
    return [
        "fmnist-train",
        f"--workdir={workdir}",
        "--preset=smoke",
        f"--data_dir={data_dir}",
        "--noexport",
        "--noreport",
        *extra,
    ]


def scratch_env(tmp_path: Path) -> tuple[dict, Path]:
    """`subprocess_env` with TMPDIR in a fresh directory under tmp_path (where workers write); both returned."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return dict(subprocess_env(), TMPDIR=str(scratch)), scratch


def smoke_train_command(workdir, data_dir, *extra: str) -> list[str]:
    """`fmnist-train --preset=smoke` on `data_dir`, with the running interpreter."""
    return [
        sys.executable,
        "-m",
        "launch.train",
        f"--workdir={workdir}",
        "--preset=smoke",
        f"--data_dir={data_dir}",
        *extra,
    ]


def run(command: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a command from the repository root (env: `subprocess_env` unless given), capturing text."""
    env = subprocess_env() if env is None else env
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def assert_benchmark_flag_fails(tmp_path: Path, flag: str, message: str) -> None:
    """`python -m benchmarks.run FLAG` exits 1 with one `error:` line holding `message`, and writes no record."""
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "benchmarks.run", flag, f"--out={out}", f"--record={tmp_path / 'B.md'}"]
    done = run(command, timeout=120)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not out.exists()


def start(command: list[str], env: dict | None = None, merge_stderr: bool = False) -> subprocess.Popen:
    """Starts a command from the repository root (env: `subprocess_env` unless given), piping its text output."""
    env = subprocess_env() if env is None else env
    stderr = subprocess.STDOUT if merge_stderr else subprocess.PIPE
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_for(predicate, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Polls `predicate` until true; fails on timeout, or when `process` (if given) has exited first."""
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting"
        assert process is None or process.poll() is None, f"the process exited with {process.returncode} first"
        time.sleep(0.05)


def subprocess_env() -> dict:
    """Environment for running our entry points in a child process."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("FASHION_MNIST_DIR", None)
    return env
