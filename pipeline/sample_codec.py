"""The on-disk format of one WebDataset sample, format v2: one user, every split's targets, the
history once (see DESIGN.md, "Shards").

This module is the single source of truth for member names and dtypes: the Spark writer encodes
with it and the training loader decodes with it. numpy only, so it runs on Spark executors
without torch. A sample has three members:

* `history.npy`: a packed structured array, one record per history event in user order, with the
  fields `item`, `category`, `behavior`, `ts` (seconds after the user's `ts_base`) and, when the
  input has values, `value`;
* `targets.npy`: a packed structured array, one record per target of any split, with the fields
  `target_item`, `target_category`, `target_ts` (after `ts_base`), `target_label`,
  `target_hist_len` (the target's history is `history[:target_hist_len]`) and `target_split`
  (index into `SPLITS`);
* `meta.json`: `{"user": raw user id, "ts_base": epoch seconds}`.

Every integer field has the narrowest dtype that holds its build's values (`RecordLayout`); the
manifest lists them. Two structured members instead of one member per column keep tar's
per-member cost (a 512-byte header and padding) to two members per user. Decoding yields the
per-split view the loader has always used (`UserSample`, int64 ids and times, float32 labels),
reading only the history prefix the split's targets need.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The shard format version, written to the manifest as `schema_version`; readers refuse others.
SCHEMA_VERSION = 2
#: Version of the per-split view models read (`UserSample`, `HISTORY_MEMBERS`, `TARGET_MEMBERS`):
#: unchanged by format v2, so a model trained on v1 shards fits the same data rebuilt as v2.
SAMPLE_VIEW_VERSION = 1
SPLITS = ("train", "valid", "test")

#: Decoded (per-split view) dtypes of the history fields.
HISTORY_MEMBERS: dict[str, np.dtype] = {
    "item": np.dtype(np.int64),
    "category": np.dtype(np.int64),
    "behavior": np.dtype(np.int64),
    "ts": np.dtype(np.int64),
}
#: Optional history field (present when the input has a value column).
VALUE_MEMBER = "value"
VALUE_DTYPE = np.dtype(np.float32)
#: Decoded (per-split view) dtypes of the target fields.
TARGET_MEMBERS: dict[str, np.dtype] = {
    "target_item": np.dtype(np.int64),
    "target_category": np.dtype(np.int64),
    "target_ts": np.dtype(np.int64),
    "target_label": np.dtype(np.float32),
    "target_hist_len": np.dtype(np.int64),
}
#: The stored-only target field: which split a target belongs to (index into `SPLITS`).
SPLIT_FIELD = "target_split"
HISTORY_FILE = "history.npy"
TARGETS_FILE = "targets.npy"
META_MEMBER = "meta.json"

#: Stored dtypes an integer field may take, narrowest first.
_ID_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.int64))
_TS_DTYPES = (np.dtype(np.uint32), np.dtype(np.int64))
_FLAG_DTYPE = np.dtype(np.uint8)


def narrowest_id_dtype(bound: int) -> np.dtype:
    """The narrowest of uint8 / uint16 / uint32 / int64 holding every integer in [0, bound)."""
    for dtype in _ID_DTYPES[:-1]:
        if bound <= int(np.iinfo(dtype).max) + 1:
            return dtype
    return _ID_DTYPES[-1]


@dataclass(frozen=True)
class RecordLayout:
    """Stored dtypes of one build's samples.

    Attributes:
        item: item ids (history and targets).
        category: category ids (history and targets).
        behavior: behavior ids.
        ts: times after the user's `ts_base` (history and targets).
        hist_len: `target_hist_len`.
        with_value: history records carry a float32 `value`.
    """

    item: np.dtype
    category: np.dtype
    behavior: np.dtype
    ts: np.dtype
    hist_len: np.dtype
    with_value: bool = False

    @classmethod
    def for_build(
        cls, vocab_sizes: Mapping[str, int], max_history: int, ts_span: int, with_value: bool
    ) -> RecordLayout:
        """The narrowest layout for vocab tables of `vocab_sizes` rows, histories of at most
        `max_history` events and times spanning at most `ts_span` seconds."""
        return cls(
            item=narrowest_id_dtype(vocab_sizes["item"]),
            category=narrowest_id_dtype(vocab_sizes["category"]),
            behavior=narrowest_id_dtype(vocab_sizes["behavior"]),
            ts=_TS_DTYPES[0] if ts_span < 2**32 else _TS_DTYPES[1],
            hist_len=narrowest_id_dtype(max_history + 1),
            with_value=with_value,
        )

    @classmethod
    def widest(cls, with_value: bool = False) -> RecordLayout:
        """A layout that holds any values (int64 everywhere): for tests and tools."""
        wide = np.dtype(np.int64)
        return cls(wide, wide, wide, wide, wide, with_value)

    def history_dtype(self) -> np.dtype:
        """Packed structured dtype of `history.npy`."""
        fields = [
            ("item", self.item),
            ("category", self.category),
            ("behavior", self.behavior),
            ("ts", self.ts),
        ]
        if self.with_value:
            fields.append((VALUE_MEMBER, VALUE_DTYPE))
        return np.dtype(fields)

    def targets_dtype(self) -> np.dtype:
        """Packed structured dtype of `targets.npy`."""
        return np.dtype(
            [
                ("target_item", self.item),
                ("target_category", self.category),
                ("target_ts", self.ts),
                ("target_label", _FLAG_DTYPE),
                ("target_hist_len", self.hist_len),
                (SPLIT_FIELD, _FLAG_DTYPE),
            ]
        )

    def members(self) -> dict[str, str]:
        """Field → stored dtype name, as the manifest's `members` lists them."""
        fields = {**_fields(self.history_dtype()), **_fields(self.targets_dtype())}
        return dict(sorted(fields.items()))


