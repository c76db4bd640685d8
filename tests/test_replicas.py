"""Several replicas in one process (logical CPUs): mirrored training equals one replica, and the gradient all-reduce
sums in bfloat16 only where TensorFlow's collective accepts it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import subprocess_env


@pytest.mark.parametrize(
    "ema, overwrite, precision",
    [(None, None, "auto"), (0.9, None, "auto"), (0.9, 3, "float32")],
    ids=["trained_weights", "moving_average", "lookahead"],
)
def test_mirrored_over_two_cpus_matches_default(tiny_data_dir, tmp_path, ema, overwrite, precision):
    # BN statistics and dropout masks are per replica by design, so compare on
    # the architecture where the two strategies must agree to float rounding.
    # The optimiser's moving average of the weights is kept on every replica
    # alike, and copied into every replica's weights alike. Restarting from
    # the average is checked in float32: in mixed_bfloat16 the two replicas'
    # gradients are summed in bfloat16, and on this short run the restarts
    # carry that rounding past the tolerance.
    script = f"""
import dataclasses, json
from pipeline.cluster import strategies
strategies.use_logical_cpus(2)
import tensorflow as tf
from pipeline import config as C, presets
from pipeline.training.driver import train_and_evaluate
base = presets.preset("smoke")
config = base.replace(
    data=C.DataConfig(data_dir={str(tiny_data_dir)!r}, validation_size=64),
    model=dataclasses.replace(base.model, batch_norm=False, dropout=None),
    augment=C.AugmentConfig(enabled=False), train=dataclasses.replace(base.train, epochs=2, ema_momentum={ema},
                                                          ema_overwrite_steps={overwrite}, precision={precision!r}))
