"""One run per job dir: JOB_DIR/.lock names the host and process that holds it; stale locks are taken over.

    python -c "from trainer.jobdir.joblock import JobLock; l = JobLock('/tmp/job'); l.acquire(); \
print(open(l.path).read())"

A second run into a job dir in use fails with one line naming the holder. A lock is stale, and is replaced
with a note saying so, when its process is gone: on the same machine (same host name and boot) the recorded pid
no longer runs, or runs a process started at another time (pids are reused); from another machine its
heartbeat, rewritten every HEARTBEAT_S seconds while the run lives, is older than STALE_AFTER_S. A fresh lock
from another machine is watched until its heartbeat moves (alive: refused) or ages past STALE_AFTER_S (a chief
that died just before Vertex AI or Kubeflow restarted the job: taken over). In a multi-worker run only the
chief holds the lock. Local creation is exclusive (hard link of a complete file); on
gs:// it is check-then-write, which leaves a window of a second or so for two runs started together.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time

import tensorflow as tf

from trainer.jobdir import atomic

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0


class JobDirInUse(RuntimeError):
    """Another live run holds the job dir."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), '' where unknown, None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


class JobLock:
    def __init__(self, job_dir: str):
        self.job_dir = job_dir.rstrip("/")
        self.path = f"{self.job_dir}/{LOCK_NAME}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict | None = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self) -> None:
        tf.io.gfile.makedirs(self.job_dir)
        now = time.time()
        self._record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                        "boot_id": _boot_id(), "started": _iso(now), "heartbeat": now,
                        "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
        for _ in range(2):
            if self._create():
                break
            holder = self._read()
            reason = self._stale_reason(holder)
            if reason is None and not self._same_machine(holder):
                reason = self._watch(holder)
            if reason is None:
                raise JobDirInUse(
                    f"job dir {self.job_dir} is in use by another run: host {holder.get('host')} pid "
                    f"{holder.get('pid')}, started {holder.get('started')} ({holder.get('command', '?')}). Wait for "
                    f"it to end, or pick another --job_dir; if that run is gone, delete {self.path}")
            log.warning("taking over %s: %s", self.path, reason)
            with contextlib.suppress(tf.errors.NotFoundError):  # its owner may have just released it
                tf.io.gfile.remove(self.path)
        else:
            raise JobDirInUse(f"could not take the lock {self.path}: another run took it at the same moment")
        self._thread = threading.Thread(target=self._beat, name="joblock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self._read()
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            tf.io.gfile.remove(self.path)

    def _create(self) -> bool:
        text = json.dumps(self._record)
        if "://" in self.path:
            if tf.io.gfile.exists(self.path):
                return False
            atomic.write_text(self.path, text)
            return True
        tmp = atomic.temp_name(self.path)
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.link(tmp, self.path)  # fails if the lock exists; the lock never appears half-written
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def _read(self) -> dict:
        try:
            with tf.io.gfile.GFile(self.path) as f:
                holder = json.loads(f.read())
            return holder if isinstance(holder, dict) else {}
        except (tf.errors.NotFoundError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _same_machine(holder: dict) -> bool:
        return holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id()

    def _watch(self, holder: dict) -> str | None:
        """Waits for another machine's fresh lock to beat (None: alive) or to go stale (the reason)."""
        log.warning("job dir %s is locked by host %s pid %s; waiting up to %.0f s to see whether that run is alive",
                    self.job_dir, holder.get("host"), holder.get("pid"), STALE_AFTER_S)
        while True:
            time.sleep(min(5.0, HEARTBEAT_S))
            now = self._read()
            if not now:
                return "its run released it"
            if now.get("heartbeat") != holder.get("heartbeat") or now.get("pid") != holder.get("pid"):
                return None
            reason = self._stale_reason(now)
            if reason is not None:
                return reason

    def _stale_reason(self, holder: dict) -> str | None:
        if not holder:
            return "the lock file is unreadable (written by something else, or damaged)"
        if self._same_machine(holder):
            pid = int(holder.get("pid", -1))
            start = _process_start(pid)
            if start is None:
                return f"its process (pid {pid}, started {holder.get('started')}) is no longer running"
            if holder.get("pid_start") and start and start != holder["pid_start"]:
                return f"pid {pid} now belongs to another process (the run started {holder.get('started')} is gone)"
            return None
        age = time.time() - float(holder.get("heartbeat", 0))
        if age > STALE_AFTER_S:
            return f"its heartbeat from host {holder.get('host')} is {age:.0f} s old (> {STALE_AFTER_S:.0f} s)"
        return None

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._record["heartbeat"] = time.time()
            try:
                atomic.write_text(self.path, json.dumps(self._record))
            except (OSError, tf.errors.OpError) as e:  # a missed beat is retried; the run itself goes on
                log.warning("could not refresh %s: %s", self.path, e)


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
