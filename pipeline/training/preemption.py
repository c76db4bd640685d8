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

from pipeline.cluster import strategies


class TrainingStopped(BaseException):  # noqa: N818 - it is a stop, not an error.
    """Training stopped on a signal after saving a checkpoint; `exit_code` is 128 + the signal.

    A BaseException, like KeyboardInterrupt, so that no `except Exception`
    (KerasTuner's trial loop has one) mistakes it for a failed trial.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignal:
    """While installed (a context manager), SIGTERM and a first SIGINT request a stop.

    Python runs signal handlers only between bytecodes, so while the main
    thread waits in a long TensorFlow call they would wait too. Instead every
    delivery also writes its number to a wake-up pipe (`signal.set_wakeup_fd`),
    which a helper thread reads at once: the request is recorded as it
    arrives, and a second Ctrl-C ends the process even in the middle of a call.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._previous_fd = -1
        self._pipe: tuple[int, int] | None = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # Signals reach only the main thread; nothing to watch here.
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, lambda signum, frame: None)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), name="stop-signal", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._pipe[1])  # The watcher reads end-of-file and closes the other end.
        self._pipe, self._previous = None, {}

    def _watch(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while data := pipe.read(1):
                self._handle(data[0])

    def _handle(self, signum: int) -> None:
        if signum not in (signal.SIGTERM, signal.SIGINT):
            return
        # Each message starts a line of its own: a progress bar on the console
        # is usually mid-line when a signal comes.
        if self.received is not None and signum == signal.SIGINT:
            os.write(2, b"\ninterrupted again: exiting at once, without a checkpoint\n")
            os._exit(128 + signal.SIGINT)
        if self.received is None:
            self.received = signum
            name = signal.Signals(signum).name
            message = f"\n{name}: stopping at the next step boundary to save a checkpoint (Ctrl-C again to quit)\n"
            os.write(2, message.encode())

    def agreed(self, strategy) -> bool:
        """True when this worker or any other received a stop request (one all-reduce with several workers)."""
        local = 0.0 if self.received is None else 1.0
        if strategies.num_workers(strategy) == 1:
            return bool(local)
        return strategies.all_workers_sum(strategy, local) > 0

    def check(self, strategy, after: str, collective: bool = True) -> None:
        """Raises `TrainingStopped` when a stop was requested, at a point where nothing needs saving.

        Args:
          strategy: the run's strategy.
          after: what is complete at this point, for the message.
          collective: ask every worker (all of them must call it at the same
            point); False for work only the chief does.
        """
        requested = self.agreed(strategy) if collective else self.received is not None
        if requested:
            name = signal.Signals(self.signum).name
            message = f"stopped by {name} after {after}; rerun the same command to finish the run"
            raise TrainingStopped(message, self.signum)

    @property
    def signum(self) -> int:
        """The signal to report: this worker's, or SIGTERM when a peer was the one signalled."""
        return self.received if self.received is not None else int(signal.SIGTERM)
