"""What every command line of the project shares: a quiet start, `--verbose`, and one-line answers to user errors.

    python -m trainer.evaluate --model out/run/model --data_dir out/data             # quiet
    python -m trainer.evaluate --model out/run/model --data_dir out/data --verbose   # every log line, tracebacks
    PERSON_ATTRS_VERBOSE=1 make demo                                                  # the same for every step

A command's module ends with `sys.exit(cli.run(main))`. `run` takes `--verbose` off the command line (only
before a `--`: what follows belongs to another command), sets up logging, calls `main(argv)`, and turns a user
error (bad input the user can fix: a missing file, a wrong flag or value) into one line on stderr and exit
code 2. Any other exception is a bug and keeps its traceback. `--verbose` shows everything, tracebacks included.

Quiet means: no TensorFlow/absl C++ start-up lines, no library log records below ERROR, no TFDS progress bars,
and the library warnings nobody can act on silenced by message (`KNOWN_LIBRARY_WARNINGS`: any other shows); the
project's own log records (INFO and up) stay. TensorFlow prints its C++ start-up lines from inside
`import tensorflow`, before any command's code runs, so `quiet_library_startup()` is called when the `trainer` or
`pipeline` package is first imported.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import traceback
import warnings
from typing import Callable, Sequence

VERBOSE_ENV = "PERSON_ATTRS_VERBOSE"
VERBOSE_FLAG = "--verbose"
USER_ERROR_EXIT = 2
OWN_PACKAGES = ("trainer", "pipeline", "tfds_person_attrs")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Domain errors of the project that mean "bad input", found by name so that this module imports nothing heavy.
_DOMAIN_ERRORS = (("trainer.config", "ConfigError"), ("tfds_person_attrs.schema", "SchemaError"),
                  ("tfds_person_attrs.build_errors", "ManualDataError"), ("trainer.training.cluster", "ClusterError"),
                  ("trainer.jobdir.joblock", "JobDirInUse"), ("trainer.jobdir.backup", "BackupMismatchError"))

_verbose_flag = False


class UserError(Exception):
    """Input the user can fix. The message names the file, row, flag or field and says what to do."""


def verbose() -> bool:
    """True under `--verbose` (this process) or PERSON_ATTRS_VERBOSE=1 (inherited by subprocesses)."""
    return _verbose_flag or os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def own_args(argv: Sequence[str]) -> list[str]:
    """The arguments before a `--`; the ones after it are passed on to another command untouched."""
    argv = list(argv)
    return argv[:argv.index("--")] if "--" in argv else argv


def quiet_library_startup() -> None:
    """Unless verbose: TensorFlow's C++ logging off, its import-time lines (which ignore that) muted, and no
    tqdm progress bars (TFDS's), whose settings tqdm reads once, when it is imported."""
    if verbose() or VERBOSE_FLAG in own_args(sys.argv[1:]):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TQDM_DISABLE", "1")
    # A library that logs while it is imported, before a command sets up its output (Beam's "apitools not
    # found"), would make the logging module install its own stderr handler; this one drops those records.
    if not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())
    if "tensorflow" not in sys.modules and not any(isinstance(f, _MuteWhileImporting) for f in sys.meta_path):
        sys.meta_path.insert(0, _MuteWhileImporting("tensorflow"))


class _MuteWhileImporting(importlib.abc.MetaPathFinder):
    """Runs one module's first import with file descriptor 2 on /dev/null.

    TensorFlow's shared libraries log through absl before absl's logging is initialised, and such lines go to
    stderr whatever TF_CPP_MIN_LOG_LEVEL says ("All log messages before absl::InitializeLog() ..."); only the
    file descriptor can silence them. Errors still surface: a failed import raises in Python after the mute.
    """

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and so that the lookup below reaches the real finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_muted(module):
            with stderr_fd_muted():
                exec_module(module)

        spec.loader.exec_module = exec_muted
        return spec


