"""Start-up of a multi-worker run: a task whose peers never come gives up after distribute.startup_timeout with
one line naming them; SIGTERM ends a waiting task at once; the wait listens only where TF_CONFIG says.

    python -m pytest -q tests/test_trainer_startup.py

The rules run in-process on threads (no TensorFlow); the command line runs as real processes, three at once:
only the chief of a chief + worker TF_CONFIG, only the worker of another, and a task stopped by SIGTERM.
"""

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests import trainer_fixtures as fx
from trainer.launch import free_ports
from trainer.training import cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_tasks(ports):
    return {"chief": [f"localhost:{ports[0]}"], "worker": [f"localhost:{ports[1]}"]}


def test_tasks_that_all_start_pass_the_wait():
    layout = two_tasks(free_ports(2))
    errors = []

    def task(kind):
        try:
            cluster.wait_for_peers(cluster.parse(cluster.tf_config(layout, kind, 0)), timeout_s=60, poll_s=0.05)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=task, args=(kind,)) for kind in ("chief", "worker")]
    for t in threads:
        t.start()
        time.sleep(0.3)  # the worker comes later than the chief
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)


def test_a_lone_task_names_the_absent_one_and_listens_only_on_its_host():
    ports = free_ports(2)
    task = cluster.parse(cluster.tf_config(two_tasks(ports), "worker", 0))
    seen = []

    def probe():  # while the task waits, its port answers on loopback (the host TF_CONFIG names)
        time.sleep(0.3)
        seen.append(cluster._probe(f"127.0.0.1:{ports[1]}", "test"))
        seen.append(listeners(ports[1]))

    prober = threading.Thread(target=probe)
    prober.start()
    with pytest.raises(cluster.PeersMissing) as e:
        cluster.wait_for_peers(task, timeout_s=1.0, poll_s=0.05)
    prober.join()
    assert str(e.value) == (f"worker:0 waited 1 s (distribute.startup_timeout) for the cluster, but chief:0 "
                            f"(localhost:{ports[0]}) never started. Start every task of TF_CONFIG, or raise "
                            "--distribute.startup_timeout if they come up later")
    assert seen[0] is True
    if seen[1] is not None:  # Linux: the listening socket's own address
        assert seen[1] == ["127.0.0.1"]
    assert not cluster._probe(f"127.0.0.1:{ports[1]}", "test")  # closed after the wait


def listeners(port: int):
    """The local addresses listening on `port` ('::' = every interface over IPv6 and IPv4), from /proc/net/tcp
    and tcp6; None where those files do not exist."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            if len(host) == 8:  # IPv4, little-endian
                found.append(".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                found.append("::" if int(host, 16) == 0 else host)
    return found


def start(tf_config, job, *extra):
    env = {**os.environ, "TF_CONFIG": tf_config}
    args = ["--config", "smoke", "--data_dir", fx.fixture_data_dir(), "--job_dir", str(job), *extra]
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=err, text=True)
    proc.err = err
    return proc


def stderr_of(proc) -> str:
    proc.err.seek(0)
    return proc.err.read()


def test_absent_peers_end_the_command_with_one_line_and_sigterm_ends_a_waiting_task(tmp_path):
    chief_only, worker_only, stopped = (two_tasks(free_ports(2)) for _ in range(3))
    procs = [start(cluster.tf_config(chief_only, "chief", 0), tmp_path / "a", "--distribute.startup_timeout=2"),
             start(cluster.tf_config(worker_only, "worker", 0), tmp_path / "b", "--distribute.startup_timeout=2"),
             start(cluster.tf_config(stopped, "chief", 0), tmp_path / "c")]
    try:
        deadline = time.monotonic() + 240
        while "waiting up to 1200 s" not in stderr_of(procs[2]) and time.monotonic() < deadline \
                and procs[2].poll() is None:
            time.sleep(0.2)
        procs[2].send_signal(signal.SIGTERM)
        results = [(p.wait(timeout=240), stderr_of(p).strip().splitlines()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    (chief_code, chief_err), (worker_code, worker_err), (stopped_code, stopped_err) = results
    assert chief_code == 2 and "Traceback" not in "".join(chief_err), chief_err
    assert chief_err[-1].startswith("error: chief:0 waited 2 s (distribute.startup_timeout) for the cluster, but "
                                    f"worker:0 ({chief_only['worker'][0]}) never started")
    assert worker_code == 2 and worker_err[-1].startswith(
        f"error: worker:0 waited 2 s (distribute.startup_timeout) for the cluster, but chief:0 "
        f"({worker_only['chief'][0]}) never started"), worker_err
    assert stopped_code == 143 and stopped_err[-1] == (
        "error: stopped by SIGTERM while waiting for the cluster's other tasks (nothing trained yet); start the "
        "same command again to run"), stopped_err
    assert not (tmp_path / "a" / ".lock").exists() and not (tmp_path / "c" / ".lock").exists()  # released


def test_startup_timeout_must_be_positive():
    from trainer.config import ConfigError
    from trainer.config_loader import load_config

    assert load_config([]).distribute.startup_timeout == 1200
    with pytest.raises(ConfigError, match="distribute.startup_timeout: must be > 0 seconds, got 0"):
        load_config(["--distribute.startup_timeout=0"])
