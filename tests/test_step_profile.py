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


def test_each_processor_also_stands_in_for_the_older_kinds_of_cpu():
    amx = step_profile.variants({"amx_bf16": True, "avx512_bf16": True})
    assert list(amx.values()) == [
        ("float32", None, "AMX"),
        ("mixed_bfloat16", None, "AMX"),
        ("float32", "AVX512_CORE_BF16", "AVX512_BF16 without AMX"),
        ("mixed_bfloat16", "AVX512_CORE_BF16", "AVX512_BF16 without AMX"),
        ("float32", "AVX512_CORE", "no bf16 instructions"),
        ("mixed_bfloat16", "AVX512_CORE", "no bf16 instructions"),
    ]
    avx512 = step_profile.variants({"amx_bf16": False, "avx512_bf16": True})
    assert list(avx512) == [
        "float32 (AVX512_BF16)",
        "mixed_bfloat16 (AVX512_BF16)",
        "float32 (no bf16 instructions, ONEDNN_MAX_CPU_ISA=AVX512_CORE)",
        "mixed_bfloat16 (no bf16 instructions, ONEDNN_MAX_CPU_ISA=AVX512_CORE)",
    ]
    # Without bf16 instructions auto picks float32 without measuring: bf16 is not profiled.
    plain = step_profile.variants({"amx_bf16": False, "avx512_bf16": False})
    assert list(plain) == ["float32 (no bf16 instructions)"]
    # A processor already held with ONEDNN_MAX_CPU_ISA (its children inherit it) is that one kind.
    held = step_profile.variants({"amx_bf16": True, "avx512_bf16": True, "onednn_max_cpu_isa": "AVX512_CORE"})
    assert list(held.values()) == [
        ("float32", None, "held to AVX512_CORE"),
        ("mixed_bfloat16", None, "held to AVX512_CORE"),
    ]


def _child(rate, picks, speedup=None):
    ops = dict.fromkeys(step_profile.CATEGORIES, 0.01)
    return {"examples/s": rate, "step seconds": 0.1, "ops": ops, "auto picks": picks, "auto bf16 speedup": speedup}


def test_auto_rows_say_whether_auto_picked_the_faster_precision():
    cpu = {"amx_bf16": True, "avx512_bf16": True}
    names = list(step_profile.variants(cpu))
    rates = [4000, 8400, 4000, 4200, 4000, 2000]  # AMX: bf16 faster; without AMX: about even; no bf16: slower.
    picks = ["mixed_bfloat16", "mixed_bfloat16", "float32", "float32", "float32", "mixed_bfloat16"]
    results = {name: [_child(rate, pick, 1.5)] for name, rate, pick in zip(names, rates, picks, strict=True)}
    rows = step_profile.auto_rows(results, cpu)
    assert [row["kind of CPU"] for row in rows] == [
        "AMX (this processor)",
        "AVX512_BF16 without AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)",
        "no bf16 instructions (ONEDNN_MAX_CPU_ISA=AVX512_CORE)",
    ]
    assert rows[0]["auto picks the faster"] == "yes" and rows[0]["step, bf16 / float32"] == 2.1
    assert rows[1]["auto picks the faster"].startswith("within auto's margin")
    assert rows[2]["auto picks (of its processes)"] == "float32 1/2, mixed_bfloat16 1/2"
    assert rows[2]["auto picks the faster"] == "no"
    plain = {"amx_bf16": False, "avx512_bf16": False}
    only = step_profile.auto_rows({"float32 (no bf16 instructions)": [_child(3000, "float32")]}, plain)
    assert only[0]["auto's probe, bf16 / float32"] == "not measured" and only[0]["auto picks the faster"] == "yes"
