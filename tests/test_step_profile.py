"""The step profile's op categories and own-time arithmetic, on a hand-made trace."""

from __future__ import annotations

import pytest

from benchmarks import step_profile


@pytest.mark.parametrize(
    ("name", "op_type", "expected"),
    [
        ("grad/block0_conv0/Conv2DBackpropFilter", "Conv2DBackpropFilter", "convolution and matmul kernels"),
        ("while/fmnist_cnn/logits/BiasAdd", "_FusedMatMul", "convolution and matmul kernels"),
        ("while/fmnist_cnn/block0_conv0_bn_1/FusedBatchNormV3", "FusedBatchNormV3", "batch norm"),
        ("while/fmnist_cnn/block0_conv0_bn/AssignMovingAvg/sub", "Sub", "batch norm"),
        ("while/fmnist_cnn/block0_conv0/convolution/Cast/Cast", "Cast", "casts"),
        ("while/body/_1/while/sgd/AssignSubVariableOp", "AssignSubVariableOp", "optimiser"),
        ("while/loss_scale_optimizer/adam/Mul", "Mul", "optimiser"),
        ("while/fmnist_cnn/block0_pool/MaxPool2d", "MaxPool", "other ops"),
    ],
)
def test_each_op_falls_in_its_category(name, op_type, expected):
    assert step_profile.category(name, op_type) == expected


def test_own_time_subtracts_nested_ops_and_skips_the_input_threads():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = {
        1: "m/block0_conv0/convolution:Conv2D",
        2: "m/block0_conv0_bn/FusedBatchNormV3:FusedBatchNormV3",
        3: "ExecutorState::Process",
        4: "m/while/sgd/Sub:Sub",
        5: "m/Cast:Cast",
    }
    for key, name in names.items():
        plane.event_metadata[key].name = name
    ps = 10**12
    compute = plane.lines.add(name="tf_Compute/1")
    for key, start, duration in ((3, 0, 10), (1, 0, 4), (5, 1, 1), (2, 5, 2), (4, 8, 1)):
        compute.events.add(metadata_id=key, offset_ps=start * ps, duration_ps=duration * ps)
    other = plane.lines.add(name="tf_Compute/2")
    other.events.add(metadata_id=1, offset_ps=0, duration_ps=3 * ps)
    data = plane.lines.add(name="tf_data_iterator_resource/1")
    data.events.add(metadata_id=1, offset_ps=0, duration_ps=100 * ps)
    totals = step_profile.op_self_times(space)
    # The convolution holds a 1 s cast: 3 s of its own on one thread, 3 s on the other.
    assert totals == {
        "convolution and matmul kernels": 6.0,
        "batch norm": 2.0,
        "casts": 1.0,
        "optimiser": 1.0,
        "other ops": 0.0,
    }


def test_amx_machines_also_profile_bf16_held_to_avx512_bf16():
    amx = step_profile.variants({"amx_bf16": True, "avx512_bf16": True})
    assert list(amx.values()) == [("float32", None), ("mixed_bfloat16", None), ("mixed_bfloat16", "AVX512_CORE_BF16")]
    plain = step_profile.variants({"amx_bf16": False, "avx512_bf16": False})
    assert list(plain) == ["float32"]
    avx512 = step_profile.variants({"amx_bf16": False, "avx512_bf16": True})
    assert list(avx512) == ["float32", "mixed_bfloat16 (AVX512_BF16)"]
