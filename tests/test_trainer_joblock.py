"""trainer.jobdir.joblock: one run per job dir; stale locks (dead process, silent machine) are taken over.

    python -m pytest -q tests/test_trainer_joblock.py

The refusal through the command line (one line, exit 2) and the take-over after a real kill -9 are tested in
test_trainer_multiworker.py and test_trainer_train.py; here the rules, with short timings. A gs:// job dir's lock
goes through the Cloud Storage API: tested against gcp-storage-emulator (tests/gcs_emulator.py, which adds
Cloud Storage's generation preconditions to it) with runs racing for the lock.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests import gcs_emulator
from trainer.jobdir import joblock
from trainer.jobdir.joblock import JobDirInUse, JobDirTakenOver, JobLock


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


@pytest.fixture(scope="module")
def gcs_bucket():
    """A bucket in a fresh emulator; google-cloud-storage reaches it through STORAGE_EMULATOR_HOST."""
    with gcs_emulator.running() as endpoint:
        before = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        try:
            from google.cloud import storage

            yield storage.Client().create_bucket("locks")
        finally:
            if before is None:
                del os.environ["STORAGE_EMULATOR_HOST"]
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = before


def lock_record(job: str) -> dict:
    if job.startswith("gs://"):
        bucket, _, name = job[len("gs://"):].partition("/")
        from google.cloud import storage

        blob = storage.Client().bucket(bucket).get_blob(f"{name}/.lock")
        return json.loads(blob.download_as_text()) if blob is not None else {}
    path = os.path.join(job, ".lock")
    return json.load(open(path)) if os.path.exists(path) else {}


def test_runs_racing_for_a_gcs_lock_exactly_one_wins(gcs_bucket):
    job = "gs://locks/race"
    start = threading.Barrier(6)
    won, refused = [], []

    def run():
        lock = JobLock(job)
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except JobDirInUse as e:
            refused.append(str(e))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and len(refused) == 5, (won, refused)
    assert all(r.startswith(f"job dir {job} is in use by another run: host {socket.gethostname()} pid {os.getpid()}")
               for r in refused), refused
    assert lock_record(job)["owner"] == won[0]._record["owner"]
    won[0].release()
    assert lock_record(job) == {}
    with JobLock(job):  # free again
        assert lock_record(job)["pid"] == os.getpid()


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_after_a_takeover_the_old_run_stops_at_its_next_heartbeat(tmp_path, quick, request, where):
    job = str(tmp_path / "job") if where == "local" else f"gs://{request.getfixturevalue('gcs_bucket').name}/takeover"
    old = JobLock(job)
    new = JobLock(job)
    new._stale_reason = lambda holder: "its heartbeat looks old from here"  # as from a machine that lost touch
    with pytest.raises(JobDirTakenOver) as stopped:
        with old:
            new.acquire()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the old run goes on until its heartbeat finds the lock is not its own
                time.sleep(0.05)
                if old.lost is not None and threading.current_thread() is not threading.main_thread():
                    break  # (the heartbeat interrupted the process's main thread; pytest-xdist runs tests in another)
    assert str(stopped.value) == (
        f"job dir {job} was taken over by host {socket.gethostname()} pid {os.getpid()} (started "
        f"{new._record['started']}) while this run held it; this run stops here, writing nothing more. Let that "
        "run go on, or stop it and start this command again")
    time.sleep(0.5)  # a few more of the new owner's heartbeats: nobody overwrites them
    assert lock_record(job)["owner"] == new._record["owner"]
    new.release()
    assert lock_record(job) == {}
