"""The model section of the run configuration: a family of plain CNNs.

Declared like every section (`pipeline.config` assembles them): each field's
`setting(...)` holds its default, help, flag and the value older runs used.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pipeline.config_fields import parse_filters, parse_number_or_off, setting

BatchNormKernel = Literal["fused", "keras"]
StemInit = Literal["default", "whitening"]
ConvInit = Literal["default", "identity"]
TestTimeAugmentation = Literal["none", "flip", "flip_and_shift"]
Head = Literal["dense", "global_average"]
BlockLayout = Literal["pool_last", "pool_first"]


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
    # pooled convolutions (airbench96's) is `residual`. `relu_after_pooling`
    # and `batch_norm_after_pooling` apply to "pool_last" only.
    block_layout: BlockLayout = setting("pool_last", old="pool_last")
    # Identity connections around each of a block's convolutions after its
    # first (those keep the block's width and resolution): the convolution's
    # normalised output is added to its input, scaled by a learned scalar that
    # starts at 0 (ReZero, Bachlechner et al. 2020), so a new network is the
    # plain one with its later convolutions bypassed and each residual grows
    # in as training finds it useful. The scalar keeps the sum's scale: an
    # ungated sum of two normalised maps doubles what reaches the next layer,
    # which made the loss rise during warm-up at the presets' learning rate.
    residual: bool = setting(False, old=False)
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
