"""The export directory: its manifest, checksums and memory-mapped embedding tables.

`lifeseq export` writes (see `serving.export`):

    EXPORT/
      manifest.json                        format, versions, model config, every file's sha256
      tables/{table}/{start}-{end}.npy     embedding rows [start, end) of one checkpoint shard
      cache/{name}/{start}-{end}.npy       item caches the model declares, rows [start, end):
                                           TWIN's ESU keys (n, H·dh), the sequential models'
                                           L2-normalized item index (n, d)
      dense/model.pt2                      `torch.export` program of the request model
      dense/model_no_history.pt2           CTR: the same program for a user with no history
      dense/{update,score_state}.pt2       incremental-state models (MIMN): a user's state after
                                           one more event; candidates' scores from a state
      state/{name}.npy                     their initial per-user state, one array per tensor
      vocab/{item,category,behavior}.parquet   raw_id → id (item: + category_id)

Everything is `.npy`, Parquet, JSON or a `.pt2` archive (its tensors are raw bytes; it holds
no pickled weights, which export checks). Nothing here is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST_FILE = "manifest.json"
#: Format version of `manifest.json` (2: the model zoo's generic `request` section).
EXPORT_FORMAT_VERSION = 2
#: Files hashed per read when checksumming.
_BLOCK = 1 << 22


class ExportError(ValueError):
    """A missing, partial or corrupted export, or one this version cannot read."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """Manifest entry of `path`: bytes and sha256."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of export `root`.

    Raises:
        ExportError: no manifest, unreadable JSON or an unknown format version.
    """
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"{root}: not a lifeseq export (no {MANIFEST_FILE}); run lifeseq export")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err}); re-run lifeseq export") from err
    version = manifest.get("format_version")
    if version != EXPORT_FORMAT_VERSION:
        raise ExportError(
            f"{path}: format_version {version!r}, this lifeseq reads {EXPORT_FORMAT_VERSION}; "
            "re-export the checkpoint with this lifeseq (lifeseq export)"
        )
    return manifest


def verify_files(root: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Check every file of the manifest exists with its size (and sha256 when `checksums`).

    Raises:
        ExportError: naming the first missing, truncated or corrupted file.
    """
    root = Path(root)
    for name, entry in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise ExportError(f"{path}: listed in {MANIFEST_FILE} but missing; re-export")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ExportError(
                f"{path}: {size} bytes, the manifest says {entry['bytes']} (partial copy?); "
                "re-copy or re-export"
            )
        if checksums and sha256_file(path) != entry["sha256"]:
            raise ExportError(
                f"{path}: sha256 does not match the manifest (corrupted); re-copy or re-export"
            )


@dataclass(frozen=True)
class ShardedRows:
    """A table stored as row-range `.npy` shards, memory-mapped copy-on-write (nothing read
    until used; the files are never written).

    Attributes:
        rows: total rows.
        width: columns (trailing dims flattened).
        starts: first row of each shard, ascending.
        shards: the memory-mapped arrays, (end - start, width) each.
    """

    rows: int
    width: int
    starts: tuple[int, ...]
    shards: tuple[np.ndarray, ...]

    @staticmethod
    def open(root: Path, entries: list[dict[str, Any]], rows: int) -> ShardedRows:
        """Map the shard files `entries` (`file`, `start`, `end`) of a table with `rows` rows.

        Raises:
            ExportError: shards that do not tile [0, rows) or disagree on width.
        """
        entries = sorted(entries, key=lambda e: e["start"])
        shards, starts, expected = [], [], 0
        for entry in entries:
            if entry["start"] != expected:
                raise ExportError(f"{root}: shard {entry['file']} starts at row {entry['start']}, "
                                  f"expected {expected}; the export is incomplete")  # fmt: skip
            # copy-on-write map: writable for torch.from_numpy, never written back to the file
            array = np.load(Path(root) / entry["file"], mmap_mode="c", allow_pickle=False)
            if array.shape[0] != entry["end"] - entry["start"]:
                raise ExportError(f"{root}/{entry['file']}: {array.shape[0]} rows, expected "
                                  f"{entry['end'] - entry['start']}")  # fmt: skip
            shards.append(array.reshape(array.shape[0], -1))
            starts.append(entry["start"])
            expected = entry["end"]
        if expected != rows or not shards:
            raise ExportError(f"{root}: shards cover rows [0, {expected}) of {rows}; re-export")
        widths = {s.shape[1] for s in shards}
        if len(widths) != 1:
            raise ExportError(f"{root}: shards of different widths {sorted(widths)}")
        return ShardedRows(rows, widths.pop(), tuple(starts), tuple(shards))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """(n, width) float32 copy of rows `ids` (int64, in [0, rows))."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.shards) == 1:  # one file (a one-rank table): one gather on torch's threads
            rows = torch.from_numpy(self.shards[0]).index_select(0, torch.from_numpy(ids))
            return rows.to(torch.float32).numpy()
        out = np.empty((ids.shape[0], self.width), dtype=np.float32)
        if ids.size == 0:
            return out
        which = np.searchsorted(np.asarray(self.starts), ids, side="right") - 1
        for shard in np.unique(which):
            mask = which == shard
            out[mask] = self.shards[shard][ids[mask] - self.starts[shard]]
        return out
