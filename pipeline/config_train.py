"""The training section of the run configuration: optimisation, schedule, precision, stopping.

Declared like every section (`pipeline.config` assembles them): each field's
`setting(...)` holds its default, help, flag, the value older runs used and
whether a resume may change it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pipeline.config_fields import parse_number_or_off, setting

BatchNormStatistics = Literal["global", "per_replica"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Schedule = Literal["constant", "cosine"]
Optimizer = Literal["adam", "adamw", "sgd"]
AllReduceDtype = Literal["auto", "float32", "bfloat16"]
InputDistribution = Literal["auto", "tf_distribute"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, precision and stopping."""

    epochs: int = setting(31, "Training epochs.", flag=True, lower=1, resumable=True)
    global_batch_size: int = setting(512, "Global batch size (all replicas together).", flag=True, lower=1)
    learning_rate: float = setting(0.4, "Peak learning rate.", flag=True, lower=0.0)
    optimizer: Optimizer = setting("sgd", "Optimiser (sgd: with Nesterov momentum).", flag=True)
    # Decoupled weight decay of the kernels (AdamW, SGD): every step shrinks
    # them by learning_rate * weight_decay. Adam ignores it.
    weight_decay: float = setting(0.005, "Decoupled weight decay of the kernels (adamw, sgd).", flag=True, lower=0.0)
    # SGD only: Nesterov momentum.
    momentum: float = setting(0.9, old=0.9)
    schedule: Schedule = "cosine"
    warmup_epochs: float = 1.0
    # Linear scaling rule: lr *= global_batch_size / base_batch_size.
    scale_learning_rate: bool = setting(
        False,
        "Scale the learning rate by the global batch over the batch it was chosen at (base_batch_size).",
        flag=True,
    )
    # The global batch `learning_rate` was chosen at. Every preset sets it to
    # its own `global_batch_size`, so `--scale_learning_rate` leaves a preset's
    # rate unchanged at its own batch and scales it in proportion at another.
    base_batch_size: int = 512
    label_smoothing: float = setting(0.0, "Label smoothing.", flag=True, lower=0.0, upper=0.99)
    # Validation, the best and final weights, the report and the export use an
    # exponential moving average of the weights (Keras optimisers' `use_ema`)
    # with this momentum; None uses the weights as trained. Batch norm's
    # moving statistics are the network's own, gathered with the trained weights.
    ema_momentum: float | None = setting(
        None,
        "Evaluate and export a moving average of the weights with this momentum (e.g. 0.99), or 'off'.",
        flag=True,
        old=None,
        parse=parse_number_or_off("ema_momentum", "0.99"),
    )
    # With `ema_momentum`: every this many optimiser steps the trained weights
    # restart from the moving average (`optimizer.restart_from_average`), the
    # Lookahead scheme of slow weights that pull the fast ones back; batch
    # norm's moving statistics are then gathered with weights near the
    # average. None: the average only watches the training.
    ema_overwrite_steps: int | None = setting(None, old=None)
    # Sharpness-aware minimisation (Foret et al., 2021): each step's gradient is
    # taken at the weights moved this far (L2) up the loss, so training seeks
    # flat minima; None is plain descent. The uphill direction comes from the
    # first `sam_ascent_fraction` of each replica's batch (each replica its
    # own, SAM's m-sharpness), one extra forward and backward pass that size.
    sam_rho: float | None = setting(
        None,
        "Sharpness-aware minimisation radius (e.g. 0.05), or 'off'.",
        flag=True,
        old=None,
        parse=parse_number_or_off("sam_rho", "0.05"),
    )
    sam_ascent_fraction: float = setting(0.25, old=0.25)
    # Stop after this many epochs without a better validation accuracy and
    # restore the best weights; None trains every epoch and keeps the last.
    early_stopping_patience: int | None = setting(
        None, "Stop after N epochs without a better val accuracy.", flag=True, lower=1, resumable=True
    )
    precision: Precision = setting(
        "auto", "Dtype policy; auto picks per hardware (docs/design.md, Precision).", flag=True
    )
    steps_per_execution: int = setting(16, "Training steps per compiled call.", flag=True, lower=1, resumable=True)
    # With several replicas, batch norm normalises with "global" statistics
    # (moments all-reduced over the global batch in every forward and backward
    # pass) or "per_replica" ones (each replica's own batch; the moving
    # statistics are averaged over the replicas after every compiled call, so
    # every replica and checkpoint holds the same ones). One replica: no
    # difference. The benchmark record compares the two.
    batch_norm_statistics: BatchNormStatistics = setting(
        "per_replica",
        "With several replicas: normalise with global-batch statistics, or each replica's own (default).",
        flag=True,
        old="global",
    )
    # The dtype the replicas' gradients are summed in. "auto": bfloat16 when
    # the precision is mixed_bfloat16 and the all-reduce op accepts bfloat16
    # (RING collectives between CPU workers, not NCCL between GPUs), else float32. A mixed_bfloat16 model's
    # gradients come out of bfloat16 arithmetic, so most of them are bfloat16
    # values already; summing them in bfloat16 halves the bytes every step
    # sends. One replica: nothing is all-reduced, no difference.
    all_reduce_dtype: AllReduceDtype = setting(
        "auto",
        "With several replicas: the dtype gradients are summed in (auto: bfloat16 under mixed_bfloat16 where the "
        "all-reduce accepts it).",
        flag=True,
        old="float32",
    )
    # How a multi-worker process's batches reach its replicas. "auto": a
    # worker whose only replica is its CPU feeds it from its own tf.data
    # iterator; every other case goes through tf.distribute's distributed
    # dataset. "tf_distribute": always through tf.distribute. The batches
    # and their order are the same either way.
    input_distribution: InputDistribution = setting(
        "auto",
        "Multi-worker input: auto feeds a worker's one CPU replica from its own iterator; tf_distribute never does.",
        flag=True,
        old="tf_distribute",
        resumable=True,  # The same batches in the same order.
    )
    # Also checkpoint inside an epoch every this many optimizer steps (long
    # epochs on preemptible machines); None checkpoints at epoch ends and on
    # SIGTERM only.
    checkpoint_every_steps: int | None = setting(
        None,
        "Also checkpoint inside an epoch every N optimizer steps (long epochs, preemptible machines).",
        flag=True,
        lower=1,
        old=None,
        resumable=True,
    )
    # XLA-compile the training step. Off: on CPU it ran the default model far
    # slower (benchmark record, execution settings); on GPUs it often pays,
    # so it stays an option.
    jit_compile: bool = setting(
        False, "XLA-compile the training step (slower on CPU; try it on GPUs).", flag=True, resumable=True
    )
    # TensorFlow's op determinism (`tf.config.experimental.enable_op_determinism`):
    # GPU kernels that sum in a varying order (cuDNN convolutions' backward
    # passes, scatter-adds) are replaced by deterministic ones, so a run
    # resumed on GPUs ends with exactly an uninterrupted run's weights. CPU
    # runs repeat exactly without it (with it they use other kernels, so
    # their results differ in the last digits); on GPUs it costs speed.
    deterministic: bool = setting(
        False,
        "TensorFlow's op determinism: exact resume and repeatable runs on GPUs, at some speed (CPUs are already).",
        flag=True,
        old=False,
    )
    seed: int = setting(0, "Random seed for initialisation, shuffling and augmentation.", flag=True)