def _fields(dtype: np.dtype) -> dict[str, str]:
    return {name: str(dtype.fields[name][0]) for name in dtype.names or ()}


#: Stored dtypes each field may take (what a reader accepts in `members` and in samples).
ALLOWED_DTYPES: dict[str, tuple[np.dtype, ...]] = {
    "item": _ID_DTYPES,
    "category": _ID_DTYPES,
    "behavior": _ID_DTYPES,
    "ts": _TS_DTYPES,
    VALUE_MEMBER: (VALUE_DTYPE,),
    "target_item": _ID_DTYPES,
    "target_category": _ID_DTYPES,
    "target_ts": _TS_DTYPES,
    "target_label": (_FLAG_DTYPE,),
    "target_hist_len": _ID_DTYPES,
    SPLIT_FIELD: (_FLAG_DTYPE,),
}
_HISTORY_FIELDS = ("item", "category", "behavior", "ts")
_TARGET_FIELDS = (*TARGET_MEMBERS, SPLIT_FIELD)


@dataclass
class UserSample:
    """One user's history and the targets of one split: what the loader batches.

    Attributes:
        user: raw user id (as a string).
        split: one of `SPLITS`.
        history: member name → array of shape (L,), L = the history the split's targets need.
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


@dataclass
class UserRecord:
    """One user's history (once) and the targets of every split: what a shard sample stores.

    Attributes:
        user: raw user id (as a string).
        history: `HISTORY_MEMBERS` (int64) and optionally `value` (float32), shape (L,).
        targets: `TARGET_MEMBERS` dtypes plus `target_split` (int64 index into `SPLITS`),
            shape (T,).
    """

    user: str
    history: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]

    @classmethod
    def from_samples(cls, samples: list[UserSample]) -> UserRecord:
        """The record holding `samples` (one user, distinct splits), history from the longest.

        Raises:
            ValueError: samples of different users or a split given twice.
        """
        if not samples or len({s.user for s in samples}) != 1:
            raise ValueError("UserRecord.from_samples: expected samples of exactly one user")
        if len({s.split for s in samples}) != len(samples):
            raise ValueError(f"UserRecord.from_samples: user {samples[0].user!r}: split repeated")
        ordered = sorted(samples, key=lambda s: SPLITS.index(s.split))
        longest = max(ordered, key=lambda s: s.history["item"].shape[0])
        targets = {
            name: np.concatenate([s.targets[name] for s in ordered]) for name in TARGET_MEMBERS
        }
        targets[SPLIT_FIELD] = np.concatenate(
            [np.full(s.num_targets, SPLITS.index(s.split), dtype=np.int64) for s in ordered]
        )
        return cls(user=ordered[0].user, history=dict(longest.history), targets=targets)

    def split_sample(self, split: str) -> UserSample | None:
        """The per-split view: `split`'s targets and the history prefix they need (None when the
        user has no target in `split`)."""
        chosen = np.flatnonzero(self.targets[SPLIT_FIELD] == SPLITS.index(split))
        if chosen.size == 0:
            return None
        targets = {name: self.targets[name][chosen] for name in TARGET_MEMBERS}
        keep = int(targets["target_hist_len"].max())
        history = {name: np.ascontiguousarray(a[:keep]) for name, a in self.history.items()}
        return UserSample(user=self.user, split=split, history=history, targets=targets)

    def split_samples(self) -> list[UserSample]:
        """The per-split views of every split with targets, in `SPLITS` order."""
        views = (self.split_sample(split) for split in SPLITS)
        return [view for view in views if view is not None]


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
    """Check dtypes, lengths and the no-leak invariant of a per-split sample.

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


