"""The GPU tier (`pytest -m gpu`): the paths that only a machine with NVIDIA GPUs can run.

`tests/gpu_check.sh` installs the GPU build of TensorFlow and runs this tier.
Without a GPU visible to TensorFlow the whole module skips with one line.
Each test runs the installed commands in child processes, as a user would.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time

import pytest
import tensorflow as tf
from conftest import REPO, run, start, subprocess_env, wait_for

GPUS = tf.config.list_physical_devices("GPU")
if not GPUS:
    pytest.skip(
        "no GPU visible to TensorFlow: tests/gpu_check.sh runs this tier on a GPU machine", allow_module_level=True
    )

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
REFERENCE = str(REPO / "benchmarks" / "reference_default.json")
# A short epoch of real data keeps the tier within minutes on one GPU host.
SHORT = ["--epochs=1", "--max_train_examples=20000", "--validation_size=2000"]


def _train(workdir, data_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "launch.train", f"--workdir={workdir}", f"--data_dir={data_dir}", *extra]


def _metrics(workdir) -> dict:
    return json.loads((workdir / "metrics.json").read_text())


def _fingerprints(text: str) -> list[str]:
    return re.findall(r"final weights fingerprint (\w+)", text)


def test_auto_trains_the_reference_recipe_on_every_local_gpu(real_data_dir, tmp_path):
    done = run(_train(tmp_path, real_data_dir, f"--config={REFERENCE}", *SHORT), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = _metrics(tmp_path)
    capability = tf.config.experimental.get_device_details(GPUS[0]).get("compute_capability", (0, 0))
    expected = "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16" if capability >= (7, 0) else "float32"
    assert metrics["precision"] == expected
    assert metrics["replicas"] == len(GPUS)
    assert metrics["strategy"] == ("mirrored" if len(GPUS) >= 2 else "default")
    if len(GPUS) >= 2:  # NCCL does not sum bfloat16: the log must not claim it.
        assert "gradients summed in bfloat16" not in done.stderr
    assert metrics["test_accuracy"] > 0.8


def test_mixed_float16_trains_on_gpus(real_data_dir, tmp_path):
    done = run(_train(tmp_path, real_data_dir, "--preset=fast", "--precision=mixed_float16", *SHORT), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = _metrics(tmp_path)
    assert metrics["precision"] == "mixed_float16" and metrics["test_accuracy"] > 0.8


@pytest.mark.skipif(len(GPUS) < 2, reason="two launched workers need two GPUs")
def test_two_launched_workers_each_train_on_their_own_gpu(real_data_dir, tmp_path):
    launch = [sys.executable, "-m", "launch.launch", "--num_workers=2", "--"]
    done = run([*launch, *_train(tmp_path, real_data_dir, "--preset=fast", *SHORT)], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    metrics = _metrics(tmp_path)
    assert metrics["workers"] == 2 and metrics["replicas"] == 2 * (len(GPUS) // 2)
    prints = _fingerprints(done.stdout)
    assert len(prints) == 2 and prints[0] == prints[1]
    assert not re.search(r"unhealthy|crashed|Traceback", done.stdout)


@pytest.mark.skipif(len(GPUS) < 2, reason="two launched tuners need two GPUs")
def test_two_launched_tuners_search_on_their_own_gpus_and_the_chief_retrains_on_all(real_data_dir, tmp_path):
    launch = [sys.executable, "-m", "launch.launch", "--tuner_workers=2", "--"]
    tune = [
        sys.executable,
        "-m",
        "launch.tune",
        f"--workdir={tmp_path}",
        f"--data_dir={real_data_dir}",
        "--preset=fast",
    ]
    tune += ["--tuner=random", "--max_trials=2", "--max_epochs=1", "--search_space=filters", "--retrain_best", *SHORT]
    done = run([*launch, *tune], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "[tuner0]" in done.stdout and "[tuner1]" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Each tuner sees its own share of the GPUs; the chief, which retrains, sees them all.
    assert summary["trials"] == 2 and summary["retrained"]["replicas"] == len(GPUS)
    # The tuners give out every GPU (shares differ by one where they do not divide evenly).
    trained_on = {json.loads(h.read_text())[-1]["replicas"] for h in tmp_path.glob("search/trial_*/history.json")}
    assert trained_on <= {len(GPUS) // 2, len(GPUS) - len(GPUS) // 2}, trained_on
    assert not re.search(r"unhealthy|crashed|Traceback", done.stdout)


@pytest.mark.skipif(len(GPUS) < 2, reason="two launched tuners need two GPUs")
def test_a_launched_search_without_a_retrain_leaves_every_gpu_to_its_tuners(real_data_dir, tmp_path):
    # The chief hides the GPUs from itself before TensorFlow initialises them (it would fail after).
    launch = [sys.executable, "-m", "launch.launch", "--tuner_workers=2", "--"]
    tune = [sys.executable, "-m", "launch.tune", f"--workdir={tmp_path}", f"--data_dir={real_data_dir}"]
    tune += ["--preset=fast", "--tuner=random", "--max_trials=2", "--max_epochs=1", "--search_space=filters", *SHORT]
    done = run([*launch, *tune], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trials"] == 2 and "retrained" not in summary
    assert not re.search(r"unhealthy|crashed|Traceback", done.stdout)


def test_an_export_from_a_gpu_run_serves_on_cpu_as_trained(real_data_dir, tmp_path):
    done = run(_train(tmp_path, real_data_dir, "--preset=fast", *SHORT), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    cpu_only = dict(subprocess_env(), CUDA_VISIBLE_DEVICES="")
    export = tmp_path / "export" / "1"
    served = run([sys.executable, "benchmarks/verify_export.py", str(export), str(real_data_dir)], 900, cpu_only)
    assert served.returncode == 0, served.stderr[-3000:]
    result = json.loads(served.stdout)
    assert result["difference_points"] < 0.1 and result["bytes_signature_agrees"] == 1.0


def test_sigterm_and_resume_on_gpus_end_with_the_uninterrupted_weights(real_data_dir, tmp_path):
    command = ["--preset=fast", "--deterministic", "--epochs=2", "--max_train_examples=20000", "--noexport"]
    reference = run(_train(tmp_path / "reference", real_data_dir, *command), timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]
    workdir = tmp_path / "run"
    child = start(_train(workdir, real_data_dir, *command))
    wait_for((workdir / "history.json").exists, timeout=600, process=child)
    time.sleep(0.5)  # Into epoch 2.
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 143, stderr[-3000:]
    resumed = run(_train(workdir, real_data_dir, *command), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert _fingerprints(resumed.stderr) == _fingerprints(reference.stderr)


def test_gpus_that_cuda_cannot_open_stop_training_instead_of_falling_back_to_the_cpu(real_data_dir, tmp_path):
    # An id past the machine's GPUs: CUDA opens none, as with a driver it cannot load.
    missing = dict(subprocess_env(), CUDA_VISIBLE_DEVICES=str(len(GPUS) + 7))
    done = run(_train(tmp_path / "w", real_data_dir, "--preset=smoke"), timeout=300, env=missing)
    assert done.returncode == 1 and "gives this process GPUs, but TensorFlow sees none" in done.stderr
    assert not (tmp_path / "w").exists()
