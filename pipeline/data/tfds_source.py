"""The last source of Fashion-MNIST: tensorflow-datasets, which prepares it from a download or a manual directory.

Pure of the rest of the data code: it returns uint8 arrays, and `sources`
validates them as it does the other sources'.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse

import numpy as np

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class Unreachable(OSError):
    """tensorflow-datasets would have to download, and the download host cannot be reached."""


def check_reachable(url: str, timeout: float = 10.0) -> None:
    """Raises OSError at once when `url`'s host cannot be reached directly (no name, no route, no answer).

    tensorflow-datasets retries a download it cannot make for minutes before
    it fails; an offline machine (a cluster's compute node) should hear so in
    seconds. Behind a proxy (its variables set) a direct connection proves
    nothing, so the check is left to the download.
    """
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    socket.create_connection((parts.hostname, port), timeout=timeout).close()


def _prepared(builder) -> bool:
    # `is_prepared` logs a warning about the dataset's folder whenever the
    # data is not there yet, which is the usual case here, not a fault.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return builder.is_prepared()
    finally:
        absl_logger.setLevel(level)


def load() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)) as uint8, prepared by tensorflow-datasets.

    `FASHION_MNIST_MANUAL_DIR` names a directory of the upstream `.gz` files
    to prepare from without a network.

    Raises:
      Unreachable: when it would download and the download host cannot be reached.
    """
    import tensorflow_datasets as tfds

    manual_dir = os.environ.get("FASHION_MNIST_MANUAL_DIR")
    builder = tfds.builder("fashion_mnist")
    url = getattr(type(builder), "URL", None)
    if not manual_dir and not _prepared(builder) and url:
        try:
            check_reachable(url)
        except OSError as e:
            raise Unreachable(f"{url} is unreachable ({e})") from None
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    splits = tfds.load(
        "fashion_mnist",
        split=["train", "test"],
        as_supervised=True,
        shuffle_files=False,
        download_and_prepare_kwargs={"download_config": config} if config else None,
    )

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        # Batches of a fixed size: `batch_size=-1` sizes its one batch from the
        # dataset's metadata, which not every copy of the data carries.
        batches = list(tfds.as_numpy(ds.batch(10_000)))
        images = np.concatenate([x for x, _ in batches])[..., 0].astype(np.uint8)
        return images, np.concatenate([y for _, y in batches]).astype(np.uint8)

    return arrays(splits[0]), arrays(splits[1])