def validate_record(record: UserRecord) -> None:
    """Check a record: its split index and every per-split view (`validate_sample`).

    Raises:
        ValueError: naming the user, member and the violated rule.
    """
    split = record.targets.get(SPLIT_FIELD)
    if split is None:
        raise ValueError(f"record of user {record.user!r}: missing target member {SPLIT_FIELD!r}")
    if split.size and (split.min() < 0 or split.max() >= len(SPLITS)):
        raise ValueError(
            f"record of user {record.user!r}: {SPLIT_FIELD} outside [0, {len(SPLITS) - 1}]"
        )
    for sample in record.split_samples():
        validate_sample(sample)


def _stored(user: str, name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`values` as `dtype`, refusing values the dtype cannot hold."""
    if dtype.kind in "ui" and values.size:
        info = np.iinfo(dtype)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise ValueError(
                f"record of user {user!r}: {name} values [{low}, {high}] do not fit the layout's "
                f"{dtype}; the manifest's vocab sizes or limits are too small for this data"
            )
    return values.astype(dtype, copy=False)


def encode_record(record: UserRecord, layout: RecordLayout) -> list[tuple[str, bytes]]:
    """Encode a record into `(member suffix, bytes)` pairs: meta, targets, history.

    Raises:
        ValueError: a value does not fit the layout's dtype (naming the field and user), or the
            record has `value` and the layout not (or the reverse).
    """
    if (VALUE_MEMBER in record.history) != layout.with_value:
        raise ValueError(
            f"record of user {record.user!r}: value member present={VALUE_MEMBER in record.history} "
            f"but layout.with_value={layout.with_value}"
        )
    labels = record.targets["target_label"]
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"record of user {record.user!r}: target_label values must be 0 or 1")
    ts, target_ts = record.history["ts"], record.targets["target_ts"]
    ts_base = min((int(a.min()) for a in (ts, target_ts) if a.size), default=0)
    history = np.empty(ts.shape[0], dtype=layout.history_dtype())
    for name in history.dtype.names:
        values = record.history[name] - ts_base if name == "ts" else record.history[name]
        history[name] = _stored(record.user, name, values, history.dtype.fields[name][0])
    targets = np.empty(target_ts.shape[0], dtype=layout.targets_dtype())
    for name in targets.dtype.names:
        values = record.targets[name] - ts_base if name == "target_ts" else record.targets[name]
        targets[name] = _stored(record.user, name, values, targets.dtype.fields[name][0])
    meta = {"user": record.user, "ts_base": ts_base}
    return [
        (META_MEMBER, json.dumps(meta, sort_keys=True).encode("utf-8")),
        (TARGETS_FILE, npy_bytes(targets)),
        (HISTORY_FILE, npy_bytes(history)),
    ]


_SHAPE = re.compile(rb"'shape':\s*\((\d+),\s*\)")


def _npy_header(data: bytes | bytearray) -> tuple[np.dtype, int, int]:
    """(dtype, length, offset of the data) of a 1-D `.npy`.

    Samples of a build share a few distinct headers that differ only in their length, so the
    rest is parsed (with `ast.literal_eval`, as numpy does) once per distinct header.

    Raises:
        ValueError: not a `.npy`, an unknown format version, or not a 1-D C-order array.
    """
    if len(data) < 12 or data[:6] != b"\x93NUMPY":
        raise ValueError("no .npy magic string")
    major = data[6]
    if major == 1:
        size, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        size, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise ValueError(f"unsupported .npy format version {major}")
    header = bytes(data[start : start + size])
    match = _SHAPE.search(header)
    if match is None:
        raise ValueError(f"expected a 1-D array, header {header[:120]!r}")
    template = header[: match.start(1)] + b"0" + header[match.end(1) :]
    dtype = _header_dtype(template, "utf-8" if major == 3 else "latin1")
    return dtype, int(match.group(1)), start + size


@functools.lru_cache(maxsize=256)
def _header_dtype(template: bytes, encoding: str) -> np.dtype:
    header = ast.literal_eval(template.decode(encoding))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"malformed .npy header {template[:120]!r}")
    if header["fortran_order"]:
        raise ValueError("expected a C-order array")
    return np.lib.format.descr_to_dtype(header["descr"])


@functools.lru_cache(maxsize=256)
def _check_fields(member: str, dtype: np.dtype, fields: tuple[str, ...]) -> None:
    """Raise ValueError unless `dtype` is a structured dtype with exactly `fields` (plus the
    optional `value` in the history), each in a dtype `ALLOWED_DTYPES` lists."""
    if dtype.hasobject or dtype.names is None:
        raise ValueError(f"expected a 1-D structured array without objects, got dtype {dtype}")
    optional = (VALUE_MEMBER,) if member == HISTORY_FILE else ()
    missing = [name for name in fields if name not in dtype.names]
    unknown = [name for name in dtype.names if name not in (*fields, *optional)]
    if missing or unknown:
        raise ValueError(f"fields missing {missing}, unknown {unknown}")
    for name in dtype.names:
        if dtype.fields[name][0] not in ALLOWED_DTYPES[name]:
            raise ValueError(
                f"field {name!r} has dtype {dtype.fields[name][0]}, expected one of "
                f"{[str(d) for d in ALLOWED_DTYPES[name]]}"
            )


def _structured(members: Mapping[str, Any], member: str, fields: tuple[str, ...]) -> tuple:
    """(dtype, length, header size, raw bytes) of a structured `.npy` member, header checked."""
    key = members.get("__key__", "?")
    data = members.get(member)
    if not isinstance(data, bytes | bytearray):
        raise ValueError(f"sample {key!r}: missing member {member!r}")
    try:
        dtype, length, header = _npy_header(data)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"sample {key!r}: member {member!r} is not a .npy array ({exc})") from None
    try:
        _check_fields(member, dtype, fields)
    except ValueError as exc:
        raise ValueError(f"sample {key!r}: member {member!r}: {exc}") from None
    if len(data) < header + length * dtype.itemsize:
        raise ValueError(f"sample {key!r}: member {member!r} is shorter than its header says")
    return dtype, length, header, data


def _meta(members: Mapping[str, Any]) -> tuple[str, int]:
    key = members.get("__key__", "?")
    raw = members.get(META_MEMBER)
    if raw is None:
        raise ValueError(f"sample {key!r}: missing member {META_MEMBER!r}")
    try:
        meta = json.loads(raw)
        return str(meta["user"]), int(meta["ts_base"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"sample {key!r}: bad {META_MEMBER}: {exc!r}") from None


def _history_view(
    members: Mapping[str, Any], ts_base: int, length: int | None
) -> dict[str, np.ndarray]:
    dtype, stored, header, data = _structured(members, HISTORY_FILE, _HISTORY_FIELDS)
    count = stored if length is None else length
    if count > stored:
        raise ValueError(
            f"sample {members.get('__key__', '?')!r}: target_hist_len {count} exceeds the "
            f"{stored} stored history events"
        )
    records = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    history = {name: records[name].astype(np.int64) for name in _HISTORY_FIELDS}
    history["ts"] += ts_base
    if VALUE_MEMBER in dtype.names:
        history[VALUE_MEMBER] = records[VALUE_MEMBER].astype(VALUE_DTYPE)
    return history


def _all_targets(members: Mapping[str, Any], ts_base: int) -> dict[str, np.ndarray]:
    dtype, stored, header, data = _structured(members, TARGETS_FILE, _TARGET_FIELDS)
    records = np.frombuffer(data, dtype=dtype, count=stored, offset=header)
    targets = {
        name: records[name].astype(TARGET_MEMBERS.get(name, np.int64)) for name in _TARGET_FIELDS
    }
    targets["target_ts"] += ts_base
    return targets


def decode_split(members: Mapping[str, Any], split: str) -> UserSample | None:
    """The per-split view of a raw WebDataset sample (`{"history.npy": b"...", ...}`): `split`'s
    targets and the history prefix they need; None when the user has no target in `split`.

    Only that prefix of `history.npy` is converted; the rest of the bytes are not touched.

    Raises:
        ValueError: a missing member, an unknown field or dtype, or a `target_hist_len` past
            the stored history, naming the sample and member.
    """
    user, ts_base = _meta(members)
    targets = _all_targets(members, ts_base)
    chosen = np.flatnonzero(targets.pop(SPLIT_FIELD) == SPLITS.index(split))
    if chosen.size == 0:
        return None
    targets = {name: values[chosen] for name, values in targets.items()}
    history = _history_view(members, ts_base, int(targets["target_hist_len"].max()))
    return UserSample(user=user, split=split, history=history, targets=targets)


def decode_record(members: Mapping[str, Any]) -> UserRecord:
    """The whole record of a raw WebDataset sample (every split, the whole stored history).

    Raises:
        ValueError: as `decode_split`.
    """
    user, ts_base = _meta(members)
    targets = _all_targets(members, ts_base)
    history = _history_view(members, ts_base, None)
    if targets["target_hist_len"].size and int(targets["target_hist_len"].max()) > len(
        history["ts"]
    ):
        raise ValueError(
            f"sample {members.get('__key__', '?')!r}: a target_hist_len exceeds the stored history"
        )
    return UserRecord(user=user, history=history, targets=targets)