@contextlib.contextmanager
def stderr_fd_muted():
    """File descriptor 2 on /dev/null for the duration (C++ code writes there directly, bypassing sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr at all: nothing to mute
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def library_stdout_muted():
    """Unless verbose, drops what libraries print to stdout inside the block (TFDS's 'Downloading ...' lines)."""
    if verbose():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


class _Quiet(logging.Filter):
    """The project's own records from INFO up; other libraries' only from ERROR up (unless verbose).

    Own means logged by a module of the project's packages: by logger name, or by file for records sent to the
    root logger (the TFDS builder logs there, and so do libraries such as Beam, with warnings nobody can act on).
    """

    _own_dirs = tuple(os.path.join(_REPO, name) + os.sep for name in OWN_PACKAGES)

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        if record.name == "root":
            own = os.path.abspath(record.pathname).startswith(self._own_dirs)
        else:
            own = record.name.split(".")[0] in OWN_PACKAGES or record.name == "__main__"  # the command's module
        if not own and record.levelno >= logging.ERROR:
            record.exc_info, record.exc_text, record.stack_info = None, None, None  # its one line; --verbose: all
            return True
        return own


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of `starts`, and nothing else of it."""

    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not str(record.msg).startswith(self.starts)


# TensorFlow's logger gets a handler of its own ("INFO:tensorflow:...") when it is first used before logging is set
# up, which bypasses _Quiet; its SavedModel writer then prints one INFO line per export. Only that line is dropped:
# what else TensorFlow logs there (a warning a user can act on) still shows.
_TF_CHATTER = _DropMessages("Assets written to")


class _PlainFormatter(logging.Formatter):
    """'message' for INFO, 'warning: message' above it: the project's log lines read like its other output."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at each record (as logging's last-resort handler does), not the stream
    of the moment it was made: a later redirection (a test's capture, a notebook) then still sees the lines."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


_handler: logging.Handler | None = None


def setup_output() -> None:
    """Logging to stderr, and the library noise settings, for the current verbosity (idempotent)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _StderrHandler()
    if verbose():
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # A library may have set absl's logger to WARNING (absl.logging.set_verbosity; seen after loading a
        # SavedModel in the same process): --verbose shows its INFO records anyway.
        logging.getLogger("absl").setLevel(logging.NOTSET)
    else:
        _handler.setFormatter(_PlainFormatter("%(message)s"))
        _handler.addFilter(_Quiet())
        ignore_known_library_warnings()
    root.addHandler(_handler)
    root.setLevel(logging.INFO)
    logging.getLogger("tensorflow").addFilter(_TF_CHATTER)


# Warnings the pinned libraries give in a normal run that their users cannot act on, by category and message
# (each seen in `make demo` or the test suite with warnings on; --verbose shows them). Any other warning still
# shows: a new one, a deprecation announcing a break included, is news.
KNOWN_LIBRARY_WARNINGS = (
    # TFDS's proto helpers call protobuf's deprecated FieldDescriptor.label()
    (DeprecationWarning, r"label\(\) is deprecated"),
    # Keras' TensorFlow backend converting tensors with numpy 2's copy argument
    (DeprecationWarning, r"__array__ implementation doesn't accept a copy keyword"),
    # google-api-core without the optional grpcio-status package
    (ImportWarning, r"Please install grpcio-status"),
)


def ignore_known_library_warnings() -> None:
    for category, message in KNOWN_LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                        PermissionError]
    for module, name in _DOMAIN_ERRORS:
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "errors"):  # gfile on a missing or forbidden gs:// path
        types += [tf.errors.NotFoundError, tf.errors.PermissionDeniedError]
    return tuple(types)


def describe(error: BaseException) -> str:
    """One line for a user error: its message, or for a bare OS error 'PATH: reason'."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}"
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(str(text).split("\n")[0].split())


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Calls main(argv) as a command: returns its exit code; a user error becomes one line and exit code 2."""
    global _verbose_flag
    is_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    _verbose_flag = VERBOSE_FLAG in own_args(argv)
    if _verbose_flag:
        argv.remove(VERBOSE_FLAG)  # the first one, which own_args just found before any `--`
    setup_output()
    code = _run_main(main, argv)  # a bug's traceback propagates before anything is muted
    if is_process and not verbose():
        _mute_teardown()
    return code


def _mute_teardown() -> None:
    """After a command's last line, file descriptor 2 on /dev/null while the process shuts down.

    TensorFlow's C++ threads outlive main: a worker whose peer has already exited can log the failed coordination
    heartbeat ("E0000 ... Failed to send RPC to coordination service", seen in a test run) after the line that said
    how the run ended, which is then no longer the last. With --verbose everything still shows.
    """
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)


def _run_main(main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; Python's own advice, so nothing more is printed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - sorted into user errors (one line) and bugs (re-raised)
        if not isinstance(e, _user_error_types()):
            raise
        if verbose():
            traceback.print_exc()
        print(f"error: {describe(e)}", file=sys.stderr)
        return USER_ERROR_EXIT


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's conventions: `python -m MODULE` as prog, --verbose listed, one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", _main_prog())
        super().__init__(*args, **kwargs)
        self.add_argument(VERBOSE_FLAG, action="store_true",
                          help=f"show every library log line and full tracebacks (also: {VERBOSE_ENV}=1)")

    def error(self, message: str):
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _main_prog() -> str | None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None and spec.name else None


def check_folder_path(path: str, flag: str) -> None:
    """UserError when the folder `path` (given with `flag`) is a file or lies under one, so that it cannot be
    created; checked before any work starts. Local paths only: on gs:// a folder is a name prefix, never blocked."""
    if not path or "://" in path:
        return
    here = os.path.abspath(path)
    while not os.path.exists(here):  # the nearest part of the path that exists decides
        if os.path.dirname(here) == here:
            return
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        where = "is a file" if here == os.path.abspath(path) else f"is under {here}, which is a file"
        raise UserError(f"{flag} {path} {where}, not a folder; pass a folder path (created if missing)")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
