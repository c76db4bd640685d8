"""The Keras dtype policy a run trains with: `auto` resolved per hardware, and kept across resumes."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import tensorflow as tf

log = logging.getLogger(__name__)
# bfloat16 pays on a CPU only where it multiplies bf16 faster than float32.
# With AMX it does; with AVX512_BF16 alone oneDNN's bf16 kernels can be faster
# (AMD EPYC) or slower (Intel) than its float32 ones. So where the processor
# lists bf16 instructions, `auto` times a training step of a miniature of the
# model's blocks (convolutions, fused batch norm, pooling, ReLU) in both
# dtypes and keeps bf16 when it is clearly faster. A single convolution is
# too noisy and too partial a witness: between repeats its ratio spread
# across the threshold on a CPU where the whole step was clearly faster in
# bf16, so `auto` picked either precision by chance.
BF16_MIN_SPEEDUP = 1.1
PROBE_SECONDS = 0.2


def run_precision(precision: str, recorded: str | None) -> str:
    """The policy a run trains with: `recorded` (what the run trained with so far) wins over `auto`.

    Args:
      precision: the config's `train.precision`.
      recorded: the policy recorded in the workdir (`workdir.recorded_precision`), None for a new run.
    """
    if precision == "auto" and recorded is not None:
        here = resolve_precision("auto")
        if here != recorded:
            log.warning("continuing with %s, the precision this run trained with (auto picks %s here)", recorded, here)
        return recorded
    return resolve_precision(precision)


def resolve_precision(precision: str) -> str:
    """Maps `auto` to the fastest safe Keras dtype policy on this machine (docs/design.md, Precision).

    GPUs (the oldest decides): compute capability 8.0+ has bfloat16 Tensor
    Cores and float32's range, so mixed_bfloat16 needs no loss scaling; 7.x
    has float16 Tensor Cores only, so mixed_float16 with loss scaling; below
    7.0 there are no Tensor Cores and float16 gains nothing, so float32.
    CPUs: float32, or mixed_bfloat16 where the processor lists bf16
    instructions (AVX512_BF16 or AMX) and a short measurement finds a
    bfloat16 step of the default model's blocks clearly faster (`choose_cpu_precision`).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if precision == "mixed_float16" and not gpus:
        _warn_if_float16_is_slower()
    if precision != "auto":
        return precision
    if gpus:
        capability = min(
            tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))) for gpu in gpus
        )
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16" if capability >= (7, 0) else "float32"
    return _choice(measured_bf16_speedup())


@functools.cache
def _warn_if_float16_is_slower() -> None:
    """Times float16 against float32 on this CPU (once per process) and warns when float16 is the slower.

    float16 is a GPU precision (Tensor Cores); CPUs without float16
    arithmetic run its convolutions on TensorFlow's generic kernels.
    """
    ratio = speed_over_float32(block_step_rate, "float16")
    if ratio < 1.0:
        log.warning(
            "mixed_float16 on this CPU: a float16 step ran %.2fx as fast as float32; "
            "--precision=auto picks the faster of float32 and mixed_bfloat16 here",
            ratio,
        )


@functools.cache
def measured_bf16_speedup() -> float | None:
    """This CPU's `bf16_speedup` with the real probe, measured once per process."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return bf16_speedup(flags, block_step_rate)


def auto_note(precision: str) -> str:
    """For the console's precision line: what `auto` measured on this CPU, if it measured anything."""
    if precision != "auto" or not measured_bf16_speedup.cache_info().currsize:
        return ""
    speedup = measured_bf16_speedup()
    if speedup is None:
        return " (auto: no bf16 instructions on this CPU)"
    return f" (auto: a bf16 step ran {speedup:.2f}x as fast as float32 here; bf16 needs {BF16_MIN_SPEEDUP:.2f}x)"


def _choice(speedup: float | None) -> str:
    return "mixed_bfloat16" if speedup is not None and speedup >= BF16_MIN_SPEEDUP else "float32"


def choose_cpu_precision(cpu_flags: str, rate) -> str:
    """float32, or mixed_bfloat16 when the CPU has bf16 instructions and `rate` finds bf16 clearly faster.

    Args:
      cpu_flags: the processor's flags (/proc/cpuinfo).
      rate: dtype name -> training steps per second of a probe (`block_step_rate`).
    """
    return _choice(bf16_speedup(cpu_flags, rate))


def bf16_speedup(cpu_flags: str, rate) -> float | None:
    """bfloat16's training speed over float32's by `rate` (`speed_over_float32`); None without bf16 instructions."""
    if "avx512_bf16" not in cpu_flags and "amx_bf16" not in cpu_flags:
        return None
    speedup = speed_over_float32(rate, "bfloat16")
    log.debug("precision auto: a bfloat16 step trains %.2fx as fast as float32 on this CPU", speedup)
    return speedup


def speed_over_float32(rate, dtype: str) -> float:
    """`dtype`'s training speed over float32's by `rate` (dtype name -> steps per second).

    Both dtypes are timed in turn, three times each, and each one's fastest
    window compared: another process on the machine only ever slows a window,
    so the fastest is the least disturbed; a median would let a neighbour
    that slowed two of one dtype's windows tip the comparison.
    """
    rates = {"float32": [], dtype: []}
    for _ in range(3):
        for name in rates:
            rates[name].append(rate(name))
    return max(rates[dtype]) / max(rates["float32"])


@functools.cache
def _probe_step(dtype: tf.DType, batch: int):
    """Forward and backward of three blocks of two 3x3 convolutions (16, 32, 64 filters) on 28x28 inputs.

    One step per dtype and batch, traced once: each timing window reuses it.
    A new function for every window would trace again each time, and on a
    busy machine, where a window holds only a few calls, TensorFlow would
    print its warning about excessive retracing on the run's console.
    """
    images = tf.cast(tf.random.stateless_normal([batch, 28, 28, 1], seed=[0, 1]), dtype)
    shapes = ((1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64))
    kernels = [
        tf.Variable(tf.cast(tf.random.stateless_normal([3, 3, i, o], seed=[1, n]) * 0.1, dtype))
        for n, (i, o) in enumerate(shapes)
    ]

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            x = images
            for n, kernel in enumerate(kernels):
                x = tf.nn.conv2d(x, kernel, 1, "SAME")
                ones = tf.ones([kernel.shape[-1]])
                x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, ones, 0 * ones, is_training=True)
                if n % 2:
                    x = tf.nn.max_pool2d(x, 2, 2, "VALID")
                x = tf.nn.relu(x)
            loss = tf.reduce_sum(tf.cast(x, tf.float32))
        return tape.gradient(loss, kernels)[0]

    return step


def block_step_rate(dtype: str, seconds: float = PROBE_SECONDS, batch: int = 128) -> float:
    """Training steps per second of a miniature of the default model's blocks (`_probe_step`) in `dtype`."""
    step = _probe_step(tf.as_dtype(dtype), batch)
    step()  # Traced and warmed up outside the timing.
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step().numpy()
        count += 1
    return count / (time.perf_counter() - start)
