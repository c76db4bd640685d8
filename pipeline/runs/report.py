"""The evaluation report of a finished run: curves, confusion matrix, per-class table, mistakes.

Everything is rebuilt from the workdir (config.json, history.json and the
final weights), so `fmnist-report` works on any finished run.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline import config_files
from pipeline.data import sources as data_lib  # noqa: E402
from pipeline.runs import workdir as workdir_lib  # noqa: E402
from pipeline.runs.final_model import load_final_model, predict_probabilities  # noqa: E402

log = logging.getLogger(__name__)


def plot_learning_curves(history: list[dict], path: Path) -> None:
    """Train vs validation accuracy and loss per epoch: the overfitting picture.

    A final fit holds out no validation images: its curves are training only.
    """
    epochs = [h["epoch"] for h in history]
    validated = workdir_lib.validated(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train (running, augmented)")
        if validated:
            ax.plot(epochs, [h[f"val_{metric}"] for h in history], "o-", label="validation (single view)")
        title = f"{metric} per epoch" + ("" if validated else " (final fit: no validation split)")
        ax.set(xlabel="epoch", ylabel=metric, title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((data_lib.NUM_CLASSES, data_lib.NUM_CLASSES), np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def plot_confusion_matrix(counts: np.ndarray, path: Path) -> None:
    """Row-normalised heat map with the raw counts written in each cell."""
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = data_lib.CLASS_NAMES
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix (counts)")
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_rows(counts: np.ndarray) -> list[dict]:
    """One row per class: support, correct, accuracy (recall) and precision."""
    rows = []
    for k, name in enumerate(data_lib.CLASS_NAMES):
        support, correct, predicted = counts[k].sum(), counts[k, k], counts[:, k].sum()
        rows.append(
            {
                "class_id": k,
                "class_name": name,
                "support": int(support),
                "correct": int(correct),
                "accuracy": correct / support if support else float("nan"),
                "precision": correct / predicted if predicted else float("nan"),
            }
        )
    return rows


def write_per_class_tables(rows: list[dict], csv_path: Path, md_path: Path) -> None:
    """The per-class table as CSV and as Markdown."""
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| class | name | support | correct | accuracy | precision |", "|---:|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['class_id']} | {r['class_name']} | {r['support']} | {r['correct']} | "
        f"{r['accuracy']:.2%} | {r['precision']:.2%} |"
        for r in rows
    ]
    md_path.write_text("\n".join(lines) + "\n")


def plot_misclassified(split: data_lib.Split, predictions: np.ndarray, path: Path, limit: int = 36) -> None:
    """A grid of wrongly classified test images titled 'true -> predicted'."""
    wrong = np.flatnonzero(predictions != split.labels)[:limit]
    columns = 6
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(split.images[i], cmap="gray_r")
        true, guess = data_lib.CLASS_NAMES[split.labels[i]], data_lib.CLASS_NAMES[predictions[i]]
        ax.set_title(f"{true}\n-> {guess}", fontsize=7, color="firebrick")
    fig.suptitle(f"Misclassified test images (first {len(wrong)} of {int((predictions != split.labels).sum())})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(workdir: str | Path) -> Path:
    """Writes WORKDIR/report/ from a finished run and returns that directory."""
    workdir = Path(workdir)
    workdir_lib.require_finished(workdir, "finish (or resume) the run first")
    config = config_files.load_run_config(workdir / "config.json")
    model = load_final_model(workdir, config)
    test = data_lib.load(config.data).test
    predictions = predict_probabilities(model, test.images).argmax(-1)
    out = workdir / "report"
    out.mkdir(exist_ok=True)
    plot_learning_curves(workdir_lib.read_json(workdir / "history.json"), out / "learning_curves.png")
    counts = confusion_matrix(test.labels.astype(np.int64), predictions)
    plot_confusion_matrix(counts, out / "confusion_matrix.png")
    np.savetxt(out / "confusion_matrix.csv", counts, fmt="%d", delimiter=",")
    write_per_class_tables(per_class_rows(counts), out / "per_class_accuracy.csv", out / "per_class_accuracy.md")
    plot_misclassified(test, predictions, out / "misclassified.png")
    log.info("report written to %s (test accuracy %.4f)", out, float((predictions == test.labels).mean()))
    return out
