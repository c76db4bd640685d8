"""Progress bars: redrawn in place on a terminal, a plain line now and then in a log file.

Keras's `Progbar` counts every Linux process as an interactive display
(`"posix" in sys.modules`), so in a Slurm job's output file, a CI log or
`> run.log` it writes its colours, carriage returns and backspaces twenty
times a second. Such a file grows by megabytes over a long run and reads as
noise. Where standard output is not a terminal, `bar` returns `PlainProgress`
instead, which writes an ordinary line every `PLAIN_INTERVAL_SECONDS`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import keras

# A log file's reader wants a sign of life, not a line per compiled call.
PLAIN_INTERVAL_SECONDS = 30.0


class PlainProgress:
    """`keras.utils.Progbar`'s `update`, written as a plain line at most every `interval` seconds.

    The line says how far, how long and how much longer, and the latest
    `values`: "  430/1070 steps (40%), 31 s, about 46 s left, loss 0.4123".
    Nothing is written at the end: the caller's own summary line follows.
    """

    def __init__(
        self,
        target: int,
        unit_name: str = "step",
        stream=None,
        interval: float = PLAIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.target, self.unit_name, self.interval, self.clock = target, unit_name, interval, clock
        self.stream = stream
        self.started = self.last = clock()
        # The time left is read from the pace since the first update: a resumed
        # epoch starts part done, and the first compiled call includes tracing.
        self.first: tuple[int, float] | None = None

    def update(self, current: int, values: Sequence[tuple[str, float]] | None = None, finalize=None) -> None:
        """Writes a line when `interval` seconds have passed since the last one (or the start) and work remains."""
        now = self.clock()
        if self.first is None:
            self.first = (current, now)
        if current >= self.target or now - self.last < self.interval:
            return
        self.last = now
        parts = [f"  {current}/{self.target} {self.unit_name}s ({100 * current // max(self.target, 1)}%)"]
        parts.append(f"{now - self.started:.0f} s")
        done_since, seconds_since = current - self.first[0], now - self.first[1]
        if done_since > 0:
            parts.append(f"about {seconds_since * (self.target - current) / done_since:.0f} s left")
        parts += [f"{name} {value:.4f}" for name, value in values or ()]
        stream = self.stream or sys.stdout
        stream.write(", ".join(parts) + "\n")
        stream.flush()


def is_terminal(stream) -> bool:
    """True when `stream` is an interactive terminal (a bar redrawn in place reads well there)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # A closed stream.
        return False


def bar(target: int, unit_name: str = "step", stateful_metrics: Sequence[str] | None = None):
    """A progress bar over `target` units for standard output: Keras's on a terminal, else `PlainProgress`.

    Args:
      target: the units of work in all.
      unit_name: what one unit is ("step", "view").
      stateful_metrics: names of the values passed to `update` that are shown
        as given, not averaged over the updates (Keras's bar averages the rest).
    """
    if is_terminal(sys.stdout):
        return keras.utils.Progbar(target, unit_name=unit_name, stateful_metrics=stateful_metrics)
    return PlainProgress(target, unit_name)


def end_line(progress_bar) -> None:
    """Ends the line a bar redrawn in place was left on, before other output (a stop's message)."""
    if isinstance(progress_bar, keras.utils.Progbar):
        print(flush=True)
