"""Progress bars: Keras's redrawn bar on a terminal, plain lines now and then elsewhere."""

import io
import re

import keras

from pipeline.training import progress


class _Terminal(io.StringIO):
    def isatty(self):
        if self.closed:
            raise ValueError("I/O operation on closed file.")  # As a real closed stream does.
        return True


def test_a_log_file_gets_a_plain_line_per_interval_and_none_at_the_end():
    out, now = io.StringIO(), [100.0]
    bar = progress.PlainProgress(1000, "step", stream=out, interval=30.0, clock=lambda: now[0])
    now[0] += 10.0
    bar.update(100, [("loss", 0.5)])  # Too soon for a line.
    now[0] += 25.0
    bar.update(400, [("loss", 0.41234), ("accuracy", 0.86)])
    now[0] += 5.0
    bar.update(500, [("loss", 0.4)])  # Too soon after the last line.
    now[0] += 60.0
    bar.update(1000, [("loss", 0.3)])  # The end: the caller's summary follows.
    # The time left from the pace since the first update (300 steps in 25 s), not from the start.
    assert out.getvalue() == "  400/1000 steps (40%), 35 s, about 50 s left, loss 0.4123, accuracy 0.8600\n"
    assert not re.search("[\x1b\r\b]", out.getvalue())


def test_the_bar_follows_standard_output(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    plain = progress.bar(10, unit_name="view")
    assert isinstance(plain, progress.PlainProgress) and plain.unit_name == "view"
    progress.end_line(plain)
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert isinstance(progress.bar(10, stateful_metrics=["loss"]), keras.utils.Progbar)


def test_a_closed_stream_is_no_terminal():
    closed = _Terminal()
    closed.close()
    assert not progress.is_terminal(closed) and not progress.is_terminal(object())
