"""The on-disk format of one WebDataset sample: one user in one split (see DESIGN.md, "Shards").

This module is the single source of truth for member names and dtypes: the Spark writer encodes
with it and the training loader decodes with it. Members are `.npy` arrays (never pickled) plus
`meta.json`. numpy only, so it runs on Spark executors without torch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

#: History members: one entry per history event, in the user's time order.
HISTORY_MEMBERS: dict[str, np.dtype] = {
    "item": np.dtype(np.int64),
    "category": np.dtype(np.int64),
    "behavior": np.dtype(np.int64),
    "ts": np.dtype(np.int64),
}
#: Optional history member (present when the input has a value column).
VALUE_MEMBER = "value"
VALUE_DTYPE = np.dtype(np.float32)
#: Target members: one entry per target of this split.
TARGET_MEMBERS: dict[str, np.dtype] = {
    "target_item": np.dtype(np.int64),
    "target_category": np.dtype(np.int64),
    "target_ts": np.dtype(np.int64),
    "target_label": np.dtype(np.float32),
    "target_hist_len": np.dtype(np.int64),
}
META_MEMBER = "meta.json"
SPLITS = ("train", "valid", "test")


@dataclass
class UserSample:
    """One user's events and the targets of one split.

    Attributes:
        user: raw user id (as a string).
        split: one of `SPLITS`.
        history: member name → array of shape (L,), L = stored history length.
        targets: member name → array of shape (T,), T = number of targets.
    """

    user: str
    split: str
    history: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]

    @property
    def num_targets(self) -> int:
        """Number of targets T."""
        return int(self.targets["target_label"].shape[0])


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialize `array` as `.npy` bytes (no pickle; identical bytes for identical arrays)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    """Deserialize `.npy` bytes, refusing pickled object arrays."""
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _checked(name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if array.ndim != 1:
        raise ValueError(f"sample member {name!r}: expected a 1-D array, got shape {array.shape}")
    if array.dtype != dtype:
        raise ValueError(f"sample member {name!r}: expected dtype {dtype}, got {array.dtype}")
    return array


def validate_sample(sample: UserSample) -> None:
    """Check dtypes, lengths and the no-leak invariant of a sample.

    Raises:
        ValueError: naming the member and the violated rule.
    """
    if sample.split not in SPLITS:
        raise ValueError(f"sample split: expected one of {SPLITS}, got {sample.split!r}")
    lengths = set()
    for name, dtype in HISTORY_MEMBERS.items():
        if name not in sample.history:
            raise ValueError(f"sample of user {sample.user!r}: missing history member {name!r}")
        lengths.add(_checked(name, sample.history[name], dtype).shape[0])
    if VALUE_MEMBER in sample.history:
        lengths.add(_checked(VALUE_MEMBER, sample.history[VALUE_MEMBER], VALUE_DTYPE).shape[0])
    if len(lengths) != 1:
        raise ValueError(
            f"sample of user {sample.user!r}: history members differ in length {lengths}"
        )
    (hist_len,) = lengths
    tlens = set()
    for name, dtype in TARGET_MEMBERS.items():
        if name not in sample.targets:
            raise ValueError(f"sample of user {sample.user!r}: missing target member {name!r}")
        tlens.add(_checked(name, sample.targets[name], dtype).shape[0])
    if len(tlens) != 1:
        raise ValueError(f"sample of user {sample.user!r}: target members differ in length {tlens}")
    ts = sample.history["ts"]
    if ts.shape[0] > 1 and np.any(np.diff(ts) < 0):
        raise ValueError(f"sample of user {sample.user!r}: history ts is not non-decreasing")
    cut = sample.targets["target_hist_len"]
    if cut.size and (cut.min() < 0 or cut.max() > hist_len):
        raise ValueError(f"sample of user {sample.user!r}: target_hist_len outside [0, {hist_len}]")
    if cut.size and hist_len:
        last_hist_ts = np.where(cut > 0, ts[np.maximum(cut - 1, 0)], np.iinfo(np.int64).min)
        if np.any(last_hist_ts > sample.targets["target_ts"]):
            raise ValueError(
                f"sample of user {sample.user!r}: a target's history has an event after its request time"
            )


def encode_members(sample: UserSample) -> list[tuple[str, bytes]]:
    """Encode a sample into `(member suffix, bytes)` pairs in a fixed order."""
    members: list[tuple[str, bytes]] = []
    for name in HISTORY_MEMBERS:
        members.append((f"{name}.npy", npy_bytes(sample.history[name])))
    if VALUE_MEMBER in sample.history:
        members.append((f"{VALUE_MEMBER}.npy", npy_bytes(sample.history[VALUE_MEMBER])))
    for name in TARGET_MEMBERS:
        members.append((f"{name}.npy", npy_bytes(sample.targets[name])))
    meta = {"user": sample.user, "split": sample.split}
    members.append((META_MEMBER, json.dumps(meta, sort_keys=True).encode("utf-8")))
    return members


def decode_members(members: Mapping[str, Any]) -> UserSample:
    """Decode a sample from a mapping of member suffix → raw bytes (or decoded arrays/dicts).

    Accepts WebDataset's raw dict form (`{"item.npy": b"...", "meta.json": b"..."}`).

    Raises:
        ValueError: a member is missing or has the wrong dtype, naming it.
    """

    def array(name: str, dtype: np.dtype) -> np.ndarray:
        key = f"{name}.npy"
        if key not in members:
            raise ValueError(f"sample {members.get('__key__', '?')!r}: missing member {key!r}")
        value = members[key]
        arr = npy_load(value) if isinstance(value, bytes | bytearray) else np.asarray(value)
        return _checked(key, arr, dtype)

    meta_raw = members.get(META_MEMBER)
    if meta_raw is None:
        raise ValueError(f"sample {members.get('__key__', '?')!r}: missing member {META_MEMBER!r}")
    meta = json.loads(meta_raw) if isinstance(meta_raw, bytes | bytearray | str) else dict(meta_raw)
    history = {name: array(name, dtype) for name, dtype in HISTORY_MEMBERS.items()}
    if f"{VALUE_MEMBER}.npy" in members:
        history[VALUE_MEMBER] = array(VALUE_MEMBER, VALUE_DTYPE)
    targets = {name: array(name, dtype) for name, dtype in TARGET_MEMBERS.items()}
    return UserSample(
        user=str(meta["user"]), split=str(meta["split"]), history=history, targets=targets
    )
