"""Test-time view sets weighed on validation: finished runs' final weights under more or fewer views.

The views a model averages at inference (`ModelConfig.test_time_augmentation`)
are part of its recipe, so they are chosen like the rest of it, on the
validation split. Each set is a list of (mirrored, rows, columns) shifts of
the image; the network alone (single view, float32 as served) scores each
view once and the sets average their probabilities.

  python -m benchmarks.run --view_runs=runs/fast_s0,runs/fast_s1 --nothroughput ...
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from benchmarks import seeds as seeds_lib
from pipeline.model.views import SHIFTS as _PLUS  # The one-pixel shifts the presets serve.

VIEW_SETS = {
    "none (1)": [(False, 0, 0)],
    "flip (2)": [(m, 0, 0) for m in (False, True)],
    "flip_and_shift (10)": [(m, dy, dx) for m in (False, True) for dy, dx in ((0, 0), *_PLUS)],
    "3x3 one-pixel shifts (18)": [(m, dy, dx) for m in (False, True) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
    "one- and two-pixel shifts (18)": [
        (m, dy, dx) for m in (False, True) for dy, dx in ((0, 0), *_PLUS, *((2 * y, 2 * x) for y, x in _PLUS))
    ],
    "5x5 shifts up to two pixels (50)": [
        (m, dy, dx) for m in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
    ],
}
_MAX_SHIFT = 2


def view(images: np.ndarray, mirrored: bool, dy: int, dx: int) -> np.ndarray:
    """[N, 28, 28, 1] images mirrored left-right, then shifted with zero fill, as `TestTimeViews` does."""
    images = images[:, :, ::-1, :] if mirrored else images
    pad = _MAX_SHIFT
    padded = np.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    height, width = images.shape[1:3]
    return padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width, :]


def view_set_accuracies(network, images: np.ndarray, labels: np.ndarray, sets: dict = VIEW_SETS) -> dict:
    """Accuracy (%) of each view set, each view scored once by the single-view `network`.

    Args:
      network: the single-view Keras network (logits).
      images: float32 [N, 28, 28, 1] as `input_pipeline.normalize` gives them.
      labels: [N] class ids.
      sets: name to a list of (mirrored, rows, columns) views.
    """
    from pipeline.model import views as model_views

    views = {v for chosen in sets.values() for v in chosen}
    predict = functools.partial(network.predict, batch_size=500, verbose=0)
    probabilities = {v: model_views.probabilities(predict(view(images, *v))).numpy() for v in views}
    return {
        name: 100 * float(np.mean(np.mean([probabilities[v] for v in chosen], axis=0).argmax(axis=1) == labels))
        for name, chosen in sets.items()
    }


def view_rows(workdirs: list[str], data_dir: str | None) -> list[dict]:
    """One row per finished run: its validation accuracy (%) under each view set."""
    from pipeline import config_files
    from pipeline.data import input_pipeline as ip
    from pipeline.model import views as model_views
    from pipeline.runs import final_model

    rows = []
    for workdir in workdirs:
        config = config_files.load_run_config(Path(workdir) / "config.json")
        validation = seeds_lib.validation_split(workdir, config, data_dir)
        network = model_views.single_view(final_model.load_final_model(Path(workdir), config))
        images = ip.normalize(validation.images).numpy()
        accuracies = view_set_accuracies(network, images, validation.labels.astype(np.int64))
        rows.append(
            {
                "preset": config.name,
                "seed": config.train.seed,
                "served views": config.model.test_time_augmentation,
                **{f"val, {name} (%)": value for name, value in accuracies.items()},
                "workdir": str(workdir),
            }
        )
    return rows
