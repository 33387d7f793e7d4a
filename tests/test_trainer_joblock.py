"""trainer.jobdir.joblock: one run per job dir; stale locks (dead process, silent machine) are taken over.

    python -m pytest -q tests/test_trainer_joblock.py

The refusal through the command line (one line, exit 2) and the take-over after a real kill -9 are tested in
test_trainer_multiworker.py and test_trainer_train.py; here the rules, with short timings.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from trainer.jobdir import joblock
from trainer.jobdir.joblock import JobDirInUse, JobLock


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(joblock, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(joblock, "STALE_AFTER_S", 1.5)


def plant(job, **record):
    os.makedirs(job, exist_ok=True)
    with open(os.path.join(job, ".lock"), "w") as f:
        json.dump(record, f)


def test_a_live_run_is_refused_and_the_lock_goes_when_it_ends(tmp_path):
    job = str(tmp_path / "job")
    with JobLock(job) as held:
        holder = json.load(open(held.path))
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(JobDirInUse, match=f"in use by another run: host {socket.gethostname()} pid {os.getpid()}"):
            JobLock(job).acquire()
    assert not os.path.exists(held.path)
    with JobLock(job):  # free again
        pass


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    job = str(tmp_path / "job")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    plant(job, host=socket.gethostname(), boot_id=joblock._boot_id(), pid=int(gone.stdout), started="earlier")
    with JobLock(job) as lock:
        assert json.load(open(lock.path))["pid"] == os.getpid()
    assert "is no longer running" in caplog.text


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    job = str(tmp_path / "job")  # our own pid, but recorded with another start time: the old run is gone
    plant(job, host=socket.gethostname(), boot_id=joblock._boot_id(), pid=os.getpid(), pid_start="1")
    with JobLock(job):
        pass


def test_another_machine_silent_lock_is_taken_over_a_beating_one_refused(tmp_path, quick):
    job = str(tmp_path / "job")
    plant(job, host="elsewhere", boot_id="other", pid=1, heartbeat=time.time())
    t0 = time.monotonic()
    with JobLock(job):  # its heartbeat never moves: stale after STALE_AFTER_S
        assert time.monotonic() - t0 >= 1.0
    plant(job, host="elsewhere", boot_id="other", pid=1, heartbeat=time.time())
    stop = threading.Event()

    def beat():  # a live run on another machine keeps rewriting its heartbeat
        while not stop.wait(0.2):
            plant(job, host="elsewhere", boot_id="other", pid=1, heartbeat=time.time())

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        with pytest.raises(JobDirInUse, match="host elsewhere pid 1"):
            JobLock(job).acquire()
    finally:
        stop.set()
        beater.join()


def test_the_heartbeat_moves_while_the_run_lives(tmp_path, quick):
    with JobLock(str(tmp_path / "job")) as lock:
        first = json.load(open(lock.path))["heartbeat"]
        time.sleep(0.6)
        assert json.load(open(lock.path))["heartbeat"] > first
