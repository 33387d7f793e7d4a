"""The TF_CONFIG contract: which task this process is, who is chief, where non-chief tasks write.

    TF_CONFIG='{"cluster": {"chief": ["h0:2222"], "worker": ["h1:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        python -c "from trainer.training.cluster import from_env; print(from_env())"

Pure Python (no TensorFlow import), so a malformed TF_CONFIG, a task outside its cluster or a port already
taken fails in a second with one line, before TensorFlow starts. Vertex AI writes TF_CONFIG on every replica
(pool 0 = `chief`, pool 1 = `worker`); `python -m trainer.launch` writes the same layout locally.
MultiWorkerMirroredStrategy needs `chief` and/or `worker` tasks only: `ps` and `evaluator` are refused.

Start-up: TensorFlow's own rendezvous (inside MultiWorkerMirroredStrategy()) waits for every task with no time
limit, holding Python's interpreter lock and with SIGTERM taken by its preemption notifier, so a task whose peer
never comes can be ended by kill -9 only. `wait_for_peers` therefore runs first, in Python: each task listens on
its own TF_CONFIG address (bound to that host, not every interface) and connects to every other task's, until
all answer or `distribute.startup_timeout` passes (`PeersMissing`, naming the tasks that never came; SIGTERM
meanwhile is handled by trainer.training.shutdown). Only then does TensorFlow start, when every peer is there.
TensorFlow's own gRPC server listens on 0.0.0.0 whatever TF_CONFIG names (its port is all TensorFlow 2.21
lets a caller choose): on a shared network keep the port closed to other machines with a firewall.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import time
from typing import Mapping

TRAINING_JOBS = ("chief", "worker")  # the order TensorFlow numbers replicas in: chief first
log = logging.getLogger(__name__)


class ClusterError(ValueError):
    """TF_CONFIG cannot describe a run of this trainer; the message says what to fix."""


class PeersMissing(ClusterError):
    """Some tasks of the cluster did not start within distribute.startup_timeout."""


@dataclasses.dataclass(frozen=True)
class Task:
    cluster: Mapping[str, tuple[str, ...]]  # {"chief": ("h0:p",), "worker": ("h1:p", ...)}; {} = one process
    type: str = "chief"
    index: int = 0

    @property
    def num_tasks(self) -> int:
        return sum(len(v) for v in self.cluster.values())

    @property
    def is_multi_worker(self) -> bool:
        return self.num_tasks > 1

    @property
    def is_chief(self) -> bool:
        """The `chief` task if there is one, else worker 0 (TensorFlow's rule); a lone process is its own chief."""
        if not self.is_multi_worker:
            return True
        if "chief" in self.cluster:
            return self.type == "chief"
        return self.type == "worker" and self.index == 0

    @property
    def name(self) -> str:
        return f"{self.type}:{self.index}"

    @property
    def address(self) -> str:
        return self.cluster[self.type][self.index] if self.cluster else ""

    def peers(self) -> dict[str, str]:
        """{'worker:1': 'h1:2222', ...}: every other task of the cluster and its address."""
        return {f"{kind}:{i}": a for kind, addresses in self.cluster.items() for i, a in enumerate(addresses)
                if (kind, i) != (self.type, self.index)}

    def scratch_dir(self, job_dir: str) -> str:
        """Where a non-chief task writes the outputs every task must produce (TensorFlow's multi-worker pattern:
        saving can involve collectives, so every task saves, and only the chief's copy is kept)."""
        return f"{job_dir.rstrip('/')}/.task_scratch/{self.type}_{self.index}"


def from_env(environ: Mapping[str, str] | None = None) -> Task:
    env = os.environ if environ is None else environ
    return parse(env.get("TF_CONFIG", ""))


def parse(text: str) -> Task:
    """TF_CONFIG JSON -> Task; raises ClusterError naming what is wrong."""
    if not text.strip():
        return Task(cluster={})
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}); expected "
                           '{"cluster": {"worker": ["host:port", ...]}, '
                           '"task": {"type": "worker", "index": 0}}') from None
    if not isinstance(tf_config, dict):
        raise ClusterError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {type(tf_config).__name__}")
    raw_cluster = tf_config.get("cluster") or {}
    if not isinstance(raw_cluster, dict):
        raise ClusterError("TF_CONFIG 'cluster' must map job names to lists of host:port addresses")
    cluster = {}
    for job, addresses in raw_cluster.items():
        if job not in TRAINING_JOBS:
            raise ClusterError(f"TF_CONFIG cluster has a {job!r} job; MultiWorkerMirroredStrategy runs only "
                               f"{' and '.join(TRAINING_JOBS)} tasks (Vertex AI: use worker pools 0 and 1 only)")
        if isinstance(addresses, str) or not isinstance(addresses, list) or not addresses:
            raise ClusterError(f"TF_CONFIG cluster[{job!r}] must be a non-empty list of host:port, got {addresses!r}")
        for a in addresses:
            host, sep, port = str(a).rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ClusterError(f"TF_CONFIG cluster[{job!r}] address {a!r} is not host:port")
        cluster[job] = tuple(str(a) for a in addresses)
    if len(cluster.get("chief", ())) > 1:
        raise ClusterError(f"TF_CONFIG cluster has {len(cluster['chief'])} chief tasks; there can be one")
    task = tf_config.get("task") or {}
    if not cluster:
        return Task(cluster={})
    if not isinstance(task, dict) or "type" not in task:
        raise ClusterError("TF_CONFIG has a cluster but no task {'type': ..., 'index': ...} saying which one this is")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        raise ClusterError(f"TF_CONFIG task type {kind!r} is not in the cluster (jobs: {sorted(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ClusterError(f"TF_CONFIG task {kind}:{index} is outside the cluster: {kind} has "
                           f"{len(cluster[kind])} task(s), indices 0-{len(cluster[kind]) - 1}")
    return Task(cluster=cluster, type=kind, index=index)


