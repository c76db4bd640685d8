"""The strategy's rules without a cluster: TF_CONFIG parsing, the chief, input feeding, collectives."""

from __future__ import annotations

import pytest
import tensorflow as tf
from helpers import MALFORMED_TF_CONFIG_CASES

from pipeline.cluster import environment as cluster_env
from pipeline.cluster import strategies


@pytest.mark.parametrize("tf_config, message", MALFORMED_TF_CONFIG_CASES)
def test_malformed_tf_config_is_a_clear_error(tf_config, message):
    with pytest.raises(strategies.ClusterError, match=message):
        cluster_env.parse_tf_config(tf_config)


def test_chief_rule():
    assert strategies.is_chief(tf.distribute.get_strategy())


def test_only_a_multi_worker_process_with_one_cpu_replica_feeds_it_directly():
    # One process: its datasets go through the strategy (a no-op for the default one).
    assert strategies.direct_input_context(tf.distribute.get_strategy()) is None
    assert strategies.direct_input_context(tf.distribute.MirroredStrategy(["/cpu:0"])) is None


def test_collectives_are_packed_ring_on_cpus_and_nccl_on_gpus():
    implementation = tf.distribute.experimental.CommunicationImplementation
    cpu, gpu = strategies.communication_options(0), strategies.communication_options(2)
    assert cpu.implementation == implementation.RING and gpu.implementation == implementation.NCCL
    assert cpu.bytes_per_pack == gpu.bytes_per_pack == strategies.BYTES_PER_PACK > 0
    # No timeout: TensorFlow would keep a sleeping thread per collective for the whole timeout.
    assert cpu.timeout_seconds is None and gpu.timeout_seconds is None
