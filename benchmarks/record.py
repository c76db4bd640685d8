"""The benchmark record: benchmarks/results.json and BENCHMARKS.md rendered from it.

Each comparison is saved as a section as soon as it finishes, with the date,
the machine, the commit and the command that measured it. The record is
rendered for one machine and one commit (those of most sections): sections
measured elsewhere or on other code are kept apart under a heading that says
so, predictions are labelled as such, and headings are numbered in the
order the benchmark measures them. A comparison measured again on another
kind of machine keeps the other machine's latest measurement beside it.

  python -m benchmarks.record     # re-render BENCHMARKS.md from results.json, measuring nothing
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from benchmarks import figures

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.json"
RECORD = ROOT / "BENCHMARKS.md"
FIGURE = ROOT / "benchmarks" / "recipes.png"
# The order `benchmarks.run` measures in, which is the order of the record's headings.
ORDER = (
    "training_throughput",
    "input_headroom",
    "utilisation",
    "execution_settings",
    "step_profile",
    "auto_precision",
    "time_to_accuracy",
    "seed_runs",
    "seed_runs_each",
    "candidates",
    "views",
    "ensembles",
    "serving",
    "two_workers_vs_one",
    "step_breakdown",
    "scaling_model",
    "recipes",
    "recipe_seeds",
    "ablation",
    "precision",
    "placement",
    "placement_seeds",
    "recipes_fast",
    "recipe_seeds_fast",
    "recipes_default",
    "recipe_seeds_default",
    "recipes_best",
    "recipe_seeds_best",
    "recipes_seed",
    "recipe_seeds_seed",
    "tuning_rate",
)
# Sections computed from other sections' measurements rather than measured.
PREDICTIONS = {"scaling_model"}
# Sections whose rows each new measurement adds to, rather than replaces.
ACCUMULATED = {"candidates", "views", "ensembles"}
NOT_RECORDED = "not recorded"


def commit() -> str:
    """The checkout's commit (short hash, "+changes" when the tree differs from it), or "not recorded"."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        # The record's own files change as each section is saved; only changes to anything else are "+changes".
        outputs = [f":(exclude){path.relative_to(ROOT)}" for path in (RESULTS, RECORD, FIGURE)]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return NOT_RECORDED
    return f"{head}+changes" if dirty else head


def machine() -> dict:
    """The processor, cores, bf16/AMX flags, the instructions oneDNN is held to, and TensorFlow's version.

    `ONEDNN_MAX_CPU_ISA` makes this processor stand in for an older kind (a
    Xeon with AMX held to AVX512_CORE trains as a CPU without bf16
    instructions), so a measurement under it is of another kind of machine.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    import tensorflow as tf

    return {
        "cpu": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in cpuinfo,
        "amx_bf16": "amx_bf16" in cpuinfo,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


def read(path: Path = RESULTS) -> dict:
    """The record as {"sections": {key: section}}; empty when there is none yet."""
    return json.loads(path.read_text()) if path.exists() else {"sections": {}}


def merge_rows(recorded: dict | None, rows: list[dict], key: str) -> list[dict]:
    """The rows of the `recorded` section (if any) whose `key` no new row names, followed by `rows`.

    For the ACCUMULATED sections: a measurement adds its rows to those
    recorded before and replaces the row of whatever it measures again.
    """
    named = {row[key] for row in rows}
    return [row for row in (recorded or {}).get("rows", []) if row.get(key) not in named] + rows


def save_section(key: str, title: str, rows: list[dict], columns: list[str], quick: bool, path: Path = RESULTS) -> dict:
    """Adds or replaces one comparison in the record, stamped with date, machine and command; returns it."""
    record = read(path)
    section = {
        "title": title,
        "columns": columns,
        "rows": rows,
        "quick": quick,
        "measured": datetime.date.today().isoformat(),
        "machine": machine(),
        "commit": commit(),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
    }
    sections = record["sections"]
    old = sections.get(key)
    # The same comparison on another kind of machine is kept beside it (the record's other-machine part), so a
    # claim can be checked on each machine measured; each machine keeps its latest.
    if old is not None and key not in ACCUMULATED and processor(old["machine"]) != processor(section["machine"]):
        sections[f"{key}@{processor(old['machine'])}"] = old
    sections.pop(f"{key}@{processor(section['machine'])}", None)
    sections[key] = section
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
    return section


def _format_cell(value, column: str = "") -> str:
    if isinstance(value, float) and column.endswith("(%)"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def table(section: dict) -> str:
    """A section's rows as a Markdown table."""
    columns = section["columns"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format_cell(row.get(c), c) for c in columns) + " |" for row in section["rows"]]
    return "\n".join(lines) + "\n"


def _bf16_flags(m: dict) -> str:
    yes = lambda flag: "yes" if m.get(flag) else "no"  # noqa: E731
    held = f", oneDNN held to {m['onednn_max_cpu_isa']}" if m.get("onednn_max_cpu_isa") else ""
    return f"AVX512_BF16 {yes('avx512_bf16')}, AMX {yes('amx_bf16')}{held}"


def describe_machine(m: dict) -> str:
    """One line: CPU model, cores, bf16 instruction flags, TensorFlow version."""
    return f"{m['cpu']}, {m['cores']} cores, {_bf16_flags(m)}, TensorFlow {m['tensorflow']}"


def processor(m: dict) -> str:
    """The kind of machine: CPU model, bf16 and AMX instructions (one model name can differ in them), oneDNN's hold."""
    return f"{m['cpu']}, {_bf16_flags(m)}"


