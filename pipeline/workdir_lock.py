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
import socket
import sys
import threading
import time
from pathlib import Path

from pipeline.workdir import WorkdirError

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

    def __init__(self, directory: str | Path, command: str | None = None):
        self.path = Path(directory) / LOCK_FILE
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
        log.warning(
            "taking over the lock of a run that is gone (%s, started %s): %s",
            holder.get("command"),
            holder.get("started"),
            why,
        )
        self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.record["heartbeat"] = time.time()
            tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(self.record))
                os.replace(tmp, self.path)
            except OSError:
                pass  # A full disk fails the run's own writes, which report it.

    def release(self) -> None:
        """Stops the heartbeat and removes the lock, if it is still ours."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
            try:
                if json.loads(self.path.read_text()).get("pid") == self.record["pid"]:
                    self.path.unlink()
            except (OSError, json.JSONDecodeError):
                pass