def check_port_free(task: Task) -> None:
    """A multi-worker task serves gRPC on its own address's port: fail with one line if something holds it."""
    if task.is_multi_worker:
        _listen(task, "").close()  # TensorFlow's server binds every interface: check the port there


def _listen(task: Task, host: str) -> socket.socket:
    """A socket listening on this task's TF_CONFIG port at `host` ('' = every interface); ClusterError if taken."""
    port = int(_split(task.address)[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As TensorFlow's gRPC server does: a port whose last connections linger in TIME_WAIT (a task killed a
    # moment ago) is free to listen on again; one with a listener is not.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen(16)
        return s
    except OSError as e:
        s.close()
        if e.errno != errno.EADDRINUSE:
            raise
        raise ClusterError(f"port {port} of this task ({task.name} at {task.address} in TF_CONFIG) is already "
                           "in use on this machine: is an earlier run still going? Stop it, or give the "
                           "cluster free ports (python -m trainer.launch picks them)") from None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _bind_host(host: str) -> str:
    """The TF_CONFIG host when it is an address of this machine (localhost, its own name), else every interface
    (a name that resolves to an address this machine does not hold, such as one behind NAT)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return host
    except OSError:
        return ""


def _probe(address: str, me: str) -> bool:
    """Tells the task listening at host:port that `me` has seen it; False if nothing listens there yet."""
    try:
        with socket.create_connection(_split(address), timeout=1.0) as s:
            s.sendall(me.encode())
            return True
    except OSError:  # refused, unreachable, or a host name not in DNS yet (a replica still being scheduled)
        return False


def _probes_received(beacon: socket.socket) -> set[str]:
    """The names of the tasks whose probes wait in the listen queue (which this also empties)."""
    names = set()
    while True:
        try:
            conn, _ = beacon.accept()
        except (BlockingIOError, InterruptedError):
            return names
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                names.add(conn.recv(256).decode(errors="replace"))


def wait_for_peers(task: Task, timeout_s: float, poll_s: float = 0.5) -> None:
    """Listens on this task's address and probes every other task's until each has both answered and probed
    this one; raises PeersMissing naming those that did not within timeout_s. A no-op for a single process.

    Both directions, because a task stops listening once its own wait is over (TensorFlow's server takes the
    port next): a peer that had only answered could otherwise leave before it had seen this task."""
    if not task.is_multi_worker:
        return
    with _listen(task, _bind_host(_split(task.address)[0])) as beacon:
        beacon.setblocking(False)
        peers = task.peers()
        seen, seen_by = set(), set()
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            seen_by |= _probes_received(beacon)
            seen |= {name for name, address in peers.items() if name not in seen and _probe(address, task.name)}
            seen_by |= _probes_received(beacon)
            missing = {name: a for name, a in peers.items() if name not in seen or name not in seen_by}
            if not missing:
                if announced:
                    log.info("%s: every task of the cluster has started", task.name)
                return
            if time.monotonic() >= deadline:
                raise PeersMissing(
                    f"{task.name} waited {timeout_s:g} s (distribute.startup_timeout) for the cluster, but "
                    f"{_names(missing)} never started. Start every task of TF_CONFIG, or raise "
                    "--distribute.startup_timeout if they come up later")
            if not announced:
                log.info("%s: waiting up to %g s for %s to start", task.name, timeout_s, _names(missing))
                announced = True
            time.sleep(poll_s)


def _names(tasks: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({address})" for name, address in tasks.items())


def tf_config(cluster: Mapping[str, list[str]], kind: str, index: int) -> str:
    """The TF_CONFIG value for one task of `cluster` (what Vertex AI and trainer.launch set)."""
    return json.dumps({"cluster": {k: list(v) for k, v in cluster.items()}, "task": {"type": kind, "index": index}})
