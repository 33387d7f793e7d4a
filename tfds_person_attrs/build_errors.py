"""The dataset build's error types, and the log filter that keeps Beam from logging the stops the launcher reports.

A build stops on data it cannot use (ManualDataError, before any worker starts), on a skipped row under --strict
(StrictModeError) and on a source that changed while it was read (SourceChangedError); `pipeline.preprocess`
prints each as one line. An image that is refused or lies outside the manual data is a skipped row (a stop only
under --strict).

    python -c "from tfds_person_attrs import build_errors as e; print(e.StrictModeError.__doc__)"
"""

from __future__ import annotations

import logging


class ManualDataError(ValueError):
    """Manual data that cannot be used at all (missing, empty, wrong columns); says what to do."""


class OutsideManualDataError(ValueError):
    """An image path that resolves outside the manual data (a symlink pointing elsewhere); it is never read."""


class StrictModeError(RuntimeError):
    """A record was skipped while --strict was set."""


class SourceChangedError(RuntimeError):
    """The zip or CSV the build parsed changed while the build read it: the dataset would mix two versions."""


class ImageChangedError(SourceChangedError):
    """An image's bytes differ between the check and the writing of its example."""


class ImageRefusedError(ValueError):
    """An image file that is not read (too large) or does not read (a corrupt zip member); `reason` keys the
    summary."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _not_a_reported_stop(record) -> bool:
    """Beam logs every exception a DoFn raises with its traceback; these stops are reported once, by the caller."""
    return not (record.exc_info and isinstance(record.exc_info[1], (StrictModeError, SourceChangedError)))


def quiet_reported_stops() -> None:
    """Called in a worker's DoFn.setup: Beam's log of a stop the launcher reports itself is left out."""
    beam_log = logging.getLogger("apache_beam.runners.common")
    if _not_a_reported_stop not in beam_log.filters:
        beam_log.addFilter(_not_a_reported_stop)
