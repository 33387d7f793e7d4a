"""`ram://` (TensorFlow's in-memory filesystem) made a remote scheme for TFDS and Beam too, as gs:// is.

    python -c "from tests.ram_filesystem import register; register()"

TensorFlow's GCS filesystem cannot be pointed at an emulator (docs/cloud.md), so tests stand `ram://` in for
gs://. TensorFlow, Keras and our own code already take their remote branch for it (`tf.io.gfile`, "://" in the
path). Two libraries know only a fixed list of schemes: TFDS reads and writes through etils' `epath`, which
sends gs:// to `tf.io.gfile` when TensorFlow is installed, and Beam's text source opens files through its own
FileSystems registry. `register()` adds ram:// to both, routed to `tf.io.gfile` the way etils routes gs://.
Two differences between TensorFlow's own ram:// and gs:// filesystems are evened out, so that ram://
answers as gs:// does: renaming a folder on gs:// renames every object under it, on ram:// only the
folder's entry; and on ram:// `exists`/`isdir`/`listdir`/`rmtree` match any name the path is a prefix of
(`JOB/model` "exists" once `JOB/model.keras` does, and lists `.keras`), where gs:// matches the object or
the folder `JOB/model/` (ram://'s `glob` matches exactly, and answers these here). ram:// lives in this
process's memory: a test using it runs every step in-process.
"""

from __future__ import annotations

import functools
import posixpath

import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem

SCHEME = "ram"


@functools.cache
def register() -> None:
    from etils.epath import backend, gpath
    from etils.epath import register as epath_register

    prefix = f"{SCHEME}://"
    gpath._URI_PREFIXES = (*gpath._URI_PREFIXES, prefix)
    gpath._URI_SCHEMES = gpath._URI_SCHEMES | {SCHEME}
    gpath._URI_MAP_ROOT[prefix] = f"/{SCHEME}/"
    gpath._PREFIX_TO_BACKEND[SCHEME] = backend.tf_backend  # what etils uses for gs:// with TensorFlow installed
    epath_register._URI_PREFIXES_TO_CLS[prefix] = gpath.PosixGPath
    from tensorflow.python.lib.io import file_io

    # Both the public names and file_io's own: TensorFlow fills tf.io.gfile from file_io again during training.
    for public, name, like_gcs in (("rename", "rename_v2", _rename_like_gcs), ("exists", "file_exists_v2",
                                   _exists_like_gcs), ("isdir", "is_directory_v2", _isdir_like_gcs),
                                   ("listdir", "list_directory_v2", _listdir_like_gcs),
                                   ("rmtree", "delete_recursively_v2", _rmtree_like_gcs)):
        patched = functools.partial(like_gcs, getattr(file_io, name))
        setattr(file_io, name, patched)
        setattr(tf.io.gfile, public, patched)


def _copy_tree(src: str, dst: str) -> None:
    tf.io.gfile.makedirs(dst)
    for name in (n.rstrip("/") for n in tf.io.gfile.listdir(src)):
        a, b = posixpath.join(src, name), posixpath.join(dst, name)
        if tf.io.gfile.isdir(a):
            _copy_tree(a, b)
        else:
            tf.io.gfile.copy(a, b, overwrite=True)


def _rmtree_like_gcs(rmtree, path):
    if not _ram(path):
        return rmtree(path)
    path = str(path).rstrip("/")
    if not tf.io.gfile.exists(path):
        raise tf.errors.NotFoundError(None, None, f"{path} not found")
    for name in tf.io.gfile.listdir(path):
        child = posixpath.join(path, name)
        (tf.io.gfile.rmtree if tf.io.gfile.isdir(child) else tf.io.gfile.remove)(child)
    tf.io.gfile.remove(path)  # the folder's own entry (ram:// keeps one per folder made)


def _ram(path) -> bool:
    return str(path).startswith(f"{SCHEME}://") and "/" in str(path)[len(SCHEME) + 3:].strip("/")


def _exists_like_gcs(exists, path):
    return bool(tf.io.gfile.glob(str(path).rstrip("/"))) if _ram(path) else exists(path)


def _isdir_like_gcs(isdir, path):
    return isdir(path) and (not _ram(path) or tf.io.gfile.exists(path))


def _listdir_like_gcs(listdir, path):
    if not _ram(path):
        return listdir(path)
    return [posixpath.basename(p) for p in tf.io.gfile.glob(posixpath.join(str(path).rstrip("/"), "*"))]


def _rename_like_gcs(rename, src, dst, overwrite=False):
    src, dst = str(src).rstrip("/"), str(dst).rstrip("/")
    if not (_ram(src) and tf.io.gfile.isdir(src)):
        return rename(src, dst, overwrite)
    if tf.io.gfile.exists(dst) and not overwrite:
        raise tf.errors.AlreadyExistsError(None, None, f"{dst} exists")
    _copy_tree(src, dst)
    tf.io.gfile.rmtree(src)


class RamFileSystem(FileSystem):
    """Beam's view of ram://: every call is the `tf.io.gfile` one (Beam finds FileSystem subclasses by scheme)."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        return posixpath.split(path.rstrip("/"))

    def mkdirs(self, path):
        tf.io.gfile.makedirs(path)

    def has_dirs(self):
        return True

    def _list(self, dir_or_prefix):
        if not tf.io.gfile.isdir(dir_or_prefix):
            raise BeamIOError(f"no folder {dir_or_prefix}")
        for name in tf.io.gfile.listdir(dir_or_prefix):
            path = posixpath.join(dir_or_prefix, name)
            yield FileMetadata(path, tf.io.gfile.stat(path).length)

    def _open(self, path, mode, compression_type):
        if compression_type == CompressionTypes.AUTO:
            compression_type = CompressionTypes.detect_compression_type(path)
        f = tf.io.gfile.GFile(path, mode)
        return f if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(f, compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        tf.io.gfile.makedirs(posixpath.dirname(path))
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names, destination_file_names):
        for s, d in zip(source_file_names, destination_file_names):
            tf.io.gfile.copy(s, d, overwrite=True)

    def rename(self, source_file_names, destination_file_names):
        for s, d in zip(source_file_names, destination_file_names):
            tf.io.gfile.rename(s, d, overwrite=True)

    def exists(self, path):
        return tf.io.gfile.exists(path)

    def size(self, path):
        return tf.io.gfile.stat(path).length

    def last_updated(self, path):
        return tf.io.gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        stat = tf.io.gfile.stat(path)
        return FileMetadata(path, stat.length, stat.mtime_nsec / 1e9)

    def delete(self, paths):
        for p in paths:
            (tf.io.gfile.rmtree if tf.io.gfile.isdir(p) else tf.io.gfile.remove)(p)
