"""Stopping training cleanly on SIGTERM or Ctrl-C, at a step boundary every worker agrees on.

SIGTERM is what Slurm and Kubernetes send before preempting a job. While a
`StopSignal` is installed, SIGTERM and a first Ctrl-C only set a flag; the
training loop looks at it whenever a compiled call of `steps_per_execution`
steps returns, saves a checkpoint of that exact step and raises
`TrainingStopped`. The entry point then exits with 128 + the signal number
(143 for SIGTERM), which Kubeflow's ExitCode restart policy retries. A second
Ctrl-C exits at once.

This is written here instead of using `tf.distribute.experimental.
PreemptionCheckpointHandler`, which (TensorFlow 2.21) queries the GCE
metadata server over the network when it is created, does nothing on GCE CPU
machines, trains one more call after it notices the signal when there is a
single worker, and exits with code 42, which Kubeflow treats as a permanent
failure. Here every worker learns of a signal through one scalar all-reduce
per compiled call, so all of them checkpoint the same step.
"""

from __future__ import annotations

import os
import signal
import threading

import tensorflow as tf

from pipeline import distribution


class TrainingStopped(BaseException):  # noqa: N818 - it is a stop, not an error.
    """Training stopped on a signal after saving a checkpoint; `exit_code` is 128 + the signal.

    A BaseException, like KeyboardInterrupt, so that no `except Exception`
    (KerasTuner's trial loop has one) mistakes it for a failed trial.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignal:
    """While installed (a context manager), SIGTERM and a first SIGINT request a stop."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        del frame
        if self.received is not None and signum == signal.SIGINT:
            os.write(2, b"interrupted again: exiting at once, without a checkpoint\n")
            os._exit(128 + signal.SIGINT)
        self.received = signum
        name = signal.Signals(signum).name
        os.write(
            2, f"{name}: stopping at the next step boundary to save a checkpoint (Ctrl-C again to quit)\n".encode()
        )

    def agreed(self, strategy) -> bool:
        """True when this worker or any other received a stop request (one all-reduce with several workers)."""
        local = 0.0 if self.received is None else 1.0
        if distribution.num_workers(strategy) == 1:
            return bool(local)
        flags = strategy.run(lambda: tf.constant(local))
        return float(strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None)) > 0

    @property
    def signum(self) -> int:
        """The signal to report: this worker's, or SIGTERM when a peer was the one signalled."""
        return self.received if self.received is not None else int(signal.SIGTERM)
