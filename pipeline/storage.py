"""Filesystem access for the Python side of the pipeline (shards, manifest, commit renames).

Spark reads inputs and writes Parquet through Hadoop filesystems (`file:`, `hdfs://`, `s3a://`,
...). Python code (executors writing shard tars, the driver committing them and writing the
manifest) goes through `pyarrow.fs`, which understands local paths, `file://`, `hdfs://`,
`s3://` and `gs://`. `s3a://` URIs are mapped to `s3://` for pyarrow.
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Any

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return `(filesystem, path)` for a local path or URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://") :]
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    """Join URI/path components with '/'."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    """Whether a file or directory exists at `uri`."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_nonempty_dir(uri: str) -> bool:
    """Whether `uri` is a directory with at least one entry (or a file)."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.File:
        return True
    return len(fs.get_file_info(pafs.FileSelector(path, recursive=False))) > 0


def delete_dir(uri: str) -> None:
    """Delete a directory tree if it exists."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def make_dirs(uri: str) -> None:
    """Create a directory (and parents)."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def move(src: str, dst: str) -> None:
    """Rename `src` to `dst` (atomic on local and HDFS filesystems)."""
    fs, src_path = resolve(src)
    _, dst_path = resolve(dst)
    fs.move(src_path, dst_path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` to `uri` through a temporary file and a rename."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp, compression=None) as out:
        out.write(data)
    fs.move(tmp, path)


def write_json_atomic(uri: str, payload: Any) -> None:
    """Write `payload` as indented, key-sorted JSON, atomically."""
    write_bytes_atomic(uri, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(uri: str) -> Any:
    """Read a JSON file.

    Raises:
        FileNotFoundError: naming `uri`.
    """
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file: {uri}")
    with fs.open_input_stream(path, compression=None) as handle:
        return json.loads(handle.read().decode("utf-8"))


def list_files(uri: str, suffix: str = "") -> list[pafs.FileInfo]:
    """All files below `uri` (recursive) whose name ends with `suffix`, sorted by path."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = [i for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)]
    return sorted(files, key=lambda i: i.path)


def expand_files(uri: str) -> list[pafs.FileInfo]:
    """Files named by `uri`: the file itself, every file below a directory, or glob matches
    (`*`, `?`, `[...]` in the last path component), sorted by path."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [info]
    if info.type == pafs.FileType.Directory:
        return list_files(uri)
    parent, pattern = path.rsplit("/", 1) if "/" in path else ("", path)
    if not any(ch in pattern for ch in "*?["):
        return []
    infos = fs.get_file_info(pafs.FileSelector(parent, recursive=False, allow_not_found=True))
    return sorted(
        (
            i
            for i in infos
            if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern)
        ),
        key=lambda i: i.path,
    )
