"""gcp-storage-emulator on a free 127.0.0.1 port, for code that calls the Cloud Storage API itself.

    python -m tests.gcs_emulator 8123        # serves until stopped; STORAGE_EMULATOR_HOST=http://127.0.0.1:8123

gcp-storage-emulator (2026.7.19) ignores generation preconditions: a second upload with if_generation_match=0
succeeds, and so does one with a generation that is not the object's. Cloud Storage answers both with
412 Precondition Failed, and the job lock (trainer.jobdir.joblock) relies on exactly that, so this launcher adds
the rule, as the JSON API documents it, to the emulator's object writes and deletes before serving:
`ifGenerationMatch=0` holds when the object does not exist, `ifGenerationMatch=N` when its live generation is
N. The emulator serves one request at a time, so a check and its write are atomic, as in Cloud Storage.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from http import HTTPStatus

from tests.local_server import serving

_request = threading.local()  # the query of the request being served


class _PreconditionFailed(Exception):
    pass


def _add_generation_preconditions() -> None:
    from gcp_storage_emulator import server, storage
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def check(store, bucket_name, file_name):
        wanted = (getattr(_request, "query", None) or {}).get("ifGenerationMatch")
        if not wanted:
            return
        try:
            live = str(store.get_file_obj(bucket_name, file_name).get("generation") or "")
        except NotFound:
            live = "0"
        if live != wanted[0]:
            raise _PreconditionFailed()

    def guarded(method):
        def write(self, bucket_name, file_name, *args, **kwargs):
            check(self, bucket_name, file_name)
            return method(self, bucket_name, file_name, *args, **kwargs)
        return write

    storage.Storage.create_file = guarded(storage.Storage.create_file)
    storage.Storage.delete_file = guarded(storage.Storage.delete_file)

    def answering_412(handler):
        def handle(request, response, store, *args, **kwargs):
            _request.query = request.query
            try:
                return handler(request, response, store, *args, **kwargs)
            except _PreconditionFailed:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
            finally:
                _request.query = None
        return handle

    wrapped = {}
    for _regex, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler in (objects.insert, objects.delete, objects.upload_partial, objects.xml_upload):
                handlers[method] = wrapped.setdefault(handler, answering_412(handler))
    objects.insert = wrapped.get(objects.insert, objects.insert)  # the router's fallback for bare upload paths


@contextlib.contextmanager
def running():
    """Starts the emulator in a subprocess; yields its endpoint (for STORAGE_EMULATOR_HOST); stops it after."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with serving([sys.executable, "-m", "tests.gcs_emulator", "{port}"], "gcp-storage-emulator", cwd=repo) as (
            host, port):
        yield f"http://{host}:{port}"


def main(port: int) -> None:
    from gcp_storage_emulator.server import create_server

    _add_generation_preconditions()
    create_server("127.0.0.1", port, in_memory=True).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
