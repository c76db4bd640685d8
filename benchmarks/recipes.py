"""Time to accuracy of the presets, the ablation of `fast`, and bf16 against float32.

Every run is a whole `fmnist-train` in a child process started with the
running interpreter, one after another with nothing else running, on the
preset's own split: 55,000 training images and 5,000 held out for
validation, or all 60,000 for a final fit (`best`), which has no time to
a validation accuracy. Time
to accuracy is read from each run's history.json: the cumulative seconds of
training and per-epoch validation until the epoch whose validation accuracy
(single view) first reaches the target. The test set is evaluated once, at
the end of each finished run.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import seeds as seeds_lib
from benchmarks.scaling import REFERENCE

TARGET = seeds_lib.TARGET
# Each technique of `fast` and the config fields that turn it off (the
# ablation trains `fast` without one technique at a time).
TECHNIQUES = {
    "SGD with Nesterov momentum (vs AdamW at lr 4e-3)": {
        "train": {"optimizer": "adamw", "learning_rate": 4e-3, "weight_decay": 0.02}
    },
    "label smoothing (vs none)": {"train": {"label_smoothing": 0.0}},
    "whitening stem init (vs Glorot)": {"model": {"stem_init": "default"}},
    "identity conv init (vs Glorot)": {"model": {"conv_init": "default"}},
    "alternating flip (vs random)": {"augment": {"flip_mode": "random"}},
    "frozen batch-norm scale (vs trained)": {"model": {"batch_norm_scale": True}},
    "moving average of the weights (vs the trained weights)": {"train": {"ema_momentum": None}},
    "batch norm after max-pooling (vs before)": {"model": {"batch_norm_after_pooling": False}},
    "wide second and third blocks for fewer epochs (vs 32 and 64 channels for 32 epochs)": {
        "model": {"filters": [16, 32, 64]},
        "train": {"epochs": 32},
    },
}
# Techniques `fast` leaves out, and the config fields that add each back (the
# ablation trains `fast` with one at a time).
LEFT_OUT: dict[str, dict] = {}
# Smoke-test sizes for `--quick`: they fit the tests' 640 synthetic training images.
QUICK = [
    "--max_train_examples=512",
    "--validation_size=128",
    "--global_batch_size=64",
    "--epochs=2",
    "--test_time_augmentation=none",
]


def _config_file(base: dict, changes: dict, directory: Path) -> Path:
    config = json.loads(json.dumps(base))
    for section, fields in changes.items():
        config[section].update(fields)
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


def preset_config(name: str) -> dict:
    """A preset as a config dict (the reference recipe is a file)."""
    if name == "reference":
        return json.loads(REFERENCE.read_text())
    from pipeline import config_files, presets

    return config_files.to_dict(presets.preset(name))


def train(config: dict, data_dir: str, quick: bool, *flags: str, changes: dict | None = None) -> dict:
    """Trains `config` (with `changes`) to the end in a child process; returns its history and metrics."""
    directory = Path(tempfile.mkdtemp(prefix="fmnist-recipe-"))
    path = _config_file(config, changes or {}, directory)
    workdir = directory / "run"
    command = [
        sys.executable,
        "-m",
        "launch.train",
        f"--workdir={workdir}",
        f"--config={path}",
        f"--data_dir={data_dir}",
        "--noexport",
        "--noreport",
        *(QUICK if quick else []),
        *flags,
    ]
    changed = [f"{key}={value}" for fields in (changes or {}).values() for key, value in fields.items()]
    print(f"  training {' '.join([config['name'], *changed, *flags])} ...", end="", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        print(flush=True)
        raise RuntimeError(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    run = seeds_lib.read_run(workdir)
    shutil.rmtree(directory)  # Checkpoints of every run would fill /tmp over a full benchmark.
    last = run["history"][-1]
    shown = f"last val {last['val_accuracy']:.2%}" if "val_accuracy" in last else "final fit, no validation"
    print(f" {run['metrics']['train_seconds']:.0f} s, {shown}", flush=True)
    return run


def _against_reference(turn: list[dict], target: float) -> list[dict]:
    """Adds each row's time against the reference row of the same turn, when there is one."""
    reference = next((row for row in turn if row["recipe"] == "reference"), None)
    column = f"seconds to {target:.0%} val"
    for row in turn if reference else ():
        seconds, base = row[column], reference[column]
        timed = all(isinstance(value, float | int) for value in (seconds, base))
        row["time to target vs reference"] = seconds / base if timed else "n/a"
        row["train seconds vs reference"] = row["train seconds"] / reference["train seconds"]
    return turn


def presets_side_by_side(
    data_dir: str, quick: bool, names=("reference", "fast", "default"), seeds=(0, 1, 2)
) -> tuple[list, dict]:
    """Trains each recipe once per seed, taking turns (A B C with seed 0, A B C with seed 1, ...).

    Returns each run's row (times against the reference run of the same turn,
    when the reference is among `names`) and the runs, a list per recipe.
    """
    target = 0.5 if quick else TARGET
    runs = {name: [] for name in names}
    rows = []
    for seed in seeds:
        turn = {name: train(preset_config(name), data_dir, quick, f"--seed={seed}") for name in names}
        for name, run in turn.items():
            runs[name].append(run)
        rows += _against_reference([seeds_lib.run_row(name, run, target) for name, run in turn.items()], target)
    return rows, runs


