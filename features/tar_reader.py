"""Streaming, safe reading of WebDataset tar shards (local paths, Hadoop/cloud URIs, URLs).

Members are grouped into samples by WebDataset's key convention (`key.suffix`); members with
absolute paths, `..` components or that are not regular files are refused, and damaged shards
surface as `_CORRUPT_ERRORS` for the caller to skip or raise (`ShardError` in strict mode).
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import IO, Any

from pipeline import storage

#: Errors that mean "this shard is damaged" (tar/gzip format errors, truncation, I/O).
CORRUPT_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
#: WebDataset's key/suffix split: `dir/key.suffix.more` → (`dir/key`, `suffix.more`).
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_READ_BUFFER = 1 << 20
_PYARROW_SCHEMES = ("hdfs://", "viewfs://", "s3://", "s3a://", "gs://", "gcs://")


class ShardError(ValueError):
    """A damaged shard or an unsafe/undecodable member, raised in strict mode."""


# --- reading tars safely ------------------------------------------------------------------------


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be read, or None for a safe regular file."""
    name = member.name
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' path component"
    if not member.isreg():
        return f"not a regular file (tar type {member.type!r})"
    return None


def iter_tar_samples(
    fileobj: IO[bytes],
    url: str,
    on_unsafe: Callable[[str, str], None],
    on_bad_member: Callable[[str, str], None],
) -> Iterator[dict[str, Any]]:
    """Stream a tar once, front to back, and group members into raw WebDataset samples.

    Consecutive members sharing a key (the member path up to the first dot of its last
    component) form one sample. Nothing is extracted to disk.

    Args:
        fileobj: binary stream of a `.tar` (or `.tar.gz`, detected) file.
        url: shard name, stored in each sample as `__url__`.
        on_unsafe: called with (member name, reason) for a rejected member; may raise.
        on_bad_member: called with (member name, reason) for a member without a suffix or with a
            duplicate suffix; may raise.

    Yields:
        dicts member suffix → bytes, plus `__key__` and `__url__`.

    Raises:
        tarfile.TarError, EOFError, OSError, zlib.error: the stream is damaged.
    """
    current: dict[str, Any] | None = None
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if member.isdir():
                continue
            reason = unsafe_reason(member)
            if reason is not None:
                on_unsafe(member.name, reason)
                continue
            match = _KEY_RE.match(member.name)
            if match is None:
                on_bad_member(member.name, "no '.suffix' in the member name")
                continue
            key, suffix = match.group(1), match.group(2)
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file
            data = handle.read()
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            if suffix in current:
                on_bad_member(member.name, f"duplicate member {suffix!r} in sample {key!r}")
                continue
            current[suffix] = data
    if current is not None:
        yield current


def open_shard(url: str) -> IO[bytes]:
    """Open a shard for one streaming read.

    Local paths and `file://` use `open`; `hdfs://`, `s3://`, `s3a://`, `gs://` go through
    `pyarrow.fs` (as `pipeline.storage`); anything else (`http(s)://`, `pipe:`) through
    WebDataset's `gopen`.

    Raises:
        OSError: the shard cannot be opened (FileNotFoundError when it does not exist).
    """
    if url.startswith("file://"):
        return open(url[len("file://") :], "rb", buffering=_READ_BUFFER)  # noqa: SIM115
    if url.startswith(_PYARROW_SCHEMES):
        fs, path = storage.resolve(url)
        return fs.open_input_stream(path, compression=None)  # type: ignore[return-value]
    if "://" in url or url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")  # type: ignore[no-any-return]
    return open(url, "rb", buffering=_READ_BUFFER)  # noqa: SIM115
