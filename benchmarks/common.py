"""Side-by-side timing helpers: alternate the contenders, repeat, report medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def latencies(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `call`, after one warm-up call."""
    call()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def rounds(names: list, repeats: int) -> list[list]:
    """The order of each of `repeats` rounds: every name once per round, each round starting one later.

    A B C, B C A, C A B, ...: no contender always runs first (after a
    previous section's work) or last, so a slow first or last slot is shared.
    """
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(repeats)] if names else []


def alternate(contenders: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Runs each contender `repeats` times in rotating turns (`rounds`).

    Each callable does its work and returns how many examples it processed;
    the result is the median examples per second of each contender.
    """

    def timed(run: Callable[[], int]) -> Callable[[], float]:
        def turn() -> float:
            start = time.perf_counter()
            examples = run()
            return examples / (time.perf_counter() - start)

        return turn

    return median_rates({name: timed(run) for name, run in contenders.items()}, repeats)


def median_rates(turns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """The median of each contender's `repeats` turns in rotating rounds (`rounds`); each turn returns its rate.

    For contenders that time only part of their turn (`alternate` times all of it).
    """
    rates: dict[str, list[float]] = {name: [] for name in turns}
    for order in rounds(list(turns), repeats):
        for name in order:
            rates[name].append(turns[name]())
    return {name: statistics.median(values) for name, values in rates.items()}


def print_table(rows: list[dict]) -> None:
    """Prints rows as the record's Markdown table (a comparison run on its own)."""
    from benchmarks.record import table

    print(table({"columns": list(rows[0]), "rows": rows}))


def define_child_flags(steps: int) -> None:
    """Flags of a comparison that measures each contender in a child process: data, steps, batch, --quick."""
    from absl import flags

    flags.DEFINE_string("data_dir", None, "Directory with the Fashion-MNIST IDX files.")
    flags.DEFINE_integer("steps", steps, "Training steps a child times (after a warm-up call).")
    flags.DEFINE_integer("batch", None, "Global batch size instead of the default preset's (smoke tests).")
    flags.DEFINE_boolean("quick", False, "Few steps, one round: a smoke test.")
