#!/usr/bin/env bash
# The GPU tier on a machine with NVIDIA GPUs: installs the GPU build of
# TensorFlow (pinned like the rest, constraints.txt) in its own virtualenv and
# runs `pytest -m gpu` on the real data beside the checkout
# (../shared/data/fashion-mnist, as the other real-data tests). At most about
# 10 minutes on one GPU host.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q -c constraints.txt -e '.[test]' 'tensorflow[and-cuda]'
python -c 'import tensorflow as tf; gpus = tf.config.list_physical_devices("GPU"); print(f"TensorFlow {tf.__version__} sees {len(gpus)} GPU(s)"); assert gpus, "no GPU visible"'
python -m pytest -q -m gpu tests/test_gpu.py
