"""Reading the manual data (a folder or zip, local or gs://) and validating the CSV against a schema.

The CSV is read once, in the launching process, so that a wrong column or an unreadable file fails
before any worker starts; each row then becomes an `Annotation` or a `Skipped` record with a reason.
Image bytes are read later, by the Beam workers, through `ManualData.read_image`.

    python -m tfds_person_attrs.annotations ../shared/data   # prints row counts and skip reasons
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import os
import posixpath
import stat
import sys
import threading
import zipfile
import zlib

import tensorflow as tf

from tfds_person_attrs.schema import HVC, Schema


class ManualDataError(ValueError):
    """Manual data that cannot be used at all (missing, empty, wrong columns); says what to do."""


class OutsideManualDataError(ValueError):
    """An image path that resolves outside the manual data (a symlink pointing elsewhere); it is never read."""


OUTSIDE_REASON = "path_outside_manual_dir"


class StrictModeError(RuntimeError):
    """A record was skipped while --strict was set."""


class ImageChangedError(RuntimeError):
    """An image's bytes differ between the check and the writing of its example."""


def _not_a_reported_stop(record) -> bool:
    """Beam logs every exception a DoFn raises with its traceback; these stops are reported once, by the caller."""
    return not (record.exc_info and isinstance(record.exc_info[1], (StrictModeError, ImageChangedError)))


def quiet_reported_stops() -> None:
    """Called in a worker's DoFn.setup: Beam's log of a stop the launcher reports itself is left out."""
    import logging

    beam_log = logging.getLogger("apache_beam.runners.common")
    if _not_a_reported_stop not in beam_log.filters:
        beam_log.addFilter(_not_a_reported_stop)


@dataclasses.dataclass(frozen=True)
class Annotation:
    row: int  # 1-based data row number in the CSV (the header is row 0)
    image_id: str  # the image path as written in the CSV
    labels: dict  # attribute name -> class index (single) or tuple of 0/1 (multi)
    group: str | None = None

    def to_json(self) -> str:
        return json.dumps([self.row, self.image_id, self.labels, self.group])


def batches_to_jsonl(annotations: list[Annotation], batch_size: int) -> str:
    """Annotations as JSON lines of `batch_size` rows each (a Beam build reads a line as one batch)."""
    return "".join("[" + ",".join(a.to_json() for a in annotations[i:i + batch_size]) + "]\n"
                   for i in range(0, len(annotations), batch_size))


def batch_from_json(line: str) -> list[Annotation]:
    return [Annotation(*fields) for fields in json.loads(line)]


@dataclasses.dataclass(frozen=True)
class Skipped:
    row: int
    image_id: str
    reason: str  # short key: missing_image, unreadable_image, bad_label, duplicate_id, ...
    message: str


