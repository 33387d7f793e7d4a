"""Whole-or-nothing writes: a file or folder appears under its final name only once it is complete.

    python -c "from trainer.jobdir.atomic import write_text; write_text('/tmp/x/metrics.json', '{}')"

Each write goes to a temporary name beside the target (`.tmp-<random>-<name>`, same folder, same extension so
that savers which check it are happy), then is renamed over the target. A run killed mid-write leaves the
previous version (or nothing) under the final name, plus a temporary file that `sweep` removes at the next
start. On a local or NFS file system the rename is atomic; on gs:// every object is written whole and the
rename copies it, so a reader still never sees a partial file; a folder there is renamed file by file.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable

import tensorflow as tf

_PREFIX = ".tmp-"


def temp_name(path: str) -> str:
    folder, name = os.path.split(path.rstrip("/"))
    return os.path.join(folder, f"{_PREFIX}{uuid.uuid4().hex[:8]}-{name}")


def save_with(path: str, save: Callable[[str], object]) -> str:
    """Calls `save(temp_path)`, then renames the result to `path`; returns `path`."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = temp_name(path)
    try:
        save(tmp)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
    return path


def write_text(path: str, text: str) -> str:
    def write(tmp):
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)

    return save_with(path, write)


def write_bytes(path: str, data: bytes) -> str:
    def write(tmp):
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)

    return save_with(path, write)


def replace_dir(path: str, build: Callable[[str], object]) -> str:
    """Calls `build(temp_dir)` to fill a new folder, then swaps it in for `path` (the old one is removed)."""
    path = path.rstrip("/")
    tmp, old = temp_name(path), temp_name(path)
    try:
        build(tmp)
        if tf.io.gfile.exists(path):
            tf.io.gfile.rename(path, old)
        tf.io.gfile.rename(tmp, path)
    finally:
        for leftover in (tmp, old):
            if tf.io.gfile.exists(leftover):
                tf.io.gfile.rmtree(leftover)
    return path


def sweep(folder: str) -> None:
    """Removes temporary files and folders that a killed run left in `folder` (call only while no one writes)."""
    if not tf.io.gfile.isdir(folder):
        return
    for name in tf.io.gfile.listdir(folder):
        if name.startswith(_PREFIX):
            leftover = os.path.join(folder, name.rstrip("/"))
            (tf.io.gfile.rmtree if tf.io.gfile.isdir(leftover) else tf.io.gfile.remove)(leftover)
