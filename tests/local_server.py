"""A server the tests start on a free local port, as a subprocess, and stop when done.

    with serving([sys.executable, "-m", "tests.gcs_emulator", "{port}"], "gcp-storage-emulator") as (host, port): ...
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

from trainer.launch import free_ports


@contextlib.contextmanager
def serving(argv: list[str], what: str, host: str = "127.0.0.1", timeout: float = 60.0, cwd=None):
    """Runs argv ('{port}' in it replaced by a free port) until it accepts connections; yields (host, port)."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([a.replace("{port}", str(port)) for a in argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on {host}:{port}")
            time.sleep(0.1)
        yield host, port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
