"""Local multi-worker launcher (the `torchrun` TensorFlow lacks): N trainer processes on this machine.

    python -m trainer.launch --workers 2 -- --config smoke --data_dir out/data --job_dir out/job

Picks N free ports, starts N copies of `python -m trainer.task <args>` with the TF_CONFIG Vertex AI would give
N replicas (task 0 is the `chief`, the others `worker` 0..N-2; `trainer.vertex --replica_count N` asks for the
same layout), prefixes every line they print with their task (`[chief:0] ...`), and waits. When one task
fails, the others are stopped (SIGTERM, on which a training task writes a backup and ends, then SIGKILL after
--grace seconds) and the launcher exits with the failed task's status; otherwise it
exits 0 once all are done. Ctrl-C stops them all. Each task is also killed if the launcher itself dies.
Every task uses all of this machine's cores: N workers on one machine compete for them (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tfds_person_attrs import cli
from trainer.training import cluster

DEFAULT_MODULE = "trainer.task"


def free_ports(n: int) -> list[int]:
    """n distinct ports nothing listens on now (the OS picks them; they stay free unless something races us)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]


def cluster_layout(workers: int, ports: list[int], host: str = "localhost") -> dict[str, list[str]]:
    """Vertex AI's layout for `workers` replicas: pool 0 = one chief, pool 1 = the other workers."""
    addresses = [f"{host}:{p}" for p in ports]
    layout = {"chief": addresses[:1]}
    if workers > 1:
        layout["worker"] = addresses[1:]
    return layout


def plan(workers: int, args: list[str], module: str = DEFAULT_MODULE,
         ports: list[int] | None = None) -> list[dict]:
    """One entry per task: its name, command line and TF_CONFIG (what `launch` starts)."""
    layout = cluster_layout(workers, ports or free_ports(workers))
    return [{"name": f"{kind}:{i}", "argv": ["python", "-m", module, *args],
             "tf_config": cluster.tf_config(layout, kind, i)}
            for kind in cluster.TRAINING_JOBS for i in range(len(layout.get(kind, [])))]


def _die_with_parent_fn():
    """What each child runs before exec: ask Linux to SIGKILL it when the launcher goes away (no orphans holding
    ports). libc is loaded here, in the parent, so the child only makes one system call."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pump(proc: subprocess.Popen, prefix: str, lock: threading.Lock) -> None:
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"{prefix} {line}" if line.endswith("\n") else f"{prefix} {line}\n")
            sys.stdout.flush()


def launch(workers: int, args: list[str], module: str = DEFAULT_MODULE, grace: float = 10.0) -> int:
    return run_tasks([{"name": t["name"], "argv": t["argv"], "env": {"TF_CONFIG": t["tf_config"]}}
                      for t in plan(workers, args, module)], grace)


def run_tasks(tasks: list[dict], grace: float = 10.0, base_env: dict | None = None, label: str = "launch") -> int:
    """Runs every task ({'name', 'argv', 'env'}) as a process, its lines prefixed `[name] `; when one fails, stops the
    others and returns its status; 0 once all succeeded. A leading "python" in argv is this interpreter.
    `env` is laid over `base_env` (default: this process's environment, less TF_CONFIG and CLUSTER_SPEC, which
    describe a cluster this process may itself belong to)."""
    lock = threading.Lock()
    procs: dict[str, subprocess.Popen] = {}
    before_exec = _die_with_parent_fn()
    if base_env is None:
        base_env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    for task in tasks:  # every process is forked before any thread starts
        argv = list(task["argv"])
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        env = {**base_env, **task.get("env", {}), "PYTHONUNBUFFERED": "1"}
        procs[task["name"]] = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=before_exec)
    pumps = [threading.Thread(target=_pump, args=(proc, f"[{name}]", lock), daemon=True)
             for name, proc in procs.items()]
    for t in pumps:
        t.start()
    status = 0
    try:
        while procs:
            for name, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[name]
                if code != 0:
                    status = code
                    _say(lock, f"{name} exited with status {code}; stopping {', '.join(procs) or 'nothing else'}",
                         label)
                    _stop(procs.values(), grace)
                    procs.clear()
                    break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _say(lock, "interrupted; stopping every task", label)
        _stop(procs.values(), grace)
        status = 130
    for t in pumps:
        t.join(timeout=5)
    return status


def _stop(procs, grace: float) -> None:
    procs = [p for p in procs if p.poll() is None]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _say(lock: threading.Lock, message: str, label: str = "launch") -> None:
    with lock:
        print(f"[{label}] {message}", flush=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = cli.ArgumentParser(prog="python -m trainer.launch", description=__doc__.split("\n\n")[0],
                           epilog="Everything after -- goes to every task unchanged.")
    p.add_argument("--workers", type=cli.positive_int, required=True,
                   help="processes to start (2 or more for multi-worker)")
    p.add_argument("--module", default=DEFAULT_MODULE, help="the Python module each task runs")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL when stopping")
    a = p.parse_args(argv)
    return launch(a.workers, task_args, a.module, a.grace)


if __name__ == "__main__":
    sys.exit(cli.run(main))
