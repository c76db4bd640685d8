"""Typed, frozen run configuration: every field declared once, with every default.

Each field's `setting(...)` holds its help text, its flag, its value for runs
recorded before it existed and whether a resume may change it; the flags, the
old-run fill-in, the resume check and the README's flag list derive from it
(`pipeline.config_fields`).
Reading, checking and writing configs is `pipeline.config_files`; named
presets are `pipeline.presets`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pipeline import config_fields
from pipeline.config_fields import ConfigError as ConfigError  # Callers catch `config.ConfigError`.
from pipeline.config_fields import parse_filters, parse_number_or_off, setting

BatchNormKernel = Literal["fused", "keras"]
BatchNormStatistics = Literal["global", "per_replica"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Schedule = Literal["constant", "cosine"]
Optimizer = Literal["adam", "adamw", "sgd"]
FlipMode = Literal["random", "alternating"]
StemInit = Literal["default", "whitening"]
ConvInit = Literal["default", "identity"]
TestTimeAugmentation = Literal["none", "flip", "flip_and_shift"]
Head = Literal["dense", "global_average"]
BlockLayout = Literal["pool_last", "pool_first"]
AllReduceDtype = Literal["auto", "float32", "bfloat16"]
InputDistribution = Literal["auto", "tf_distribute"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split."""

    # None: search the standard locations in order.
    data_dir: str | None = setting(
        None, "Directory with the four Fashion-MNIST IDX files (gzipped or not).", flag=True, resumable=True
    )
    validation_size: int = setting(
        5000, "Training images held out (class-balanced) as the validation split; default 5000.", flag=True, lower=1
    )
    split_seed: int = 0
    # Cap on training examples (after the validation split); None uses all.
    # Used by the `smoke` preset and by tests, never by real runs.
    max_train_examples: int | None = setting(
        None, "Use only this many training examples (quick checks).", flag=True, lower=1
    )
    max_eval_examples: int | None = None
    # The order examples are split and sharded in. "canonical": sorted by a
    # digest of their content, so every source (IDX files, tensorflow-datasets,
    # which stores them in another order) gives the same validation split and
    # shards. "file": as the source lists them.
    order: Literal["canonical", "file"] = setting("canonical", old="file")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A family of plain CNNs; the `seed` preset is the tutorial's model."""

    # One entry per block. Two narrow convolutions per block train as fast as
    # one twice as wide on a CPU and, in the same training time, reached
    # higher validation accuracy (the benchmark record compares the recipes).
    filters: tuple[int, ...] = setting(
        (16, 32, 64), "Conv filters per block, e.g. 32,64,128.", flag=True, parse=parse_filters
    )
    convs_per_block: int = 2
    kernel_size: int = setting(3, "Conv kernel size.", flag=True, lower=1)
    padding: Literal["same", "valid"] = "same"
    # Max-pooling's padding. "valid" drops a map's last row and column when
    # its size is odd: the last block's 7x7 map pools to 3x3 from its first
    # 6x6, so a quarter of its units never reach the classifier. "same" pools
    # them too (7x7 to 4x4); the classifier's input grows, the convolutions'
    # arithmetic does not.
    pool_padding: Literal["same", "valid"] = setting("valid", old="valid")
    batch_norm: bool = setting(True, "Batch normalisation after each convolution.", flag=True)
    # Weight of the old value in BN's moving statistics. Keras's 0.99 averages
    # over ~100 steps and lags far behind weights that change fast early in
    # training, so inference-mode accuracy trails training accuracy badly;
    # 0.9 (PyTorch's default) tracks the weights within ~10 steps.
    batch_norm_momentum: float = 0.9
    # Train batch norm's scale (gamma). False freezes it at 1: the following
    # ReLU and convolution are scale-equivariant, so the scale adds little but
    # optimiser work.
    batch_norm_scale: bool = setting(False, old=True)
    # Initialisation of the first convolution. "whitening": its first filters
    # start as the whitening transform of the training images' k x k patches
    # (the leading eigenvectors of the patch covariance, each scaled by
    # 1/sqrt(eigenvalue), with both signs; `models.whitening_kernel`), so the
    # first layer's outputs start decorrelated with unit variance instead of
    # as random projections.
    stem_init: StemInit = setting("whitening", old="default")
    # Initialisation of the other convolutions. "identity": the first
    # min(in, out) filters start as the identity (a dirac at the centre tap),
    # so a new network passes the stem's features through every block.
    conv_init: ConvInit = setting("identity", old="default")
    # "fused": TensorFlow's fused kernel (`pipeline.model.batch_norm`), faster on CPU
    # with the same weights and semantics; "keras": Keras' own layer. The
    # benchmarks' execution-settings comparison measures both.
    batch_norm_kernel: BatchNormKernel = setting("fused", old="fused", resumable=True)
    # With batch norm, a block's last ReLU follows its max-pooling: max and ReLU
    # commute exactly, so the outputs are the same, but the ReLU touches a
    # quarter of the values. False is the textbook conv-BN-ReLU-pool order.
    relu_after_pooling: bool = setting(True, old=True, resumable=True)
    # With batch norm, a block's last convolution is max-pooled first and then
    # normalised: batch norm (forward and backward) and ReLU run on a quarter
    # of the values, the order fast CIFAR-10 recipes (airbench) use. Batch
    # norm's statistics are then those of the pooled map, so this is a
    # different network in training; at inference, with a frozen scale, it
    # computes the same function of the same weights as normalising first.
    # Chosen on validation over three seeds; the benchmark record's placement
    # section measures the speed and accuracy of both orders.
    batch_norm_after_pooling: bool = setting(True, old=False)
    # "pool_last": a block's convolutions all run at its input's resolution,
    # then it is max-pooled. "pool_first": its first convolution is max-pooled,
    # normalised and activated, and the others run on the pooled map (a
    # quarter of the pixels, so about a third of the arithmetic at the same
    # widths; airbench's convolution group). A residual connection around the
    # pooled convolutions (airbench96's) made training at this learning rate
    # unstable: the sum of two normalised maps doubles the scale that reaches
    # the next layer. `relu_after_pooling` and `batch_norm_after_pooling`
    # apply to "pool_last" only.
    block_layout: BlockLayout = setting("pool_last", old="pool_last")
    # Dropout rate after the blocks and before the classifier; None is off.
    # With batch norm only the last block gets it (models._block says why).
    dropout: float | None = setting(
        0.3,
        "Dropout rate after the blocks (with batch norm: the last) and before the classifier, or 'off'.",
        flag=True,
        parse=parse_number_or_off("dropout", "0.3", off=("off", "none", "0")),
    )
    dense_units: int = 256
    # The classifier on the last block's map. "dense": flattened, a hidden
    # layer of `dense_units` with ReLU (most of a small network's weights),
    # then the logits. "global_average": each channel averaged over the map,
    # then the logits; `dense_units` is unused.
    head: Head = setting("dense", old="dense")
    # Views averaged at inference (evaluation, report, export, serving); never
    # in training. "flip": the image and its mirror (2 views); "flip_and_shift":
    # both, each also shifted one pixel up, down, left and right (10 views).
    # The training augmentation taught the network these views, so averaging
    # their probabilities cancels part of each single view's error; metrics.json
    # reports both. The views go through the network as one batch, so batch-1
    # latency grows far less than the view count (serving benchmark).
    test_time_augmentation: TestTimeAugmentation = setting(
        "flip_and_shift",
        "Views averaged at inference (evaluation, export): none, flip (2x), flip_and_shift (10x).",
        flag=True,
        old="none",
        resumable=True,
    )


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-batch augmentation; evaluation data is never augmented."""

    enabled: bool = setting(True, "Augment training batches (flip, shift).", flag="augment")
    flip: bool = True
    # "random": each image is mirrored with probability 1/2 in every epoch.
    # "alternating": a random half in the first epoch, then every image is
    # mirrored in every other epoch, so any two consecutive epochs show each
    # image both ways instead of the same way half the time.
    flip_mode: FlipMode = setting("alternating", old="random")
    max_shift: int = 2  # Padded random crop: pixels of shift in each direction.
    erase_probability: float = 0.0  # Random erasing (cutout) per example.
    erase_max_fraction: float = 0.25  # Largest erased area as image fraction.
    # The last this many epochs train without random erasing: the network
    # learns from erased images, then ends on whole ones, the kind it is
    # served (the "refined" augmentation of He et al., 2019, "Data
    # augmentation revisited"). Counted back from `train.epochs`; 0 erases to
    # the end.
    erase_off_final_epochs: int = setting(0, old=0)
    # CutMix: the fraction of training images that get a box pasted from
    # another image of their batch, their target mixing the two labels by
    # area (`augment.cutmix`); 0 is off. Unlike erasing, every pixel
    # the network sees still belongs to a real garment, and the target says
    # how much of each it sees.
    cutmix_probability: float = setting(0.0, old=0.0)


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
    scale_learning_rate: bool = setting(False, "Scale the learning rate linearly with the global batch.", flag=True)
    base_batch_size: int = 128
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


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs; saved as `config.json` in the workdir."""

    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()

    def replace(self, **sections) -> Config:
        """Returns a copy with top-level fields or whole sections replaced."""
        return dataclasses.replace(self, **sections)


FIELDS_ADDED = config_fields.fields_added(Config)