def base_key(key: str) -> str:
    """A section's kind: its key without the machine a kept older measurement carries, nor the runs it names.

    `seed_runs:NAMES` is the `seed_runs` section of the runs named NAMES: each group of finished runs keeps its
    own section, so recording one group leaves the others in place.
    """
    return key.split("@", 1)[0].split(":", 1)[0]


def newest_recipe_runs(record: dict) -> dict[str, dict[str, list[dict]]]:
    """{machine: {recipe: that recipe's seed rows from its newest section on that machine}}, for the figure.

    Among sections measured on the same day, the one with the most seeds of
    the recipe wins, then the later in the record's order (a recipe's own
    section, `recipe_seeds_fast`, over the one measuring every recipe).
    """
    rank = {key: i for i, key in enumerate(ORDER)}
    best: dict[tuple[str, str], tuple[tuple, list[dict]]] = {}
    for key, section in record["sections"].items():
        if not base_key(key).startswith("recipe_seeds") or section.get("quick"):
            continue
        by_recipe: dict[str, list[dict]] = {}
        for row in section["rows"]:
            if all(isinstance(row.get(column), (int, float)) for column in (figures.ACCURACY, figures.SECONDS)):
                by_recipe.setdefault(row["recipe"], []).append(row)
        machine = processor(section["machine"])
        for recipe, rows in by_recipe.items():
            preference = (section["measured"], len(rows), rank.get(base_key(key), len(rank)))
            if (machine, recipe) not in best or preference > best[machine, recipe][0]:
                best[machine, recipe] = (preference, rows)
    runs: dict[str, dict[str, list[dict]]] = {}
    for (machine, recipe), (_, rows) in best.items():
        runs.setdefault(machine, {})[recipe] = rows
    return runs


def _where(section: dict) -> tuple[str, str]:
    return describe_machine(section["machine"]), section.get("commit", NOT_RECORDED)


def _ordered(sections: dict) -> list[tuple[str, dict]]:
    rank = {key: i for i, key in enumerate(ORDER)}
    return sorted(sections.items(), key=lambda item: (rank.get(base_key(item[0]), len(ORDER)), item[0]))


def render(record: dict, notes: dict[str, str], figure: str | None = None) -> str:
    """BENCHMARKS.md: a header naming the machine and commit, then one numbered part per section.

    `figure`, a link relative to the record, shows above the sections.
    """
    sections = _ordered(record["sections"])
    counts = collections.Counter(_where(s) for _, s in sections)
    latest = max((s["measured"] for _, s in sections), default="")
    # The record's machine and commit: those of most sections, the latest measured among equals. A section
    # without a recorded commit cannot be shown to measure today's code, so it is current only when none has one.
    candidates = [w for w in counts if w[1] != NOT_RECORDED] or list(counts)
    current = max(
        candidates, key=lambda w: (counts[w], max(s["measured"] for _, s in sections if _where(s) == w)), default=None
    )
    here = [(k, s) for k, s in sections if _where(s) == current]
    elsewhere = [(k, s) for k, s in sections if _where(s) != current]
    lines = [
        "# Benchmark record",
        "",
        "Generated by `python -m benchmarks.run` from `benchmarks/results.json`; "
        "`python -m benchmarks.record` re-renders it without measuring. Do not edit by hand.",
        "",
    ]
    if current:
        lines += [f"Machine: {current[0]}.", "", f"Commit: {current[1]}. Last measured {latest}.", ""]
    lines += ["Contenders take turns and each row is the median of its turns.", ""]
    if figure:
        lines += [
            f"![Each seed of each recipe: test accuracy as served against training time, per machine]({figure})",
            "",
        ]
    number = 0
    for part, group in (("", here), ("other", elsewhere)):
        if part and group:
            lines += [
                "## Measured on another machine or code version",
                "",
                "These sections were measured on another machine, on other code, or without a recorded commit; "
                "they are kept for reference and are not comparable with the sections above. A comparison "
                "measured on several kinds of machine appears once per machine; rerunning `python -m "
                "benchmarks.run` on the machine above replaces its own.",
                "",
            ]
        for key, section in group:
            number += 1
            title = re.sub(r"^\d+[a-z]?\.\s*", "", section["title"])
            predicted = base_key(key) in PREDICTIONS
            label = " (a prediction)" if predicted and not title.startswith("Predicted") else ""
            lines += [f"## {number}. {title}{label}", ""]
            quick = " (`--quick`: smoke-test sizes, not a measurement)" if section.get("quick") else ""
            verb = "Predicted from measurements taken" if predicted else "Measured"
            where = f"{describe_machine(section['machine'])}, commit {section.get('commit', NOT_RECORDED)}"
            lines += [f"{verb} {section['measured']} on {where}{quick}.", ""]
            if section.get("command"):
                lines += [f"Command: `{section['command']}`.", ""]
            if notes.get(base_key(key)):
                lines += [notes[base_key(key)], ""]
            lines += [table(section)]
    return "\n".join(lines).rstrip() + "\n"


def write(path: Path = RECORD, results: Path = RESULTS) -> Path:
    """Renders BENCHMARKS.md from results.json, and its figure beside it (`benchmarks.figures`).

    The record's own figure is `FIGURE`; a record written elsewhere (a
    `--quick` run's) gets its figure beside itself.
    """
    from benchmarks.notes import NOTES

    recorded = read(results)
    figure = figures.draw_recipes(newest_recipe_runs(recorded), FIGURE if path == RECORD else path.with_suffix(".png"))
    path.write_text(render(recorded, NOTES, os.path.relpath(figure, path.parent) if figure else None))
    return path


if __name__ == "__main__":
    print(write())
