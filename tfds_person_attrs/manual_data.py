"""The manual data the user named (a folder or zip, local or gs://): where its CSV is, its images' bytes, and
whether it is still the file the build parsed.

The CSV's bytes are read once, in the launching process (`annotation_rows` parses them); image bytes are read
later, by the Beam workers, through `ManualData.read_image`, strictly inside the source (`unsafe_path_reason`,
symbolic links checked).

    python -c "from tfds_person_attrs.manual_data import ManualData; from tfds_person_attrs.schema import HVC; \
print(ManualData('../shared/data', HVC).fingerprint())"
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import re
import stat
import threading
import zipfile
import zlib

import tensorflow as tf

from tfds_person_attrs.build_errors import (
    ImageRefusedError,
    ManualDataError,
    OutsideManualDataError,
    SourceChangedError,
)
from tfds_person_attrs.schema import Schema

# The largest image file read whole (a zip member's uncompressed size, from its header, or a file's size, by
# reading one byte past it): 256 MiB holds a JPEG or PNG of PIL's ~89-megapixel limit several times over.
DEFAULT_MAX_IMAGE_BYTES = 256 << 20


class ManualData:
    """The one source the user named: a zip, or a folder holding the CSV and images (local or gs://).

    A folder that holds the CSV and also a zip with it, or several such zips, is refused: the rows would be
    accounted against a file the user may not have meant. Image paths are read strictly inside the source, or
    inside the folders named in `follow_symlinks` for symbolic links of a local folder.

    The source is read once: `read_csv_bytes` records what it parsed (the CSV's sha256, the zip's directory and
    the file's size and time), `fingerprint` is computed from that record, and every later read (`read_image`,
    `check_unchanged`) fails with SourceChangedError when the file is no longer the one parsed.
    """

    def __init__(self, location: str, schema: Schema, *, follow_symlinks: tuple[str, ...] = (),
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        self.location = location.rstrip("/")
        self.schema = schema
        self.max_image_bytes = max_image_bytes
        self.zip_path, self.prefix = self._find(self.location, schema.csv_name)
        self._remote = "://" in self.location
        self.follow_symlinks = tuple(_link_root(r) for r in follow_symlinks)
        self._zip: zipfile.ZipFile | None = None
        self._real_prefix: str | None = None
        self._parsed: dict | None = None  # what read_csv_bytes read: {"stamp", "sha256", "directory_sha256"}
        self._fresh = False  # read the zip's directory again rather than take this process's copy

    @staticmethod
    def _find(location: str, csv_name: str) -> tuple[str | None, str]:
        gfile = tf.io.gfile
        if location.endswith(".zip"):
            if not gfile.exists(location):
                raise ManualDataError(f"manual data {location} does not exist; pass the zip or the folder holding it")
            return location, ""
        if not gfile.isdir(location):
            raise ManualDataError(f"manual data folder {location} does not exist; pass --manual_dir pointing at the "
                                  f"folder that holds {csv_name} and the images, or a zip of them")
        sources = []
        if gfile.exists(posixpath.join(location, csv_name)):
            sources.append(posixpath.join(location, csv_name))
        zips = sorted(n for n in gfile.listdir(location) if n.endswith(".zip"))
        for name in zips:
            path = posixpath.join(location, name)
            with gfile.GFile(path, "rb") as f, zipfile.ZipFile(f) as z:
                if _csv_members(z.namelist(), csv_name):
                    sources.append(path)
        if len(sources) > 1:
            raise ManualDataError(f"{location} holds more than one source of {csv_name}: {', '.join(sources)}; pass "
                                  f"--manual_dir naming the one to read (a zip itself, or a folder holding only one)")
        if not sources:
            raise ManualDataError(f"no {csv_name} in {location} (nor in a .zip there: {zips or 'none'}); put the CSV "
                                  f"and its images there, or point --manual_dir at the right folder")
        if sources[0].endswith(".zip"):
            return sources[0], ""
        return None, location

    @property
    def csv_path(self) -> str:
        """Where the CSV is, as error messages name it: a file path, or zip:member."""
        if self.zip_path:
            self._open_zip()
            return f"{self.zip_path}:{self._zip_root}{self.schema.csv_name}"
        return posixpath.join(self.prefix, self.schema.csv_name)

    @property
    def source_file(self) -> str:
        """The file the build reads its rows from (the zip, or the CSV of a folder)."""
        return self.zip_path or posixpath.join(self.prefix, self.schema.csv_name)

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            z, infos, root, directory_sha256, stamp = _opened_zip(self.zip_path, self.schema.csv_name, self._fresh)
            if self._parsed and directory_sha256 != self._parsed["directory_sha256"]:
                raise SourceChangedError(self._changed("its directory (the names, sizes and CRC-32s of its members) "
                                                       "is not the one parsed"))
            self._zip, self._zip_infos, self._zip_root = z, infos, root
            self._zip_directory, self._zip_stamp = directory_sha256, stamp
        return self._zip

    def read_csv_bytes(self) -> bytes:
        """The CSV's bytes, read once: what was read is recorded for `fingerprint` and `check_unchanged`."""
        if self.zip_path:
            z = self._open_zip()
            stamp, directory = self._zip_stamp, self._zip_directory
            data = z.read(self._zip_root + self.schema.csv_name)
        else:
            stamp, directory = _stamp(self.source_file), None
            with _open(self.source_file) as f:
                data = f.read()
        if _stamp(self.source_file) != stamp:
            raise SourceChangedError(self._changed("it changed while its CSV was read"))
        self._parsed = {"stamp": stamp, "sha256": hashlib.sha256(data).hexdigest(), "directory_sha256": directory,
                        "csv": data}
        return data

    def check_unchanged(self) -> None:
        """Raises SourceChangedError when the zip or CSV parsed has another size or time now (one stat)."""
        if self._parsed and _stamp(self.source_file) != self._parsed["stamp"]:
            raise SourceChangedError(self._changed("its size or modification time is not the parsed file's"))

    def check_content_unchanged(self) -> None:
        """Raises SourceChangedError when the source's content differs from what was parsed: the zip's directory
        and CSV, or the folder's CSV (and, local, its images' sizes and times), read again. Run at the end of a
        build, so that no dataset records a fingerprint of data it did not read."""
        again = ManualData(self.location, self.schema, follow_symlinks=self.follow_symlinks,
                           max_image_bytes=self.max_image_bytes)
        again._fresh = True  # a file replaced with its size and time kept (or a store without times) is caught too
        again.read_csv_bytes()
        now, then = again.fingerprint(), self.fingerprint()
        if now != then:
            if again._parsed["sha256"] != self._parsed["sha256"]:
                what = "its CSV"
            else:
                what = "its directory" if self.zip_path else "the size or time of an image it names"
            raise SourceChangedError(self._changed(f"{what} differs from what the build parsed"))

    def _changed(self, what: str) -> str:
        return (f"{self.source_file} changed during the build ({what}); no dataset was written from it: rebuild once "
                "it is stable")

    def read_image(self, image_id: str) -> bytes | None:
        """The image's bytes, or None when the file does not exist.

        `image_id` has passed `unsafe_path_reason` (relative, no `..`); a symlink (in a folder or stored in the
        zip) that points outside the source (and outside `follow_symlinks`) raises OutsideManualDataError before
        anything is opened; a file larger than `max_image_bytes` raises ImageRefusedError unread (a zip member:
        from its header).
        """
        if self.zip_path:
            return self._read_member(image_id)
        path = posixpath.join(self.prefix, image_id)
        if not self._remote:
            real = os.path.realpath(path)
            if not any(os.path.commonpath([real, root]) == root for root in (self._real_root(), *self.follow_symlinks)):
                allowed = f" or {', '.join(self.follow_symlinks)}" if self.follow_symlinks else ""
                raise OutsideManualDataError(
                    f"{image_id} resolves to {real}, outside {self.prefix}{allowed}; it was not read. Copy the image "
                    "into the manual dir, or pass --follow_symlinks with the folder its links lead into")
            path = real
        try:
            with _open(path) as f:
                data = f.read(self.max_image_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, tf.errors.NotFoundError):
            return None
        if len(data) > self.max_image_bytes:
            raise ImageRefusedError("image_too_large", f"the file is larger than the {_mb(self.max_image_bytes)} "
                                                       "allowed, so it was not read; raise --max_image_bytes")
        return data

    def _read_member(self, image_id: str) -> bytes | None:
        z = self._open_zip()
        info = self._zip_infos.get(self._zip_root + image_id)
        if info is None or info.is_dir():
            return None
        if stat.S_ISLNK(info.external_attr >> 16):
            raise OutsideManualDataError(f"{image_id} is a symbolic link inside {self.zip_path}; links are "
                                         "not followed, store the image itself")
        if info.file_size > self.max_image_bytes:
            raise ImageRefusedError("image_too_large", f"the zip member is {_mb(info.file_size)} uncompressed, more "
                                                       f"than the {_mb(self.max_image_bytes)} allowed, so it was not "
                                                       "read; raise --max_image_bytes")
        try:
            return z.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            self.check_unchanged()  # bytes that do not match the directory: a zip rewritten in place?
            raise ImageRefusedError("unreadable_image", f"the zip member does not read ({e})") from None

    def crc32(self, image_id: str, data: bytes) -> int:
        """The CRC-32 of an image's bytes as `read_image` gave them: from a zip's directory (reading a member
        whole checks its bytes against it), else computed."""
        if self.zip_path:
            self._open_zip()
            return self._zip_infos[self._zip_root + image_id].CRC
        return zlib.crc32(data)

    def _real_root(self) -> str:
        if self._real_prefix is None:
            self._real_prefix = os.path.realpath(self.prefix)
        return self._real_prefix

    def fingerprint(self) -> dict:
        """What identifies this source's content, recorded in the dataset so that a stale rebuild is caught;
        computed from the bytes `read_csv_bytes` parsed (it reads the CSV if that was not done yet).

        `sha256`: a folder's CSV's sha256; a zip's: the sha256 of its directory (every member's name, size and
        CRC-32, which reading a member checks its bytes against) and its CSV. A local folder adds
        `images_sha256`, a digest of the size and modification time of every image the CSV names (a copied
        folder therefore looks changed: rebuild it). A gs:// folder: the CSV only, since a stat per image would
        cost a request each.
        """
        if self._parsed is None:
            self.read_csv_bytes()
        csv_bytes = self._parsed["csv"]
        if self.zip_path:
            digest = hashlib.sha256(self._parsed["directory_sha256"].encode() + b"\n" + csv_bytes).hexdigest()
            return {"file": self.source_file, "sha256": digest}
        record = {"file": self.source_file, "sha256": self._parsed["sha256"]}
        if not self._remote:
            text = csv_bytes.decode("utf-8-sig", errors="replace")
            listing = hashlib.sha256()
            for row in csv.DictReader(io.StringIO(text, newline="")):
                image_id = (row.get(self.schema.image_column) or "").strip()
                if not image_id or unsafe_path_reason(image_id):
                    continue
                path = os.path.join(self.prefix, posixpath.normpath(image_id))
                if os.path.isfile(path):
                    st = os.stat(path)
                    listing.update(f"{image_id}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            record["images_sha256"] = listing.hexdigest()
        return record

    def __getstate__(self):
        # Beam pickles this into every step that reads images; each worker opens its own zip handle and reads
        # the zip's directory itself (pickled, the directory grew the job graph by ~100 bytes an image). What was
        # parsed travels without the CSV's bytes: its digests are what the workers check against.
        state = dict(self.__dict__)
        state["_zip"] = None
        state.pop("_zip_infos", None)
        state.pop("_zip_root", None)
        state.pop("_zip_directory", None)
        state.pop("_zip_stamp", None)
        if state["_parsed"]:
            state["_parsed"] = {k: v for k, v in state["_parsed"].items() if k != "csv"}
        return state

    def __str__(self) -> str:
        return self.zip_path or self.prefix


_OPENED_ZIPS: dict[tuple, tuple] = {}
_OPENED_ZIPS_LOCK = threading.Lock()


def _opened_zip(path: str, csv_name: str, fresh: bool = False) -> tuple[zipfile.ZipFile, dict, str, str, tuple]:
    """The zip opened once per process (and per version of the file), with its members by name, the folder
    that holds the CSV, the sha256 of its directory and the file's `_stamp`. Every step that reads images
    unpickles its own ManualData; reading the directory for each cost ~75 ms of CPU at 28,000 members, several
    times per build. Concurrent reads of one ZipFile are safe. `fresh`: read the directory again, whatever the
    file's stamp says."""
    stamp = _stamp(path)
    key = (path, csv_name, stamp)
    with _OPENED_ZIPS_LOCK:
        if fresh or key not in _OPENED_ZIPS:
            z = zipfile.ZipFile(_open(path))
            infos = z.infolist()
            found = _csv_members([i.filename for i in infos], csv_name)
            if len(found) != 1:
                z.close()
                raise ManualDataError(
                    f"{path} holds {len(found)} files named {csv_name}: {', '.join(found)}; keep the one to read "
                    "(the build would not know which rows are meant)" if found else
                    f"{path} holds no {csv_name}; put the CSV in the zip beside its images")
            listing = hashlib.sha256()
            for i in infos:
                listing.update(f"{i.filename}\t{i.file_size}\t{i.CRC}\t{i.header_offset}\n".encode())
            root = found[0][: -len(csv_name)]
            _OPENED_ZIPS[key] = z, {i.filename: i for i in infos}, root, listing.hexdigest(), stamp
        return _OPENED_ZIPS[key]


def _csv_members(names: list[str], csv_name: str) -> list[str]:
    return [n for n in names if n == csv_name or n.endswith("/" + csv_name)]


def _stamp(path: str) -> tuple:
    """The file's size and modification time (and inode, locally: a file replaced by a rename is another)."""
    if "://" in path:
        st = tf.io.gfile.stat(path)
        return st.length, st.mtime_nsec
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def _link_root(root: str) -> str:
    if "://" in root or not os.path.isdir(root):
        raise ManualDataError(f"--follow_symlinks {root}: not a local folder; name the folder the image links lead "
                              "into")
    return os.path.realpath(root)


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:,.1f} MB"


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def unsafe_path_reason(image_id: str) -> str | None:
    """Why an image path from the CSV may not be read (it names a file outside the manual data), or None.

    A URL (`gs://b/x.jpg`), a path from the root or a drive is absolute; `resized/a://b.jpg` is not (a
    folder `a:` inside `resized`)."""
    if _SCHEME.match(image_id) or image_id.startswith(("/", "\\")) or (len(image_id) > 1 and image_id[1] == ":"):
        return "is absolute"
    if ".." in image_id.replace("\\", "/").split("/"):
        return "climbs out with '..'"
    return None


def _open(path: str):
    """Local files through the OS (several times faster for many small reads), others through tf.io.gfile."""
    if "://" in path:
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")
