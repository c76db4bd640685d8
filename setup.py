"""Fashion-MNIST reference training pipeline: tf.data, distributed training, tuning, serving export."""

from setuptools import find_packages, setup

# Pinned to the versions the test suite ran on (Python 3.11, 2026-11).
# TF 2.21 no longer depends on tensorboard (KerasTuner needs it) and
# tensorflow-datasets 4.9.10 needs importlib_resources: both are explicit.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "keras-tuner==1.4.8",
    "scikit-learn==1.9.1",  # KerasTuner's Bayesian oracle (keras-tuner[bayesian]).
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",
    "importlib_resources==7.1.0",
    "tensorflow-serving-api==2.21.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "matplotlib==3.11.2",
    "pillow==13.0.0",
]
TEST_REQUIRES = ["pytest==9.0.3", "ruff==0.17.6"]

setup(
    name="fmnist-pipeline",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "tuning", "tuning.*", "launch", "launch.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={
        "console_scripts": [
            "fmnist-train=launch.train:run",
            "fmnist-report=launch.report:run",
            "fmnist-export=launch.export:run",
            "fmnist-predict=launch.predict:run",
            "fmnist-launch=launch.launch:run",
            "fmnist-tune=launch.tune:run",
        ]
    },
)
