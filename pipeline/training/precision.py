"""The Keras dtype policy a run trains with: `auto` resolved per hardware, and kept across resumes."""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

log = logging.getLogger(__name__)


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
    CPUs: bfloat16 where the processor has native bf16 math (AVX512_BF16 or
    AMX), else float32.
    """
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = min(
            tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))) for gpu in gpus
        )
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16" if capability >= (7, 0) else "float32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
