"""The oracle chief of a distributed search: it serves the oracle until the search ends or a stop signal.

KerasTuner's chief serves until every tuner has asked for a trial after the
last one. A tuner stopped by SIGTERM saves its trial's checkpoint and exits
without asking again, so on a stop the chief must end by itself; the
oracle's state is written at every change, and a rerun sends the trials
that were running back out, to resume from their checkpoints.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from pipeline.training.preemption import StopSignal, TrainingStopped

# After a stop, how long the chief still answers: a tuner whose epoch ended as
# the signal came reports it before it stops, and must find the chief there.
GRACE_SECONDS = 10.0


def is_distributed_chief() -> bool:
    """True in the oracle chief of a distributed search (KerasTuner's rule: "chief" in the tuner id)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


def expected_tuners() -> set[str]:
    """The ids of the tuners the launcher started (`FMNIST_SEARCH_TUNERS`), which the chief waits for.

    KerasTuner's chief ends once every tuner that has asked for a trial has
    been told the search is over; a tuner that starts late (or a search
    resumed when it was already complete) would then ask a chief that is
    gone, and wait forever. Knowing the tuners, the chief waits for each.
    """
    return {name for name in os.environ.get("FMNIST_SEARCH_TUNERS", "").split(",") if name}


def leave_gpus_to_tuners(retrains: bool) -> None:
    """Keeps the chief off the GPUs its tuners train on: hidden, or taken from only as it needs them.

    Under `fmnist-launch --tuner_workers=N` the chief sees every GPU of the
    host, and its tuners train on them. The chief trains nothing while they
    search. Without `--retrain_best` it never does, so it hides every GPU
    from itself and opens no CUDA context on them. With it, it keeps them
    for the retrain, and opens them only then (`run_search` makes the
    chief's strategy once the search is over), taking memory only as it
    needs it: TensorFlow's default reserves nearly all of a GPU's memory at
    the first allocation there, and tuners told the search is over may still
    be releasing theirs. Call it before TensorFlow initialises its devices.

    Args:
      retrains: the chief retrains the best config when the search ends.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus and not retrains:
        tf.config.set_visible_devices([], "GPU")
        return
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)


def serve(
    search: Callable[[], None],
    stop: StopSignal | None,
    grace: float = GRACE_SECONDS,
    over: Callable[[], bool] | None = None,
) -> None:
    """Runs the chief's `search` (which serves the oracle) until it returns, or raises on a stop.

    Args:
      search: serves the oracle; returns when KerasTuner's chief ends.
      stop: the installed stop signal, if any.
      grace: seconds the chief still answers after a stop.
      over: optional `fn() -> bool`, true once the search has ended. The
        chief then returns at once: KerasTuner's own server thread sees the
        end only every 20 s. It is left to answer late calls until the
        process exits.

    Raises:
      TrainingStopped: a stop was requested and the search had not ended
        `grace` seconds later.
      Exception: whatever `search` raised.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            search()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it.
            failure.append(e)

    # A daemon thread: the gRPC server it runs must not keep a stopped process alive.
    server = threading.Thread(target=run, name="oracle-chief", daemon=True)
    server.start()
    while server.is_alive():
        server.join(timeout=0.5)
        if over is not None and over() and not failure:
            server.join(timeout=1.0)  # Time for the answer to the last tuner's request to leave.
            return
        if stop is not None and stop.received is not None and server.is_alive():
            server.join(timeout=grace)
            if server.is_alive():
                raise TrainingStopped(
                    f"stopped by {signal.Signals(stop.signum).name}: the oracle's state is saved, and the trials "
                    "that were running resume from their checkpoints; rerun the same command (every task) to resume",
                    stop.signum,
                )
    if failure:
        raise failure[0]
