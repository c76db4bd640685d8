"""One run per workdir: a lock file naming its holder, kept fresh by a heartbeat.

WORKDIR/.lock holds the holder's host, pid, process start time, start date,
command and a heartbeat time rewritten every `HEARTBEAT_SECONDS`. A second run
on the same workdir is refused with a line naming the holder. A lock whose
holder is dead is taken over with a warning: on the same host when the pid is
gone or now belongs to another process (its start time differs, which guards
against pid reuse); from another host (a shared file system) when the
heartbeat is older than `STALE_SECONDS`, so a Slurm requeue on another node
waits at most that long after a crash. Only the chief of a multi-worker job
takes the lock; its workers share it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from pipeline.runs.workdir import WorkdirError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_alive(holder: dict) -> tuple[bool, str]:
    """(alive, why) for the process a lock record names."""
    if holder.get("host") == socket.gethostname():
        if not pid_alive(holder["pid"]):
            return False, f"pid {holder['pid']} has exited"
        start = _process_start(holder["pid"])
        if start not in (None, "unknown") and start != holder.get("pid_start"):
            return False, f"pid {holder['pid']} now belongs to another process"
        return True, ""
    age = time.time() - holder.get("heartbeat", 0.0)
    if age > STALE_SECONDS:
        return False, f"no heartbeat from {holder.get('host')} for {age:.0f} s"
    return True, ""


class WorkdirLock:
    """Holds DIRECTORY/.lock while a run uses the directory (a context manager)."""

    def __init__(
        self,
        directory: str | Path,
        command: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        on_lost=None,
    ):
        """Describes the lock; `acquire` (or `with`) takes it.

        Args:
          directory: the workdir.
          command: what to name as the holder (default: this process's command line).
          heartbeat_seconds: how often the heartbeat checks the lock is ours and refreshes it.
          on_lost: called when another run has taken the lock (default: SIGTERM to this
            process, which checkpoints and stops the run).
        """
        self.path = Path(directory) / LOCK_FILE
        self.heartbeat_seconds = heartbeat_seconds
        self.on_lost = on_lost or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        pid = os.getpid()
        self.record = {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock, or raises WorkdirError naming the live holder."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_dead()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f)
            self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise WorkdirError(f"could not take the lock {self.path}: another run keeps taking it; use another workdir")

    def _take_over_if_dead(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError):
            time.sleep(0.2)  # Being written by its new holder: look again.
            holder = json.loads(self.path.read_text())
        alive, why = holder_is_alive(holder)
        if alive:
            raise WorkdirError(
                f"{self.path.parent} is in use by `{holder.get('command')}` on {holder.get('host')}, "
                f"pid {holder.get('pid')}, since {holder.get('started')}; wait for it to finish, stop it, "
                "or use another --workdir"
            )
        # Atomic take-over: move the stale lock aside under a name of our own,
        # then check that what moved is the lock judged stale. Another
        # contender may have taken it over and created a fresh one meanwhile;
        # that one goes back (link fails if yet another lock exists by then).
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # Taken over by another contender: try to create it again.
        try:
            moved = json.loads(aside.read_text())
        except (OSError, json.JSONDecodeError):
            moved = None
        if moved != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        log.warning(
            "taking over the lock of a run that is gone (%s, started %s): %s",
            holder.get("command"),
            holder.get("started"),
            why,
        )

    def _owned(self) -> dict | None:
        """None while the lock file is ours, else the record found there (empty when it is gone)."""
        try:
            found = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError):
            return None  # Unreadable for a moment: judge at the next beat.
        mine = ("host", "pid", "pid_start", "started")
        return None if all(found.get(k) == self.record[k] for k in mine) else found

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            other = self._owned()
            if other is not None:
                self._lost(other)
                return
            self.record["heartbeat"] = time.time()
            tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(self.record))
                os.replace(tmp, self.path)
            except OSError:
                pass  # A full disk fails the run's own writes, which report it.

    def _lost(self, other: dict) -> None:
        """Another run holds the lock now: say so in one line and stop this run as SIGTERM does."""
        holder = f"pid {other.get('pid')} on {other.get('host')}" if other else "nobody (the file is gone)"
        message = f"error: the lock {self.path} is now held by {holder}; stopping this run at its next checkpoint\n"
        os.write(2, message.encode())
        self._stop.set()
        self.on_lost()

    def release(self) -> None:
        """Stops the heartbeat and removes the lock, if it is still ours."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
            if self._owned() is None:
                self.path.unlink(missing_ok=True)
