"""One run per job dir: JOB_DIR/.lock names the host and process that holds it; stale locks are taken over.

    python -c "from trainer.jobdir.joblock import JobLock; l = JobLock('/tmp/job'); l.acquire(); \
print(open(l.path).read())"

A second run into a job dir in use fails with one line naming the holder. A lock is stale, and is replaced
with a note saying so, when its process is gone: on the same machine (same host name and boot) the recorded pid
no longer runs, or runs a process started at another time (pids are reused); from another machine its
heartbeat, rewritten every HEARTBEAT_S seconds while the run lives, is older than STALE_AFTER_S. A fresh lock
from another machine is watched until its heartbeat moves (alive: refused) or ages past STALE_AFTER_S (a chief
that died just before Vertex AI or Kubeflow restarted the job: taken over). In a multi-worker run only the
chief holds the lock.

Every heartbeat first checks that the lock is still this run's: a run whose lock was taken over (its heartbeat
looked stale to a run started elsewhere, say after a long network outage) or deleted stops at that heartbeat
with one line (JobDirTakenOver, exit 2), and never writes over the new owner's lock.

Where the lock lives decides how it is made atomic:
- local paths: creation is exclusive (hard link of a complete file); a heartbeat compares, then replaces whole.
- gs://: through the Cloud Storage API (google-cloud-storage) with generation preconditions: created with
  `if_generation_match=0` (fails if any lock exists), taken over and beaten with the generation last read or
  written, so of two runs racing for it exactly one wins, and a heartbeat after a takeover is refused by GCS.
- other tf.io.gfile schemes (ram://, hdfs://): check-then-write, which leaves a window of a second or so.
"""

from __future__ import annotations

import _thread
import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

import tensorflow as tf

from trainer.jobdir import atomic

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0


class JobDirInUse(RuntimeError):
    """Another live run holds the job dir."""


class JobDirTakenOver(JobDirInUse):
    """This run's lock was taken over or deleted while it ran: it must stop writing into the job dir."""


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


class _FileStore:
    """The lock as a file (local, or a tf.io.gfile scheme); a version token is the file's text."""

    transient_errors: tuple = (OSError, tf.errors.OpError)

    def __init__(self, path: str):
        self.path = path
        tf.io.gfile.makedirs(os.path.dirname(path))

    def read(self) -> tuple[dict, str | None]:
        """(holder record, token); ({}, None) when there is no lock, ({}, text) when it is not a record."""
        try:
            with tf.io.gfile.GFile(self.path) as f:
                text = f.read()
        except tf.errors.NotFoundError:
            return {}, None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), text

    def create(self, text: str) -> str | None:
        if "://" in self.path:
            if tf.io.gfile.exists(self.path):
                return None
            atomic.write_text(self.path, text)
            return text
        tmp = atomic.temp_name(self.path)
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.link(tmp, self.path)  # fails if the lock exists; the lock never appears half-written
            return text
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)

    def take_over(self, text: str, token: str) -> str | None:
        if self.read()[1] == token:
            with contextlib.suppress(tf.errors.NotFoundError):  # its owner may have just released it
                tf.io.gfile.remove(self.path)
        return self.create(text)

    def replace(self, text: str, token: str) -> str | None:
        if self.read()[1] != token:
            return None
        atomic.write_text(self.path, text)
        return text

    def delete(self, token: str) -> None:
        if self.read()[1] == token:
            with contextlib.suppress(tf.errors.NotFoundError):
                tf.io.gfile.remove(self.path)


class _GcsStore:
    """The lock as a Cloud Storage object; a version token is its generation, every write a precondition on it."""

    def __init__(self, path: str):
        # optional: google-cloud-storage, needed only for a gs:// job dir
        from google.api_core import exceptions

        # optional: google-cloud-storage, needed only for a gs:// job dir
        from google.cloud import storage

        bucket, _, name = path[len("gs://"):].partition("/")
        self.blob_name, self._exceptions = name, exceptions
        self.bucket = storage.Client().bucket(bucket)
        self.transient_errors = (OSError, exceptions.GoogleAPIError)

    def read(self) -> tuple[dict, int | None]:
        for _ in range(3):  # a read races with writes: the generation read must be the text's
            blob = self.bucket.get_blob(self.blob_name)
            if blob is None:
                return {}, None
            generation = blob.generation  # (a download resets it from response headers an emulator may omit)
            try:
                text = blob.download_as_text(if_generation_match=generation)
            except (self._exceptions.PreconditionFailed, self._exceptions.NotFound):
                continue
            try:
                holder = json.loads(text)
            except json.JSONDecodeError:
                holder = {}
            return (holder if isinstance(holder, dict) else {}), generation
        raise OSError(f"gs://{self.bucket.name}/{self.blob_name} kept changing while being read")

    def _write(self, text: str, generation: int) -> int | None:
        blob = self.bucket.blob(self.blob_name)
        try:
            blob.upload_from_string(text, content_type="application/json", if_generation_match=generation)
        except self._exceptions.PreconditionFailed:
            return None
        return blob.generation

    def create(self, text: str) -> int | None:
        return self._write(text, 0)

    take_over = replace = _write

    def delete(self, token: int) -> None:
        with contextlib.suppress(self._exceptions.PreconditionFailed, self._exceptions.NotFound):
            self.bucket.blob(self.blob_name).delete(if_generation_match=token)


