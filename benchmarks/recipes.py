"""Time to accuracy of the presets, the ablation of `fast`, and bf16 against float32.

Every run is a whole `fmnist-train` in a child process started with the
running interpreter, one after another with nothing else running, on the
full training split (55,000 images, 5,000 held out for validation). Time
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

from benchmarks.scaling import REFERENCE

TARGET = 0.93
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
}
# Techniques the ablation found no gain from in `fast`, and the config fields
# that add each back (the ablation trains `fast` with one at a time).
LEFT_OUT = {
    "frozen batch-norm scale (vs trained)": {"model": {"batch_norm_scale": False}},
}
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
    run = {
        "history": json.loads((workdir / "history.json").read_text()),
        "metrics": json.loads((workdir / "metrics.json").read_text()),
    }
    shutil.rmtree(directory)  # Checkpoints of every run would fill /tmp over a full benchmark.
    print(f" {run['metrics']['train_seconds']:.0f} s, last val {run['history'][-1]['val_accuracy']:.2%}", flush=True)
    return run


def time_to(history: list[dict], target: float) -> tuple[int, float] | None:
    """(epoch, cumulative seconds) of the first epoch whose validation accuracy reaches `target`."""
    hit = next((h for h in history if h["val_accuracy"] >= target), None)
    return (hit["epoch"], hit["elapsed_seconds"]) if hit else None


def _row(name: str, run: dict, target: float) -> dict:
    reached, metrics = time_to(run["history"], target), run["metrics"]
    return {
        "recipe": name,
        f"epochs to {target:.0%} val": reached[0] if reached else "never",
        f"seconds to {target:.0%} val": reached[1] if reached else "never",
        "best val, single view (%)": 100 * max(h["val_accuracy"] for h in run["history"]),
        "test as served (%)": 100 * metrics["test_accuracy"],
        "test single view (%)": 100 * metrics.get("test_accuracy_single_view", metrics["test_accuracy"]),
        "test loss": metrics["test_loss"],
        "gap (points)": 100 * metrics["generalization_gap"],
        "train seconds": metrics["train_seconds"],
        "precision": metrics["precision"],
    }


def presets_side_by_side(data_dir: str, quick: bool, names=("reference", "fast", "default")) -> tuple[list, dict]:
    """Trains each recipe once, back to back; rows plus the runs (reused by the precision comparison)."""
    target = 0.5 if quick else TARGET
    runs = {name: train(preset_config(name), data_dir, quick) for name in names}
    rows = [_row(name, run, target) for name, run in runs.items()]
    reference = rows[0]
    for row in rows:
        seconds = row[f"seconds to {target:.0%} val"]
        base = reference[f"seconds to {target:.0%} val"]
        row["time to target vs reference"] = seconds / base if "never" not in (seconds, base) else "n/a"
        row["train seconds vs reference"] = row["train seconds"] / reference["train seconds"]
    return rows, runs


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
        reached = [time_to(run["history"], target) for run in runs]
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
    """`fast` and `default` in mixed_bfloat16 against float32, reusing their `--precision=auto` runs.

    `auto` measures on processors with bf16 instructions and may pick either;
    the other precision is trained here, and each row says which one auto
    picked. Where the processor has no bf16 instructions, the one row says so.
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
    for name, auto in auto_runs.items():
        if name not in ("fast", "default"):
            continue
        runs = {auto["metrics"]["precision"]: auto}
        for precision in ("mixed_bfloat16", "float32"):
            if precision not in runs:
                runs[precision] = train(preset_config(name), data_dir, quick, f"--precision={precision}")
        f32 = runs["float32"]["metrics"]
        for precision in ("mixed_bfloat16", "float32"):
            metrics = runs[precision]["metrics"]
            rows.append(
                {
                    "recipe": name,
                    "precision": precision,
                    "picked by auto": "yes" if runs[precision] is auto else "no",
                    "test as served (%)": 100 * metrics["test_accuracy"],
                    "test minus float32's (points)": 100 * (metrics["test_accuracy"] - f32["test_accuracy"]),
                    "train seconds": metrics["train_seconds"],
                    "speed vs float32": f32["train_seconds"] / metrics["train_seconds"],
                }
            )
    return rows
