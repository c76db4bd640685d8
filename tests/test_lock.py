"""The workdir lock: liveness of its holder, unreadable and stale locks, racing runs, a lock taken away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, subprocess_env

from pipeline.runs import lock as workdir_lock
from pipeline.runs import workdir as workdir_lib


def test_an_unreadable_lock_is_refused_while_fresh_and_taken_over_once_stale(tmp_path):
    lock_file = tmp_path / workdir_lock.LOCK_FILE
    lock_file.write_text('{"host": "half-writ')
    with pytest.raises(workdir_lib.WorkdirError, match="is unreadable .*delete it, or rerun after a minute"):
        workdir_lock.WorkdirLock(tmp_path).acquire()
    stale = time.time() - workdir_lock.STALE_SECONDS - 1
    os.utime(lock_file, (stale, stale))
    with workdir_lock.WorkdirLock(tmp_path) as lock:
        assert json.loads(lock_file.read_text())["pid"] == lock.record["pid"]
    assert not list(tmp_path.glob(".lock*"))


def test_lock_holder_liveness_guards_against_pid_reuse_and_stale_hosts(tmp_path):
    host, me = socket.gethostname(), os.getpid()
    with workdir_lock.WorkdirLock(tmp_path) as lock:
        record = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
        assert record["pid"] == me and record["host"] == host and workdir_lock.holder_is_alive(record)[0]
        with pytest.raises(workdir_lib.WorkdirError, match=f"in use by .* on {host}, pid {me}"):
            workdir_lock.WorkdirLock(tmp_path).acquire()
        assert lock.record["pid_start"]
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
    reused = dict(record, pid_start="1")  # The pid is alive, but it is another process now.
    assert workdir_lock.holder_is_alive(reused) == (False, f"pid {me} now belongs to another process")
    elsewhere = dict(record, host="another-host", heartbeat=time.time())
    assert workdir_lock.holder_is_alive(elsewhere)[0]
    stale = dict(elsewhere, heartbeat=time.time() - workdir_lock.STALE_SECONDS - 1)
    assert not workdir_lock.holder_is_alive(stale)[0]


RACER = """
import os, sys, time
from pathlib import Path
from pipeline.runs import workdir as workdir_lib
from pipeline.runs import lock as workdir_lock
directory, ready, racers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < racers:  # Every racer starts once all have imported.
    time.sleep(0.001)
try:
    with workdir_lock.WorkdirLock(directory):
        print("acquired", flush=True)
        time.sleep(3.0)  # Holds it while the others look.
except workdir_lib.WorkdirError as e:
    print("refused:", e, flush=True)
"""


@pytest.mark.slow
def test_eight_runs_racing_for_a_stale_lock_leave_exactly_one_holder(tmp_path):
    stale = {
        "host": "another-host",
        "pid": 1,
        "pid_start": "1",
        "started": "long ago",
        "command": "x",
        "heartbeat": 0.0,
    }
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(stale))
    ready = tmp_path.parent / f"{tmp_path.name}-ready"
    ready.mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(ready), "8"],
            env=subprocess_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert sum(out == "acquired" for out in outputs) == 1, outputs
    refused = [out for out in outputs if out != "acquired"]
    assert all(out.startswith("refused:") and "is in use by" in out and ", pid " in out for out in refused), refused
    assert not list(tmp_path.glob(".lock*")), "no stale or temporary lock files are left"


def test_a_run_whose_lock_is_taken_stops_with_one_line(tmp_path, capfd):
    signals = []
    with workdir_lock.WorkdirLock(tmp_path, heartbeat_seconds=0.1, on_lost=lambda: signals.append("stop")) as lock:
        other = dict(lock.record, pid=lock.record["pid"] + 1, host="another-host")
        (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(other))
        deadline = time.time() + 5
        while not signals and time.time() < deadline:
            time.sleep(0.05)
    assert signals == ["stop"]
    assert f"error: the lock {tmp_path / workdir_lock.LOCK_FILE} is now held by pid" in capfd.readouterr().err
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["host"] == "another-host"  # Left alone.
