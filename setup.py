"""Fashion-MNIST reference training pipeline: tf.data, distributed training, tuning, serving export."""

from setuptools import find_packages, setup

# Compatible ranges; constraints.txt pins the exact versions the tests run on.
# TensorFlow does not depend on tensorboard (KerasTuner needs it), and
# tensorflow-datasets needs importlib_resources: both are listed here.
INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.12,<4",
    "keras-tuner>=1.4.8,<1.5",
    "scikit-learn>=1.3",  # KerasTuner's Bayesian oracle.
    "tensorflow-datasets>=4.9.10,<5",
    "tensorboard>=2.21,<2.22",
    "importlib_resources>=6",
    "tensorflow-serving-api>=2.21,<2.22",
    "absl-py>=2.1",
    "numpy>=1.26,<3",
    "matplotlib>=3.7",
]
TEST_REQUIRES = ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.15,<0.18", "pillow>=10"]

setup(
    name="fmnist-pipeline",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
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
