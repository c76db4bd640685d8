"""Start N local processes as one TensorFlow (or KerasTuner) cluster on 127.0.0.1.

Each process gets its own TF_CONFIG (or KERASTUNER_* variables), free
ports, and its own share of the cores; its output is streamed with a
`[worker i]` prefix. When one process
fails, the others are stopped and the failure is named. SIGTERM and a first
Ctrl-C are forwarded to every process, which checkpoint the same step and
exit; a second Ctrl-C stops them at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster import environment as cluster_env

GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Task:
    """One process to start: its name for logs, its extra environment, and the cores it runs on (None: any)."""

    name: str
    env: dict[str, str]
    cores: tuple[int, ...] | None = None


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Thread settings a user may have made; the launcher then leaves all of them alone.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def _usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def threads_per_process(num_processes: int, cores: int | None = None) -> int:
    """Each process's share of the cores this launcher may use (at least one)."""
    if cores is None:
        cores = len(_usable_cores())
    return max(1, cores // num_processes)


def core_shares(num_processes: int, cores: list[int] | None = None) -> list[tuple[int, ...] | None]:
    """Disjoint runs of `threads_per_process` consecutive cores, one per process.

    `cores` defaults to the cores this launcher may use. With fewer cores than
    processes, or where the OS cannot pin (`os.sched_setaffinity`), every
    share is None: the processes run on any core.
    """
    cores = _usable_cores() if cores is None else sorted(cores)
    if len(cores) < num_processes or not hasattr(os, "sched_setaffinity"):
        return [None] * num_processes
    size = len(cores) // num_processes
    return [tuple(cores[i * size : (i + 1) * size]) for i in range(num_processes)]


def thread_env(threads: int) -> dict[str, str]:
    """Thread pools of `threads` threads, unless the user set any of them.

    Each TensorFlow process otherwise sizes its intra-op, inter-op and
    oneDNN/OpenMP pools to every core of the machine, and processes sharing
    a host fight over the same cores.
    """
    if any(name in os.environ for name in THREAD_VARIABLES):
        return {}
    n = str(threads)
    return {"TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n, "OMP_NUM_THREADS": n}


def gpu_env(gpus: list[str], index: int, count: int, share=cluster_env.gpu_share) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES of process `index` of `count`: its own `share` of `gpus` (nothing without GPUs).

    Without it every process would see, and allocate memory on, every GPU.
    """
    gpus = share(gpus, index, count)
    return {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}


def tf_config_tasks(num_workers: int, pin_cores: bool = True, gpus: list[str] = ()) -> list[Task]:
    """One MultiWorkerMirroredStrategy worker per process, each on its share of the cores and of `gpus`.

    Worker 0 is the chief. With `pin_cores`, each worker runs on its own
    cores (`core_shares`): every worker computes its share of each step and
    then waits for the others in the gradient all-reduce, so a worker whose
    threads migrate onto another's core delays every step of the job. The
    benchmark record measures pinned against unpinned workers.
    """
    workers = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
    shares = core_shares(num_workers) if pin_cores else [None] * num_workers
    return [
        Task(
            f"worker {i}",
            {
                "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}),
                **thread_env(threads_per_process(num_workers)),
                **gpu_env(list(gpus), i, num_workers),
            },
            shares[i],
        )
        for i in range(num_workers)
    ]


def open_ports_warning(tasks: list[Task]) -> str:
    """The warning a local multi-worker run prints: TensorFlow's servers listen on every interface.

    TensorFlow's gRPC server binds `0.0.0.0:PORT` whatever host TF_CONFIG
    names, and its distributed runtime runs any op it is sent, without
    authentication. The KerasTuner oracle binds the address it is given
    (127.0.0.1 here), so tuner runs open no such port.
    """
    workers = json.loads(tasks[0].env["TF_CONFIG"])["cluster"]["worker"]
    ports = [address.rsplit(":", 1)[1] for address in workers]
    return (
        f"warning: TensorFlow's workers listen on every network interface, not only loopback (ports "
        f"{', '.join(ports)}): anyone who can reach this machine can run code in them while the run lasts; "
        "run on a trusted network or firewall these ports"
    )


def tuner_tasks(num_workers: int, pin_cores: bool = True, gpus: list[str] = ()) -> list[Task]:
    """A KerasTuner oracle chief plus `num_workers` tuner workers, each worker on its share of the cores and GPUs.

    The chief answers the workers' requests; with `--retrain_best` it retrains the best config once they are done.
    """
    (port,) = free_ports(1)
    common = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    # No thread or core limits for the chief: it answers requests while the
    # workers search, then (`--retrain_best`) retrains on the whole machine.
    tuners = ",".join(f"tuner{i}" for i in range(num_workers))
    chief = Task("chief", {**common, "KERASTUNER_TUNER_ID": "chief", "FMNIST_SEARCH_TUNERS": tuners})
    threads = thread_env(threads_per_process(num_workers))
    shares = core_shares(num_workers) if pin_cores else [None] * num_workers
    gpu_envs = [gpu_env(list(gpus), i, num_workers, cluster_env.tuner_gpu_share) for i in range(num_workers)]
    return [chief] + [
        Task(f"tuner{i}", {**common, "KERASTUNER_TUNER_ID": f"tuner{i}", **threads, **gpu_envs[i]}, shares[i])
        for i in range(num_workers)
    ]


def _start(task: Task, command: list[str]) -> subprocess.Popen:
    """Starts `command` for `task`, on the task's cores when it has them.

    The launcher's own thread takes the task's cores while it starts the
    process, which inherits them from its first instruction (and so does
    every thread and process it starts); pinning an already running process
    could miss threads it had started.
    """
    env = {**os.environ, **task.env, "PYTHONUNBUFFERED": "1"}
    own = os.sched_getaffinity(0) if task.cores else None
    if task.cores:
        os.sched_setaffinity(0, task.cores)
    try:
        # Each task in its own session: a Ctrl-C in the terminal reaches the
        # launcher only, which forwards it once to every task.
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if own is not None:
            os.sched_setaffinity(0, own)


def _core_list(cores) -> str:
    return ",".join(str(c) for c in sorted(cores))


def _stream(name: str, pipe, lock: threading.Lock) -> None:
    for line in iter(pipe.readline, b""):
        with lock:
            sys.stdout.buffer.write(f"[{name}] ".encode() + line)
            sys.stdout.flush()


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.time() + GRACE_SECONDS
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _forward_signals(processes: dict[str, subprocess.Popen]) -> dict:
    """Passes SIGTERM and SIGINT on to every task; a second SIGINT kills them."""
    received = []

    def forward(signum, frame):
        del frame
        if received and signum == signal.SIGINT:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
            return
        received.append(signum)
        print(f"launcher: {signal.Signals(signum).name} passed on to every task", file=sys.stderr, flush=True)
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    return {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}


def run_cluster(tasks: list[Task], command: list[str]) -> int:
    """Runs `command` once per task and returns 0 when all succeed.

    Returns a non-zero code (and prints which task failed) as soon as one task
    fails; the remaining tasks are stopped so nothing waits on a dead peer.
    After a forwarded SIGTERM or Ctrl-C it waits for the tasks to save their
    checkpoint and returns their exit code (143 or 130).
    """
    lock = threading.Lock()
    processes: dict[str, subprocess.Popen] = {}
    threads = []
    previous = _forward_signals(processes)
    try:
        for index, task in enumerate(tasks):
            process = _start(task, command)
            processes[task.name] = process
            where = f" on cores {_core_list(task.cores)}" if task.cores else ""
            print(f"launcher: started {task.name} (pid {process.pid}){where}", flush=True)
            threads.append(threading.Thread(target=_stream, args=(task.name, process.stdout, lock), daemon=True))
            threads[-1].start()
            if index == 0 and len(tasks) > 1:
                _wait_until_listening(task, process)
        return _wait(processes)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop(processes)
        for thread in threads:
            thread.join(timeout=5)


def _wait_until_listening(task: Task, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Waits until the first worker's server listens (or it exits) before its peers start.

    A peer whose first connection to it is refused makes TensorFlow print an
    error line while it retries, which reads as a failure. The listening
    sockets are read from /proc/net/tcp and tcp6, so nothing connects to the
    server; without /proc the peers start at once.
    """
    spec = json.loads(task.env.get("TF_CONFIG", "{}"))
    try:
        port = int(spec["cluster"][spec["task"]["type"]][spec["task"]["index"]].rsplit(":", 1)[1])
    except (KeyError, IndexError, ValueError, TypeError):
        return
    tables = [path for path in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")) if path.exists()]
    deadline = time.time() + timeout
    while tables and process.poll() is None and time.time() < deadline:
        for table in tables:
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN.
                    return
        time.sleep(0.2)


def _wait(processes: dict[str, subprocess.Popen]) -> int:
    while True:
        codes = {name: p.poll() for name, p in processes.items()}
        stopped = [code for code in codes.values() if code in (128 + signal.SIGTERM, 128 + signal.SIGINT)]
        if stopped and all(code is not None for code in codes.values()):
            print("launcher: every task saved its checkpoint and stopped; rerun to resume", file=sys.stderr, flush=True)
            return stopped[0]
        failed = [(name, code) for name, code in codes.items() if code not in (None, 0) and code not in stopped]
        if failed:
            name, code = failed[0]
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            print(f"launcher: {name} failed ({how}); stopping the others", file=sys.stderr, flush=True)
            _stop(processes)
            return code if code > 0 else 1
        if all(code == 0 for code in codes.values()):
            return 0
        time.sleep(0.2)
