"""mixed_float16 with several replicas: one overflow decision for all, and training that matches float32."""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import run, smoke_train_command, subprocess_env

from pipeline import config_files, presets

# One step in which only replica 1's gradients overflow. Argument: "mirrored"
# (2 logical CPUs, Keras's merge-call path) or "multi_worker" (one replica per
# process, the no-merge-call path).
INJECT_SCRIPT = """
import json, sys
import numpy as np
from pipeline.cluster import strategies
from pipeline import presets
if sys.argv[1] == "mirrored":
    strategies.use_logical_cpus(2)
import keras
import tensorflow as tf
from pipeline import config
from pipeline.training import optimizer as optimizer_lib

if sys.argv[1] == "mirrored":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    strategy = strategies.make_strategy("multi_worker")
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, dtype="mixed_float16")])
    optimizer = optimizer_lib.build_optimizer(presets.preset("smoke").train, 10, "mixed_float16")
    optimizer.build(model.trainable_variables)
before = [v.numpy() for v in model.trainable_variables]

@tf.function
def step(x):
    def replica_step(x):
        with tf.GradientTape() as tape:
            loss = optimizer.scale_loss(tf.reduce_sum(tf.cast(model(x), tf.float32)) / 8)
        grads = tape.gradient(loss, model.trainable_variables)
        overflow = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 1)
        grads = [tf.where(overflow, g * np.inf, g) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    strategy.run(replica_step, args=(x,))

step(tf.ones([8, 4]))
local = lambda v: [t.numpy() for t in strategy.experimental_local_results(v.value)]
replicas = list(zip(*[local(v) for v in model.trainable_variables]))
print(json.dumps({
    "unchanged": [all(np.array_equal(a, b) for a, b in zip(r, before)) for r in replicas],
    "scales": [float(s) for s in local(optimizer.dynamic_scale)],
    "initial_scale": optimizer.initial_scale,
}))
"""


def _results(stdout: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"^(?:\[worker \d\] )?(\{.*\"unchanged\".*\})$", stdout, re.M)]


def test_an_overflow_on_one_replica_skips_the_step_on_every_replica():
    done = run([sys.executable, "-c", INJECT_SCRIPT, "mirrored"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = _results(done.stdout)
    assert result["unchanged"] == [True, True], "no replica applies the step"
    assert result["scales"] == [result["initial_scale"] / 2] * 2, "every replica halves its loss scale"


@pytest.mark.slow
def test_an_overflow_on_one_worker_skips_the_step_on_every_worker(tmp_path):
    env = dict(subprocess_env(), TMPDIR=str(tmp_path))
    launch = [sys.executable, "-m", "launch.launch", "--num_workers=2", "--"]
    done = run([*launch, sys.executable, "-c", INJECT_SCRIPT, "multi_worker"], timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    results = _results(done.stdout)
    assert len(results) == 2, done.stdout[-3000:]
    for result in results:
        assert result["unchanged"] == [True] and result["scales"] == [result["initial_scale"] / 2]


@pytest.mark.slow
def test_mixed_float16_on_two_replicas_trains_as_well_as_float32(real_data_dir, tmp_path):
    # The smoke model, trained long enough to settle, evaluated on the whole test set in a single view (the
    # views would multiply the evaluation's cost, and training is what is compared).
    smoke = config_files.to_dict(presets.preset("smoke"))
    smoke["data"].update(max_train_examples=20000, max_eval_examples=None)
    smoke["model"].update(test_time_augmentation="none")
    smoke["train"].update(epochs=3)
    (tmp_path / "short.json").write_text(json.dumps(smoke))
    accuracy = {}
    for precision in ("float32", "mixed_float16"):
        workdir = tmp_path / precision
        command = smoke_train_command(
            workdir,
            real_data_dir,
            f"--config={tmp_path / 'short.json'}",
            "--strategy=mirrored",
            "--logical_cpus=2",
            f"--precision={precision}",
            "--noexport",
            "--noreport",
        )
        done = run(command, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((workdir / "metrics.json").read_text())
        assert metrics["precision"] == precision and metrics["replicas"] == 2
        assert metrics["examples"]["test"] == 10000
        accuracy[precision] = metrics["test_accuracy"]
    assert abs(accuracy["mixed_float16"] - accuracy["float32"]) <= 0.015, accuracy
