"""Streaming, safe reading of WebDataset tar shards (local paths, Hadoop/cloud URIs, URLs).

A shard is read by a chain of WebDataset-style stages, each taking an iterator and a
`handler=` error policy (WebDataset's convention: `handler(exn)` returns True to skip the item
and go on, False to stop, or raises):

    open_shard(url) → tar_members → webdataset group_by_keys(keys=member_key) → raw samples

`tar_members` stands in for WebDataset's `tar_file_iterator`, which drops symlinks, devices and
other non-regular members silently, before any hook sees them; here every refused member —
absolute path, `..` component, not a regular file — reaches the handler as a `MemberError`, as
do members without a suffix and duplicate suffixes in one sample. A damaged stream raises one
of `CORRUPT_ERRORS` to the caller, which decides per shard (skip or `ShardError` in strict mode).
"""

from __future__ import annotations

import functools
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import IO, Any

from webdataset.handlers import reraise_exception

from lifeseq.pipeline import storage
from lifeseq.pipeline.compat import tar_group_by_keys

#: WebDataset's error policy: True skips the item, False stops the stage, raising aborts.
Handler = Callable[[Exception], bool]
#: Errors that mean "this shard is damaged" (tar/gzip format errors, truncation, I/O).
CORRUPT_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
#: WebDataset's key/suffix split: `dir/key.suffix.more` → (`dir/key`, `suffix.more`).
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_READ_BUFFER = 1 << 20
_PYARROW_SCHEMES = ("hdfs://", "viewfs://", "s3://", "s3a://", "gs://", "gcs://")


class ShardError(ValueError):
    """A damaged shard or an unsafe/undecodable member, raised in strict mode."""


class MemberError(ValueError):
    """A tar member that is not read, as passed to a stage's `handler`.

    Attributes:
        stat: `unsafe_members` (refused: absolute path, `..`, not a regular file) or
            `bad_members` (no `.suffix`, or a suffix its sample already has).
        name: the member's name.
        reason: why it is not read.
    """

    def __init__(self, stat: str, name: str, reason: str) -> None:
        super().__init__(f"tar member {name!r}: {reason}")
        self.stat, self.name, self.reason = stat, name, reason


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


def tar_members(
    fileobj: IO[bytes], url: str, handler: Handler = reraise_exception
) -> Iterator[dict[str, Any]]:
    """Stream a tar once, front to back, as WebDataset file samples.

    What `webdataset.tariterators.tar_file_iterator` yields (`{"fname", "data"}`, plus the
    `__url__` its `tar_file_expander` adds), read into memory, nothing extracted to disk. Unlike
    it, a refused member is not passed over silently: it goes to `handler` as a `MemberError`
    (`unsafe_members`). Directories are passed over.

    Args:
        fileobj: binary stream of a `.tar` (or `.tar.gz`, detected) file.
        url: shard name, stored in each file sample as `__url__`.
        handler: error policy for refused members.

    Raises:
        tarfile.TarError, EOFError, OSError, zlib.error: the stream is damaged.
    """
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if member.isdir():
                continue
            reason = unsafe_reason(member)
            if reason is not None:
                if handler(MemberError("unsafe_members", member.name, reason)):
                    continue
                break
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file
            yield {"fname": member.name, "data": handle.read(), "__url__": url}
            tar.members = []  # as tar_file_iterator: keep no TarInfo of members already read


def member_key(fname: str) -> tuple[str, str]:
    """`group_by_keys`'s `keys=`: `dir/key.suffix.more` → (`dir/key`, `suffix.more`).

    WebDataset's own `base_plus_ext` returns None for a name without a suffix, which
    `group_by_keys` drops silently; this raises instead, so the handler counts it.

    Raises:
        MemberError: (`bad_members`) no `.suffix` in the name.
    """
    match = _KEY_RE.match(fname)
    if match is None:
        raise MemberError("bad_members", fname, "no '.suffix' in the member name")
    return match.group(1), match.group(2)


def _grouping_error(handler: Handler, exn: Exception) -> bool:
    """`group_by_keys`'s handler: the plain ValueError it raises for a suffix its sample already
    has (message `"{fname}: duplicate file name ..."`) becomes a `MemberError`."""
    if isinstance(exn, ValueError) and not isinstance(exn, MemberError):
        name = str(exn.args[0]).partition(": ")[0] if exn.args else "?"
        match = _KEY_RE.match(name)
        reason = (
            f"duplicate member {match.group(2)!r} in sample {match.group(1)!r}"
            if match
            else f"duplicate member ({exn.args[0] if exn.args else exn!r})"
        )
        exn = MemberError("bad_members", name, reason)
    return handler(exn)


def iter_tar_samples(
    fileobj: IO[bytes], url: str, handler: Handler = reraise_exception
) -> Iterator[dict[str, Any]]:
    """Raw WebDataset samples of a tar stream: `tar_members` grouped by WebDataset's own
    `group_by_keys` (consecutive members sharing a key form one sample).

    Args:
        fileobj: binary stream of a `.tar` (or `.tar.gz`, detected) file.
        url: shard name, stored in each sample as `__url__`.
        handler: error policy, called with a `MemberError` for each member not read (refused,
            no suffix, duplicate suffix); the default raises it.

    Yields:
        dicts member suffix → bytes, plus `__key__` and `__url__`.

    Raises:
        tarfile.TarError, EOFError, OSError, zlib.error: the stream is damaged (a sample still
            being assembled at the damage is not yielded).
    """
    return tar_group_by_keys(
        tar_members(fileobj, url, handler),
        keys=member_key,
        handler=functools.partial(_grouping_error, handler),
    )


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
