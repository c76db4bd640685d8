"""One run per workdir: a lock file naming its holder, kept fresh by a heartbeat.

WORKDIR/.lock holds the holder's host, pid, process start time, start date,
command and a heartbeat time rewritten every `HEARTBEAT_SECONDS`. A second run
on the same workdir is refused with a line naming the holder. A lock whose
holder is dead is taken over with a warning: on the same host when the pid is
gone or now belongs to another process (its start time differs, which guards
against pid reuse); from another host (a shared file system) when the
heartbeat is older than `STALE_SECONDS`, so a Slurm requeue on another node
waits at most that long after a crash. Take-overs are serialised by a POSIX
lock on WORKDIR/.lock.takeover, so exactly one contender replaces a dead
holder's lock. Only the chief of a multi-worker job
takes the lock; its workers share it.
"""

from __future__ import annotations

import contextlib
import fcntl
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
TAKEOVER_FILE = ".lock.takeover"
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


@contextlib.contextmanager
def _takeover_mutex(path: Path):
    """Holds an exclusive POSIX lock on PATH; removes the file on the way out.

    The kernel (or the NFS lock manager) releases the lock when its holder
    dies, so a crash here never leaves it stuck. The file is removed while
    still locked; a waiter that then gets the lock on the removed file sees
    that its inode is no longer the path's and opens the path again.
    """
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


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
            if not self._create():
                self._take_over_if_dead()
                continue
            self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise WorkdirError(f"could not take the lock {self.path}: another run keeps taking it; use another workdir")

    def _create(self) -> bool:
        """Creates the lock with its whole record, if there is none; True when it did.

        The record is written to a file of our own and hard-linked into place
        (link fails when the path exists), so a reader never sees a lock
        without its holder's record.
        """
        mine = self.path.with_name(f"{LOCK_FILE}.{socket.gethostname()}.{os.getpid()}.new")
        try:
            mine.write_text(json.dumps(self.record))
            os.link(mine, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            mine.unlink(missing_ok=True)

    def _take_over_if_dead(self) -> None:
        """Removes a dead holder's lock so that `acquire` can create its own; raises if the holder lives.

        Only creating the lock file grants the lock. Removal happens under an exclusive
        POSIX lock on a separate file, after judging the holder again there, so
        two contenders that both saw the dead holder cannot remove each other's
        fresh lock: the second one finds the first one's lock alive.
        """
        with _takeover_mutex(self.path.with_name(TAKEOVER_FILE)):
            self._remove_if_dead()

    def _remove_if_dead(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            alive, why = holder_is_alive(holder)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as e:
            # Locks are written whole, so an unreadable one was damaged (or
            # left half-written by a crash); once nobody has touched it for as
            # long as a heartbeat may lapse, its writer is gone.
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age <= STALE_SECONDS:
                raise WorkdirError(
                    f"the lock {self.path} is unreadable ({type(e).__name__}); if no run uses {self.path.parent}, "
                    "delete it, or rerun after a minute"
                ) from None
            holder, alive, why = {}, False, f"its lock file is unreadable and unchanged for {age:.0f} s"
        if alive:
            raise WorkdirError(
                f"{self.path.parent} is in use by `{holder.get('command')}` on {holder.get('host')}, "
                f"pid {holder.get('pid')}, since {holder.get('started')}; wait for it to finish, stop it, "
                "or use another --workdir"
            )
        self.path.unlink(missing_ok=True)
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
