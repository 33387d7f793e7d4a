"""Google Cloud Storage helpers for what TensorFlow's own filesystem does not reach.

TensorFlow's `gs://` filesystem (tf.io.gfile, and so TFDS and tf.data) only talks to storage.googleapis.com: it
has no endpoint override, so it cannot be pointed at a local emulator (see docs/cloud.md). These helpers use
`google-cloud-storage`, which honours `STORAGE_EMULATOR_HOST`, for the jobs around training: staging manual
data to a local disk, publishing reports and exports, listing what a run wrote.

    python -m trainer.gcs cp runs/job1/eval gs://my-bucket/reports/job1     # upload a directory
    python -m trainer.gcs cp gs://my-bucket/raw/hvc_data.zip data/           # download one object
    python -m trainer.gcs ls gs://my-bucket/reports/job1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import shutil
import sys

# Uploads and downloads are latency-bound (one HTTP round trip per object), so threads, not processes, help:
# 7,000 small JPEGs take minutes one by one and seconds 16 at a time.
_THREADS = 16


def is_gcs(path) -> bool:
    return str(path).startswith("gs://")


def split_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, name


def client():
    """A storage client; with STORAGE_EMULATOR_HOST set, google-cloud-storage talks to it anonymously."""
    from google.cloud import storage  # imported here so that local-only runs never pay for it

    return storage.Client()


def list_uris(uri: str, storage_client=None) -> list[str]:
    """Every object under `uri` (an object name or a prefix), as sorted gs:// URIs."""
    storage_client = storage_client or client()
    bucket, name = split_uri(uri)
    if name and not name.endswith("/") and storage_client.bucket(bucket).get_blob(name) is not None:
        return [f"gs://{bucket}/{name}"]
    prefix = name.rstrip("/") + "/" if name else ""
    # Zero-byte "folder" placeholders (names ending in "/") made by the console are not files.
    blobs = [b.name for b in storage_client.list_blobs(bucket, prefix=prefix) if not b.name.endswith("/")]
    return [f"gs://{bucket}/{b}" for b in sorted(blobs)]


def _parallel(fn, items):
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(fn, items))  # list() re-raises the first failure instead of dropping it


def upload(local_path, uri: str, storage_client=None) -> list[str]:
    """Uploads a file to `uri`, or a directory tree under `uri/`; returns the URIs written."""
    storage_client = storage_client or client()
    local_path = pathlib.Path(local_path)
    bucket_name, name = split_uri(uri)
    bucket = storage_client.bucket(bucket_name)
    if local_path.is_file():
        into_folder = not name or name.endswith("/")
        pairs = [(local_path, f"{name}{local_path.name}" if into_folder else name)]
    elif local_path.is_dir():
        files = sorted(p for p in local_path.rglob("*") if p.is_file())
        base = name.rstrip("/")
        pairs = [(p, f"{base}/{p.relative_to(local_path).as_posix()}".lstrip("/")) for p in files]
    else:
        raise FileNotFoundError(f"nothing to upload at {local_path}")

    def _one(pair):
        path, blob_name = pair
        bucket.blob(blob_name).upload_from_filename(str(path))
        return f"gs://{bucket_name}/{blob_name}"

    return _parallel(_one, pairs)


def download(uri: str, local_path, storage_client=None) -> list[pathlib.Path]:
    """Downloads one object, or every object under a prefix keeping its layout; returns the local files.

    One object lands at `local_path` itself, or inside it when `local_path` is an existing directory.
    """
    storage_client = storage_client or client()
    uris = list_uris(uri, storage_client)
    if not uris:
        raise FileNotFoundError(f"no objects at {uri}")
    local_path = pathlib.Path(local_path)
    bucket_name, name = split_uri(uri)
    if uris == [f"gs://{bucket_name}/{name}"]:
        target = local_path / pathlib.PurePosixPath(name).name if local_path.is_dir() else local_path
        pairs = [(name, target)]
    else:
        prefix = name.rstrip("/") + "/" if name else ""
        pairs = [(u[len(f"gs://{bucket_name}/"):], local_path / u[len(f"gs://{bucket_name}/{prefix}"):]) for u in uris]
    bucket = storage_client.bucket(bucket_name)

    def _one(pair):
        blob_name, target = pair
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket.blob(blob_name).download_to_filename(str(target))
        return target

    return _parallel(_one, pairs)


def copy(src: str, dst: str, storage_client=None) -> list[str]:
    """Copies a file or directory between local disk and gs:// in either direction; returns what was written."""
    if is_gcs(src) and is_gcs(dst):
        # Through local disk keeps one code path; server-side copies are for when this is ever a bottleneck.
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            download(src, tmp, storage_client)
            return upload(tmp, dst, storage_client)
    if is_gcs(dst):
        return upload(src, dst, storage_client)
    if is_gcs(src):
        return [str(p) for p in download(src, dst, storage_client)]
    if os.path.isdir(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)
    return [dst]


def stage_from_gcs(uri: str, local_dir) -> str:
    """Makes a gs:// input (a zip or a folder) local, for readers that cannot reach it; returns the local path.

    Local paths pass through unchanged, so a launcher can call this on every input:
        manual_dir = stage_from_gcs(args.manual_dir, tempfile.mkdtemp())
    A single object keeps its file name (`hvc_data.zip`); a prefix becomes a folder named after its last part.
    """
    if not is_gcs(uri):
        return str(uri)
    local_dir = pathlib.Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    _, name = split_uri(uri)
    leaf = pathlib.PurePosixPath(name.rstrip("/")).name or "bucket"
    download(uri, local_dir / leaf)
    return str(local_dir / leaf)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.gcs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    cp = sub.add_parser("cp", help="copy a file or directory between local disk and gs://")
    cp.add_argument("src")
    cp.add_argument("dst")
    ls = sub.add_parser("ls", help="list the objects under a gs:// prefix")
    ls.add_argument("uri")
    args = parser.parse_args(argv)
    out = copy(args.src, args.dst) if args.cmd == "cp" else list_uris(args.uri)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