# Where each block's last batch norm sits (`ModelConfig.batch_norm_after_pooling`).
PLACEMENTS = {
    "batch norm, then max-pooling": {"model": {"batch_norm_after_pooling": False}},
    "max-pooling, then batch norm": {"model": {"batch_norm_after_pooling": True}},
}


def batch_norm_placement(data_dir: str, quick: bool, names=("default",), seeds=(0, 1, 2)) -> list[dict]:
    """Each recipe with its blocks' last batch norm before and after max-pooling, per seed, taking turns.

    Returns each run's row: `seeds.run_row` plus the training examples per
    second of the whole run (epochs x training examples / training seconds).
    """
    target = 0.5 if quick else TARGET
    rows = []
    for seed in seeds[: 1 if quick else None]:
        for name in names:
            for placement, changes in PLACEMENTS.items():
                run = train(preset_config(name), data_dir, quick, f"--seed={seed}", changes=changes)
                metrics = run["metrics"]
                examples = metrics["epochs_completed"] * metrics["examples"]["train"]
                row = seeds_lib.run_row(f"{name}: {placement}", run, target)
                rows.append(row | {"training examples/s": examples / metrics["train_seconds"]})
    return rows


def placement_summary(rows: list[dict]) -> list[dict]:
    """`seeds.summary` of `batch_norm_placement`'s rows, with the median examples per second."""
    out = seeds_lib.summary(rows)
    for entry in out:
        mine = [row["training examples/s"] for row in rows if row["recipe"] == entry["recipe"]]
        entry["training examples/s, median"] = statistics.median(mine)
    return out


def ablation(data_dir: str, quick: bool) -> list[dict]:
    """`fast`, then `fast` without each of its techniques and with each one it leaves out, in turn.

    Medians over two seeds (one with `quick`).
    """
    target = 0.5 if quick else TARGET
    seeds = (0,) if quick else (0, 1)
    fast = preset_config("fast")
    variants = {
        "fast (all its techniques)": {},
        **{f"without {k}": v for k, v in TECHNIQUES.items()},
        **{f"with {k}": v for k, v in LEFT_OUT.items()},
    }
    rows = []
    for name, changes in variants.items():
        runs = [train(fast, data_dir, quick, f"--seed={seed}", changes=changes) for seed in seeds]
        reached = [seeds_lib.time_to(run["history"], target) for run in runs]
        epochs = [r[0] for r in reached if r]
        seconds = [r[1] for r in reached if r]
        rows.append(
            {
                "variant": name,
                "seeds reaching target": f"{len(epochs)}/{len(runs)}",
                f"median epochs to {target:.0%} val": statistics.median(epochs) if epochs else "never",
                f"median seconds to {target:.0%} val": statistics.median(seconds) if seconds else "never",
                "median final val, single view (%)": 100
                * statistics.median(run["history"][-1]["val_accuracy"] for run in runs),
            }
        )
    return rows


def precision_comparison(data_dir: str, quick: bool, auto_runs: dict) -> list[dict]:
    """`fast` and `default` in mixed_bfloat16 against float32, per seed, reusing their `--precision=auto` runs.

    `auto` measures on processors with bf16 instructions and may pick either;
    the other precision is trained here with the same seed, and each row says
    for how many seeds auto picked it. Where the processor has no bf16
    instructions, the one row says so.
    """
    from benchmarks.record import machine

    here = machine()
    if not (here["avx512_bf16"] or here["amx_bf16"]):
        return [
            {
                "recipe": "all",
                "precision": f"not measured: {here['cpu']} ({here['cores']} cores) has neither AVX512_BF16 nor "
                "AMX, so --precision=auto trains in float32",
            }
        ]
    rows = []
    for name in ("fast", "default"):
        by_precision = {"mixed_bfloat16": [], "float32": []}
        for auto in auto_runs.get(name, []):
            seed, picked = auto["config"]["train"]["seed"], auto["metrics"]["precision"]
            for precision, runs in by_precision.items():
                flags = (f"--seed={seed}", f"--precision={precision}")
                runs.append(auto if precision == picked else train(preset_config(name), data_dir, quick, *flags))
        if not by_precision["float32"]:
            continue
        f32 = [100 * run["metrics"]["test_accuracy"] for run in by_precision["float32"]]
        f32_seconds = statistics.median(run["metrics"]["train_seconds"] for run in by_precision["float32"])
        for precision, runs in by_precision.items():
            accuracies = [100 * run["metrics"]["test_accuracy"] for run in runs]
            seconds = statistics.median(run["metrics"]["train_seconds"] for run in runs)
            picked = sum(auto["metrics"]["precision"] == precision for auto in auto_runs[name])
            rows.append(
                {
                    "recipe": name,
                    "precision": precision,
                    "seeds picked by auto": f"{picked}/{len(runs)}",
                    "test as served, median [min, max] (%)": seeds_lib.spread(accuracies),
                    "each seed (%)": ", ".join(f"{a:.2f}" for a in accuracies),
                    "median minus float32's (points)": statistics.median(accuracies) - statistics.median(f32),
                    "train seconds, median": seconds,
                    "speed vs float32": f32_seconds / seconds,
                }
            )
    return rows
