"""`--precision=auto` on CPUs: bf16 only where the processor lists bf16 instructions and measures it clearly faster."""

from __future__ import annotations

import pytest

from pipeline.training import precision


def _rates(float32: float, bfloat16: float, calls: list):
    def rate(dtype: str) -> float:
        calls.append(dtype)
        return {"float32": float32, "bfloat16": bfloat16}[dtype]

    return rate


@pytest.mark.parametrize(
    "flags, float32, bfloat16, expected",
    [
        ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", 300.0, 750.0, "mixed_bfloat16"),  # AMX: bf16 far faster.
        ("fpu avx512f avx512_bf16", 310.0, 200.0, "float32"),  # AVX512_BF16 alone: bf16 slower.
        ("fpu avx512f avx512_bf16", 300.0, 315.0, "float32"),  # Faster, not clearly: within the probe's noise.
        ("fpu avx512f avx512_bf16", 300.0, 450.0, "mixed_bfloat16"),  # AVX512_BF16 alone, bf16 clearly faster.
    ],
)
def test_auto_picks_bf16_only_where_it_measures_clearly_faster(flags, float32, bfloat16, expected):
    calls = []
    assert precision.choose_cpu_precision(flags, _rates(float32, bfloat16, calls)) == expected
    assert calls == ["float32", "bfloat16"] * 3  # In turns, three each.


def test_auto_measures_nothing_without_bf16_instructions():
    calls = []
    assert precision.choose_cpu_precision("fpu sse avx2 avx512f", _rates(1.0, 9.0, calls)) == "float32"
    assert calls == []


def test_the_probe_trains_the_default_models_blocks_in_both_dtypes():
    assert precision.block_step_rate("float32", seconds=0.05, batch=8) > 0
    assert precision.block_step_rate("bfloat16", seconds=0.05, batch=8) > 0


def test_every_timing_window_reuses_one_traced_probe_step():
    # On a busy machine a window holds only a few calls; a step traced anew per window made TensorFlow
    # print its excessive-retracing warning on the run's console.
    import tensorflow as tf

    for _ in range(3):
        precision.block_step_rate("float32", seconds=0.01, batch=4)
    assert precision._probe_step(tf.float32, 4).experimental_get_tracing_count() == 1


def test_a_busy_neighbour_slowing_two_of_one_dtypes_windows_does_not_tip_the_choice():
    # bf16 runs 1.5x float32 on this CPU, but another process halved two of its three windows.
    bf16_windows = iter([225.0, 450.0, 225.0])
    rates = {"float32": lambda: 300.0, "bfloat16": lambda: next(bf16_windows)}
    assert precision.choose_cpu_precision("fpu avx512f avx512_bf16", lambda dtype: rates[dtype]()) == "mixed_bfloat16"


def test_mixed_float16_on_a_cpu_warns_once_with_float16s_measured_speed(monkeypatch, caplog):
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(precision, "block_step_rate", lambda dtype: {"float32": 10.0, "float16": 2.0}[dtype])
    precision._warn_if_float16_is_slower.cache_clear()
    with caplog.at_level("WARNING", logger=precision.__name__):
        assert precision.resolve_precision("mixed_float16") == "mixed_float16"
        assert precision.resolve_precision("mixed_float16") == "mixed_float16"
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "mixed_float16 on this CPU: a float16 step ran 0.20x as fast as float32; "
        "--precision=auto picks the faster of float32 and mixed_bfloat16 here"
    ]
    precision._warn_if_float16_is_slower.cache_clear()