class ManualData:
    """The one source the user named: a zip, or a folder holding the CSV and images (local or gs://).

    A folder that holds the CSV and also a zip with it, or several such zips, is refused: the rows would be
    accounted against a file the user may not have meant. Image paths are read strictly inside the source.
    """

    def __init__(self, location: str, schema: Schema):
        self.location = location.rstrip("/")
        self.schema = schema
        self.zip_path, self.prefix = self._find(self.location, schema.csv_name)
        self._zip: zipfile.ZipFile | None = None
        self._real_prefix: str | None = None

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
                if any(n == csv_name or n.endswith("/" + csv_name) for n in z.namelist()):
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
            self._zip, self._zip_infos, self._zip_root = _opened_zip(self.zip_path, self.schema.csv_name)
        return self._zip

    def read_csv_bytes(self) -> bytes:
        if self.zip_path:
            z = self._open_zip()
            return z.read(self._zip_root + self.schema.csv_name)
        with tf.io.gfile.GFile(posixpath.join(self.prefix, self.schema.csv_name), "rb") as f:
            return f.read()

    def read_image(self, image_id: str) -> bytes | None:
        """The image's bytes, or None when the file does not exist.

        `image_id` has passed `unsafe_path_reason` (relative, no `..`); a symlink (in a folder or stored in the
        zip) that points outside the source raises OutsideManualDataError before anything is opened.
        """
        if self.zip_path:
            z = self._open_zip()
            info = self._zip_infos.get(self._zip_root + image_id)
            if info is None:
                return None
            if stat.S_ISLNK(info.external_attr >> 16):
                raise OutsideManualDataError(f"{image_id} is a symbolic link inside {self.zip_path}; links are "
                                             "not followed, store the image itself")
            return z.read(info)
        path = posixpath.join(self.prefix, image_id)
        if "://" not in path:
            real = os.path.realpath(path)
            if os.path.commonpath([real, self._real_root()]) != self._real_root():
                raise OutsideManualDataError(f"{image_id} resolves to {real}, outside {self.prefix}; it was not read. "
                                             "Copy the image into the manual dir instead of linking to it")
            path = real
        try:
            with _open(path) as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, tf.errors.NotFoundError):
            return None

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
        """What identifies this source's content, recorded in the dataset so that a stale rebuild is caught.

        A zip: the sha256 of its bytes. A local folder: the sha256 of its CSV, plus a digest of the size and
        modification time of every image the CSV names (a copied folder therefore looks changed: rebuild it).
        A gs:// folder: the CSV only, since a stat per image would cost a request each.
        """
        record = {"file": self.source_file, "sha256": _sha256(self.source_file)}
        if not self.zip_path and "://" not in self.prefix:
            text = self.read_csv_bytes().decode("utf-8-sig", errors="replace")
            listing = hashlib.sha256()
            for row in csv.DictReader(io.StringIO(text, newline="")):
                image_id = (row.get(self.schema.image_column) or "").strip()
                path = os.path.join(self.prefix, image_id)
                if image_id and not unsafe_path_reason(image_id) and os.path.isfile(path):
                    st = os.stat(path)
                    listing.update(f"{image_id}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            record["images_sha256"] = listing.hexdigest()
        return record

    def __getstate__(self):
        # Beam pickles this into every step that reads images; each worker opens its own zip handle and reads
        # the zip's directory itself (pickled, the directory grew the job graph by ~100 bytes an image).
        state = dict(self.__dict__)
        state["_zip"] = None
        state.pop("_zip_infos", None)
        state.pop("_zip_root", None)
        return state

    def __str__(self) -> str:
        return self.zip_path or self.prefix


_OPENED_ZIPS: dict[tuple, tuple] = {}
_OPENED_ZIPS_LOCK = threading.Lock()


def _opened_zip(path: str, csv_name: str) -> tuple[zipfile.ZipFile, dict, str]:
    """The zip opened once per process (and per version of the file), with its members by name and the folder
    that holds the CSV. Every step that reads images unpickles its own ManualData; reading the directory for
    each cost ~75 ms of CPU at 28,000 members, several times per build. Concurrent reads of one ZipFile are safe."""
    stamp = tf.io.gfile.stat(path)
    key = (path, csv_name, stamp.length, stamp.mtime_nsec)
    with _OPENED_ZIPS_LOCK:
        if key not in _OPENED_ZIPS:
            z = zipfile.ZipFile(_open(path))
            infos = z.infolist()
            csv_at = next(i.filename for i in infos if i.filename == csv_name or i.filename.endswith("/" + csv_name))
            _OPENED_ZIPS[key] = z, {i.filename: i for i in infos}, csv_at[: -len(csv_name)]
        return _OPENED_ZIPS[key]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with _open(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unsafe_path_reason(image_id: str) -> str | None:
    """Why an image path from the CSV may not be read (it names a file outside the manual data), or None."""
    if "://" in image_id or image_id.startswith(("/", "\\")) or (len(image_id) > 1 and image_id[1] == ":"):
        return "is absolute"
    if ".." in image_id.replace("\\", "/").split("/"):
        return "climbs out with '..'"
    return None


def _open(path: str):
    """Local files through the OS (several times faster for many small reads), others through tf.io.gfile."""
    if "://" in path:
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def parse_annotations(csv_bytes: bytes, schema: Schema, source: str = "CSV") -> tuple[list[Annotation], list[Skipped]]:
    """Validates every row; returns the usable ones and the skipped ones, each with its reason."""
    try:
        text = csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = csv_bytes[: e.start].count(b"\n") + 1
        raise ManualDataError(f"{source} is not UTF-8 (bad byte at line {line}, byte {e.start}); re-save it as UTF-8, "
                              f"e.g. `iconv -f latin1 -t utf-8`") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        raise ManualDataError(f"{source} is empty: it needs a header row with columns {list(schema.required_columns)}")
    missing = [c for c in schema.required_columns if c not in header]
    if missing:
        raise ManualDataError(f"{source} lacks column(s) {missing} that schema {schema.name!r} needs; it has {header}. "
                              f"Fix the CSV header or pass a schema file that names the right columns")
    kept: list[Annotation] = []
    skipped: list[Skipped] = []
    first_row_of: dict[str, int] = {}
    for row_num, row in enumerate(reader, start=1):
        image_id = (row.get(schema.image_column) or "").strip()
        if not image_id:
            skipped.append(Skipped(row_num, "", "missing_image_path",
                                   f"row {row_num}: column {schema.image_column!r} is empty"))
            continue
        unsafe = unsafe_path_reason(image_id)
        if unsafe:
            skipped.append(Skipped(row_num, image_id, OUTSIDE_REASON,
                                   f"row {row_num}: image path {image_id!r} {unsafe}; image paths must be relative "
                                   f"to the manual dir and stay inside it, so it was not read"))
            continue
        if image_id in first_row_of:
            skipped.append(Skipped(row_num, image_id, "duplicate_id",
                                   f"row {row_num}: image {image_id} already used by row {first_row_of[image_id]}"))
            continue
        try:
            labels = {a.name: _parse_label(a, row) for a in schema.attributes}
        except ValueError as e:
            skipped.append(Skipped(row_num, image_id, "bad_label", f"row {row_num} ({image_id}): {e}"))
            continue
        first_row_of[image_id] = row_num
        group = (row.get(schema.group_column) or "").strip() or None if schema.group_column else None
        kept.append(Annotation(row_num, image_id, labels, group))
    if not kept and not skipped:
        raise ManualDataError(f"{source} has a header but no data rows")
    return kept, skipped


def _parse_label(attr, row: dict):
    if not attr.is_multi_label:
        value = (row.get(attr.column) or "").strip()
        if value not in attr.classes:
            raise ValueError(f"{attr.column}={value!r} is not one of {list(attr.classes)}")
        return attr.classes.index(value)
    if attr.columns:
        bits = []
        for col in attr.columns:
            value = (row.get(col) or "").strip()
            if value not in ("0", "1"):
                raise ValueError(f"{col}={value!r} must be 0 or 1")
            bits.append(int(value))
        return tuple(bits)
    names = [n.strip() for n in (row.get(attr.column) or "").split(attr.delimiter) if n.strip()]
    unknown = [n for n in names if n not in attr.classes]
    if unknown:
        raise ValueError(f"{attr.column} has {unknown}, not in {list(attr.classes)}")
    return tuple(int(c in names) for c in attr.classes)


def main(argv: list[str]) -> int:
    data = ManualData(argv[0], HVC)
    kept, skipped = parse_annotations(data.read_csv_bytes(), HVC, source=data.csv_path)
    by_reason = dict(collections.Counter(s.reason for s in skipped))
    print(f"{data}: {len(kept)} usable rows, {len(skipped)} skipped: {by_reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
