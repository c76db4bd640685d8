"""Times a two-worker step's parts alone; run on every worker by fmnist-launch (benchmarks/scaling.py does).

Prints one JSON line: the reference model's gradient bytes and variable
count; the gradient all-reduce packed (the strategy's options) in float32,
in the dtype training uses (`TrainConfig.all_reduce_dtype`), and as one
float32 collective per variable; and one worker's train step alone at its
per-replica batch (default strategy, this worker's threads).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time

from absl import app, flags

from benchmarks.common import latencies

flags.DEFINE_integer("repeats", 50, "Timed repetitions of each part.")
flags.DEFINE_string("data_dir", None, "Directory with the Fashion-MNIST IDX files.")
FLAGS = flags.FLAGS


def _timed(fn, repeats: int) -> float:
    """Median milliseconds of `fn()` over `repeats` calls, after one warm-up call."""
    return 1e3 * statistics.median(latencies(fn, repeats))


def main(argv) -> None:
    del argv
    from launch import common

    common.start_tensorflow()
    import tensorflow as tf

    from benchmarks.scaling import GLOBAL_BATCH, REFERENCE
    from benchmarks.throughput import our_trainer
    from pipeline import config_files
    from pipeline.cluster import strategies
    from pipeline.data import sources as data_lib
    from pipeline.model import network as models
    from pipeline.training import precision

    strategy = strategies.make_strategy("multi_worker")
    config = config_files.load_file(REFERENCE)
    with strategy.scope():
        model = models.build_model(config.model)
    grads = [tf.ones_like(v.value) for v in model.trainable_variables]
    unpacked = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=0)
    policy = precision.resolve_precision(config.train.precision)
    dtype = strategies.gradient_all_reduce_dtype(config.train.all_reduce_dtype, policy, strategy) or tf.float32
    as_trained = [tf.cast(g, dtype) for g in grads]

    @tf.function
    def packed_all_reduce():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", grads))

    @tf.function
    def all_reduce_as_trained():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", as_trained))

    @tf.function
    def per_variable_all_reduce():
        context = lambda: tf.distribute.get_replica_context()  # noqa: E731
        return strategy.run(lambda: [context().all_reduce("sum", g, options=unpacked) for g in grads])

    packed = _timed(packed_all_reduce, FLAGS.repeats)
    trained = packed if dtype == tf.float32 else _timed(all_reduce_as_trained, FLAGS.repeats)
    per_variable = _timed(per_variable_all_reduce, FLAGS.repeats)
    # One worker's compute: its share of the global batch, with the default strategy.
    per_worker = GLOBAL_BATCH // strategy.num_replicas_in_sync
    train = data_lib.load_train_test(FLAGS.data_dir)[0]
    local = config.replace(train=dataclasses.replace(config.train, global_batch_size=per_worker))
    run = our_trainer(local, train.images, train.labels, FLAGS.repeats * 4)
    start = time.perf_counter()
    examples = run()
    compute = 1e3 * (time.perf_counter() - start) / (examples / per_worker)
    print(
        json.dumps(
            {
                "gradient_bytes": sum(int(tf.size(g)) * 4 for g in grads),
                "variables": len(grads),
                "packed_ms": packed,
                "all_reduce_dtype": dtype.name,
                "all_reduce_bytes": sum(int(tf.size(g)) * dtype.size for g in grads),
                "all_reduce_ms": trained,
                "unpacked_ms": per_variable,
                "compute_ms": compute,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