out = {{}}
for name, strategy in [("default", tf.distribute.get_strategy()),
                       ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
    out[name] = train_and_evaluate(config, {str(tmp_path)!r} + "/" + name, strategy, progress=False)
print(json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mirrored"]["replicas"] == 2 and out["default"]["replicas"] == 1
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert np.isclose(out["mirrored"][key], out["default"][key], atol=2e-3), key


def test_gradients_are_summed_in_bfloat16_only_where_asked_and_the_all_reduce_accepts_it():
    from tensorflow.python.framework import op_def_registry

    from pipeline.cluster import strategies

    for kind, device in (("mirrored", "CPU"), ("mirrored", "GPU"), ("multi_worker", "CPU"), ("multi_worker", "GPU")):
        op = strategies.all_reduce_op(kind, device)
        op_def = op_def_registry.get(op)
        allowed = next(a for a in op_def.attr if a.name == "T").allowed_values.list.type
        accepts = tf.bfloat16.as_datatype_enum in allowed  # TensorFlow's own definition decides.
        chosen = strategies.choose_all_reduce_dtype("auto", "mixed_bfloat16", op)
        assert chosen == (tf.bfloat16 if accepts else None), (kind, device, op)
        assert strategies.choose_all_reduce_dtype("auto", "float32", op) is None
        assert strategies.choose_all_reduce_dtype("auto", "mixed_float16", op) is None  # Loss-scaled: float32.
        assert strategies.choose_all_reduce_dtype("float32", "mixed_bfloat16", op) is None
        if accepts:
            assert strategies.choose_all_reduce_dtype("bfloat16", "float32", op) == tf.bfloat16
        else:
            with pytest.raises(strategies.ClusterError, match="does not accept bfloat16"):
                strategies.choose_all_reduce_dtype("bfloat16", "mixed_bfloat16", op)
    # Between GPUs the gradients go through NCCL; between CPU workers through RING collectives.
    assert strategies.all_reduce_op("mirrored", "GPU") == strategies.all_reduce_op("multi_worker", "GPU")
    assert strategies.all_reduce_op("multi_worker", "CPU") == "CollectiveReduceV2"
    # One replica: nothing is summed.
    one = tf.distribute.get_strategy()
    assert strategies.gradient_all_reduce_dtype("bfloat16", "mixed_bfloat16", one) is None


def test_a_bfloat16_all_reduce_keeps_replicas_identical_and_close_to_float32(tiny_data_dir, tmp_path):
    script = f"""
import dataclasses, json
from pathlib import Path
from pipeline.cluster import strategies
strategies.use_logical_cpus(2)
import numpy as np
import tensorflow as tf
from pipeline import config as C, presets
from pipeline.data import sources as data_lib
from pipeline.data import input_pipeline as ip
from pipeline.training import loop, steps
from pipeline.training import state as train_state
base = presets.preset("smoke")
weights = {{}}
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # One: a second would reuse collective keys.
for dtype in ("float32", "bfloat16"):
    config = base.replace(
        data=C.DataConfig(data_dir={str(tiny_data_dir)!r}, validation_size=64),
        train=dataclasses.replace(base.train, all_reduce_dtype=dtype))
    dataset = data_lib.load(config.data)
    steps_per_epoch = ip.steps_per_epoch(len(dataset.train), config.train.global_batch_size)
    state = train_state.build_state(config, strategy, "float32", steps_per_epoch, Path({str(tmp_path)!r}) / dtype,
                                    dataset.train.images)
    train_fn, _ = ip.distributed_datasets(config, strategy, dataset)
    train_steps = steps.make_train_steps(strategy, state.model, state.optimizer, config.train, state.policy)
    train_steps(iter(train_fn(1, 0)), tf.constant(4), tf.zeros([3], tf.float64))
    replicas = [[v.value.values[i].numpy() for v in state.model.trainable_variables] for i in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*replicas))
    weights[dtype] = replicas[0]
differences = [float(np.max(np.abs(a - b))) for a, b in zip(weights["float32"], weights["bfloat16"])]
print(json.dumps({{"max": max(differences)}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    difference = json.loads(done.stdout.strip().splitlines()[-1])["max"]
    # Float32 gradients rounded to bfloat16 (8 bits of mantissa): the weights move a little differently.
    assert 0 < difference < 1e-2, difference


def test_a_resume_on_other_replicas_continues_and_says_it_is_not_exact():
    from pipeline.training import loop

    one = tf.distribute.get_strategy()
    epoch = {"epoch": 3, "workers": 2, "replicas": 4}
    # The checkpoint says where it was written, at an epoch's end or inside the next one.
    note = loop.topology_change((2, 4), [epoch], one, epoch=3, epoch_step=0)
    assert "epoch 3 trained on 2 worker(s), 4 replica(s) in all; this resume trains on 1 worker(s), 1" in note
    assert "not exactly" in note and "rest of epoch" not in note
    inside = loop.topology_change((2, 2), [], one, epoch=0, epoch_step=492)
    assert inside.startswith("epoch 1's first 492 steps trained on 2 worker(s), 2 replica(s) in all")
    assert inside.endswith("the rest of epoch 1 is drawn from the new shards")
    assert loop.topology_change((1, 1), [epoch], one, epoch=3, epoch_step=5) is None
    # A checkpoint written before checkpoints recorded it: the last epoch of the history says.
    assert "epoch 3 trained on 2 worker(s), 4" in loop.topology_change(None, [epoch], one, epoch=3, epoch_step=0)
    assert loop.topology_change(None, [epoch | {"workers": 1, "replicas": 1}], one, epoch=3, epoch_step=5) is None
    # Nothing trained yet, or epochs recorded before they said where they trained: nothing to compare.
    assert loop.topology_change(None, [], one, epoch=0, epoch_step=5) is None
    assert loop.topology_change(None, [{"epoch": 3}], one, epoch=3, epoch_step=0) is None


def test_a_run_resumed_on_two_replicas_records_where_each_epoch_trained(tiny_data_dir, tmp_path):
    script = f"""
import dataclasses, json, logging
from pipeline.cluster import strategies
strategies.use_logical_cpus(2)
import tensorflow as tf
from pipeline import config as C, presets
from pipeline.training.driver import train_and_evaluate
logging.basicConfig(level=logging.INFO)
base = presets.preset("smoke")
config = base.replace(data=C.DataConfig(data_dir={str(tiny_data_dir)!r}, validation_size=64))
quiet = dict(progress=False, make_report=False, export=False)
train_and_evaluate(config, {str(tmp_path)!r}, tf.distribute.get_strategy(), **quiet)
longer = config.replace(train=dataclasses.replace(config.train, epochs=2))
metrics = train_and_evaluate(longer, {str(tmp_path)!r}, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), **quiet)
# A rerun of the finished run, on one replica again, trains nothing and has nothing to say about it.
train_and_evaluate(longer, {str(tmp_path)!r}, tf.distribute.get_strategy(), **quiet)

class StopAfterOneCall:  # A SIGTERM that arrives during the first epoch.
    signum, calls = 15, 1
    def agreed(self, strategy):
        self.calls -= 1
        return self.calls < 0
from pipeline.training import preemption
try:
    train_and_evaluate(config, {str(tmp_path / "stopped")!r}, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                       stop=StopAfterOneCall(), **quiet)
except preemption.TrainingStopped:
    pass
# No epoch completed, so only the checkpoint can say where its steps trained.
train_and_evaluate(config, {str(tmp_path / "stopped")!r}, tf.distribute.get_strategy(), **quiet)
print(json.dumps(metrics["replicas"]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == 2
    assert "epoch 1 trained on 1 worker(s), 1 replica(s) in all; this resume trains on 1 worker(s), 2" in done.stderr
    assert re.search(
        r"epoch 1's first \d+ steps trained on 1 worker\(s\), 2 replica\(s\) in all; this resume trains on "
        r"1 worker\(s\), 1 replica\(s\).*the rest of epoch 1 is drawn from the new shards",
        done.stderr,
    )
    assert done.stderr.count("this resume trains on") == 2
    history = json.loads((tmp_path / "history.json").read_text())
    assert [(e["epoch"], e["workers"], e["replicas"]) for e in history] == [(1, 1, 1), (2, 1, 2)]
