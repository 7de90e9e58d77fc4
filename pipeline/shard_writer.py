"""Deterministic WebDataset tar writing, rolled over by sample count and byte size.

Tar headers carry fixed metadata (mtime 0, uid/gid 0, mode 0444, no user names), so the same
samples in the same order give byte-identical shards on every run. Each shard's sha256 and size
are computed while it is streamed out. With `compression="gzip"` shards are `.tar.gz` (gzip
header without name or mtime, so still deterministic), which WebDataset reads natively.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from lifeseq.pipeline import storage
from lifeseq.pipeline.sample_codec import (
    SPLIT_FIELD,
    SPLITS,
    RecordLayout,
    UserRecord,
    encode_record,
)

_BLOCK = tarfile.BLOCKSIZE
#: File suffix of a shard per compression.
SHARD_SUFFIX = {"none": ".tar", "gzip": ".tar.gz"}
_GZIP_LEVEL = 3
_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class SplitCounts:
    """What one shard holds of one split.

    Attributes:
        samples: users with at least one target of the split.
        targets: targets of the split; `positives` / `negatives` of them by label.
    """

    samples: int = 0
    targets: int = 0
    positives: int = 0
    negatives: int = 0


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard file.

    Attributes:
        path: where it was written.
        samples: users (WebDataset samples) it holds.
        bytes: file size.
        sha256: hex digest of the file.
        splits: split → what the shard holds of it.
    """

    path: str
    samples: int
    bytes: int
    sha256: str
    splits: dict[str, SplitCounts]


class _HashingStream(io.RawIOBase):
    """Write-only stream that forwards to `sink` and keeps a sha256 and byte count."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        view = memoryview(data)
        self._sink.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)


def tar_member_size(payload_len: int) -> int:
    """Bytes one tar member takes: a 512-byte header plus the payload padded to 512."""
    return _BLOCK + -(-payload_len // _BLOCK) * _BLOCK


def closed_tar_size(member_bytes: int) -> int:
    """Size of a finished tar holding `member_bytes` of members: plus the two zero blocks that
    end the archive, rounded up to tar's 10240-byte record."""
    return -(-(member_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


def encoded_sample_size(members: list[tuple[str, bytes]]) -> int:
    """Bytes the members of one sample take inside a tar."""
    return sum(tar_member_size(len(data)) for _, data in members)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class ShardWriter:
    """Writes samples into `{directory}/{prefix}-{NNNNNN}.tar`, opening a new shard as needed.

    A shard is closed before adding a sample would pass `max_bytes` (a sample larger than that
    gets a shard of its own) or when it holds `max_samples` samples.

    Args:
        directory: URI or local path of the output directory.
        prefix: file name prefix (e.g. `part-00003`).
        max_samples: samples per shard.
        max_bytes: size bound of a shard in bytes (uncompressed tar bytes).
        layout: stored dtypes of the records (`RecordLayout.for_build`).
        compression: `none` (`.tar`) or `gzip` (`.tar.gz`).
    """

    def __init__(
        self,
        directory: str,
        prefix: str,
        max_samples: int,
        max_bytes: int,
        layout: RecordLayout,
        compression: str = "none",
    ) -> None:
        if compression not in SHARD_SUFFIX:
            raise ValueError(
                f"shard compression: expected one of {sorted(SHARD_SUFFIX)}, got {compression!r}"
            )
        self.compression = compression
        self.directory = directory
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.layout = layout
        self.shards: list[ShardInfo] = []
        self._fs, self._dir_path = storage.resolve(directory)
        self._fs.create_dir(self._dir_path, recursive=True)
        self._out: BinaryIO | None = None
        self._hash: _HashingStream | None = None
        self._gzip: gzip.GzipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._path = ""
        self._samples = self._bytes = 0
        self._splits = np.zeros((len(SPLITS), 4), dtype=np.int64)

    def _open(self) -> None:
        index = len(self.shards)
        self._path = f"{self._dir_path}/{self.prefix}-{index:06d}{SHARD_SUFFIX[self.compression]}"
        self._out = self._fs.open_output_stream(self._path, compression=None)
        self._hash = _HashingStream(self._out)
        target: BinaryIO = self._hash  # type: ignore[assignment]
        if self.compression == "gzip":
            self._gzip = gzip.GzipFile(
                filename="", mode="wb", fileobj=self._hash, compresslevel=_GZIP_LEVEL, mtime=0
            )
            target = self._gzip  # type: ignore[assignment]
        self._tar = tarfile.open(fileobj=target, mode="w|", format=tarfile.USTAR_FORMAT)
        self._samples = self._bytes = 0
        self._splits[:] = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        if self._gzip is not None:
            self._gzip.close()
            self._gzip = None
        assert self._out is not None and self._hash is not None
        self._out.close()
        self.shards.append(
            ShardInfo(
                path=self._path,
                samples=self._samples,
                bytes=self._hash.size,
                sha256=self._hash.sha256.hexdigest(),
                splits={
                    split: SplitCounts(*(int(v) for v in self._splits[index]))
                    for index, split in enumerate(SPLITS)
                },
            )
        )
        self._tar = self._out = self._hash = None

    def write(self, key: str, record: UserRecord) -> None:
        """Append one user's record under WebDataset key `key` (no dots allowed).

        Raises:
            ValueError: a bad key, or a record value the layout cannot hold (naming it).
        """
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        members = encode_record(record, self.layout)
        size = encoded_sample_size(members)
        if self._tar is not None and (
            self._samples >= self.max_samples
            or closed_tar_size(self._bytes + size) > self.max_bytes
        ):
            self._close()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for suffix, data in members:
            self._tar.addfile(_tarinfo(f"{key}.{suffix}", len(data)), io.BytesIO(data))
        labels = record.targets["target_label"]
        split = record.targets[SPLIT_FIELD]
        self._samples += 1
        self._bytes += size
        for index in range(len(SPLITS)):
            mine = labels[split == index]
            if mine.size:
                self._splits[index] += (1, mine.size, (mine == 1).sum(), (mine == 0).sum())

    def close(self) -> list[ShardInfo]:
        """Finish the open shard and return all shards written."""
        self._close()
        return self.shards