def _store(path: str):
    return _GcsStore(path) if path.startswith("gs://") else _FileStore(path)


class JobLock:
    def __init__(self, job_dir: str):
        self.job_dir = job_dir.rstrip("/")
        self.path = f"{self.job_dir}/{LOCK_NAME}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict | None = None
        self._store = None
        self._token = None
        self.lost: str | None = None  # why this run no longer holds the lock (set by the heartbeat)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        if self.lost is not None:  # the heartbeat interrupted the main thread: say why, in one line
            raise JobDirTakenOver(self.lost) from None

    def acquire(self) -> None:
        self._store = _store(self.path)
        now = time.time()
        self._record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                        "boot_id": _boot_id(), "started": _iso(now), "heartbeat": now, "owner": uuid.uuid4().hex,
                        "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
        text = json.dumps(self._record)
        for _ in range(2):
            self._token = self._store.create(text)
            if self._token is not None:
                break
            holder, token = self._store.read()
            if token is None:
                continue  # released meanwhile
            reason = self._stale_reason(holder)
            if reason is None and not self._same_machine(holder):
                reason, holder, token = self._watch(holder, token)
            if reason is None:
                raise JobDirInUse(
                    f"job dir {self.job_dir} is in use by another run: host {holder.get('host')} pid "
                    f"{holder.get('pid')}, started {holder.get('started')} ({holder.get('command', '?')}). Wait for "
                    f"it to end, or pick another --job_dir; if that run is gone, delete {self.path}")
            log.warning("taking over %s: %s", self.path, reason)
            self._token = self._store.create(text) if token is None else self._store.take_over(text, token)
            if self._token is not None:
                break
        else:
            raise JobDirInUse(f"could not take the lock {self.path}: another run took it at the same moment")
        self._thread = threading.Thread(target=self._beat, name="joblock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None
        if self.lost is None and self._token is not None:
            self._store.delete(self._token)
            self._token = None

    def _read(self) -> dict:
        return self._store.read()[0]

    @staticmethod
    def _same_machine(holder: dict) -> bool:
        return holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id()

    def _watch(self, holder: dict, token) -> tuple[str | None, dict, object]:
        """Waits for another machine's fresh lock to beat (reason None: alive) or to go stale; returns the reason
        with the lock as last read (what a takeover must replace)."""
        log.warning("job dir %s is locked by host %s pid %s; waiting up to %.0f s to see whether that run is alive",
                    self.job_dir, holder.get("host"), holder.get("pid"), STALE_AFTER_S)
        while True:
            time.sleep(min(5.0, HEARTBEAT_S))
            now, now_token = self._store.read()
            if now_token is None:
                return "its run released it", now, None
            if now.get("heartbeat") != holder.get("heartbeat") or now.get("pid") != holder.get("pid"):
                return None, now, now_token
            reason = self._stale_reason(now)
            if reason is not None:
                return reason, now, now_token

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
                token = self._store.replace(json.dumps(self._record), self._token)
            except self._store.transient_errors as e:  # a missed beat is retried; the run itself goes on
                log.warning("could not refresh %s: %s", self.path, e)
                continue
            if token is None:
                self._lose()
                return
            self._token = token

    def _lose(self) -> None:
        """The lock is no longer this run's: stop the run (its main thread) before it writes more."""
        try:
            holder = self._read()
        except self._store.transient_errors:
            holder = {}
        by = (f"by host {holder.get('host')} pid {holder.get('pid')} (started {holder.get('started')})" if holder
              else "(the lock file was deleted)")
        self.lost = (f"job dir {self.job_dir} was taken over {by} while this run held it; this run stops here, "
                     f"writing nothing more. Let that run go on, or stop it and start this command again")
        _thread.interrupt_main()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
