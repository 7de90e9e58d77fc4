"""User-grouped jagged batches built from decoded `UserSample`s.

A batch holds B users and T targets (all targets of those users). Each user's history is
stored once, as one row of a `Jagged`, and every target points into its user's row with
`target_user` (row index) and `target_hist_len` (prefix length), so a history is embedded once
for all its targets — never a (T, L, d) copy.

Two views:

* `CtrBatch` (`collate_ctr`): each target sees the most recent `max_history` events of its own
  prefix. The row of a user is `history[start:end]` with `end = max(target_hist_len)` and
  `start = max(0, min(target_hist_len) - max_history)`, so it covers every target's window and
  is still stored once per user (at most the user's stored history: O(events), not
  O(targets × history)). Target j sees `row[target_hist_start[j]:target_hist_len[j]]`, both
  relative to the row: `min(max_history, prefix length)` events.
* `GenerativeBatch` (`collate_generative`): the row is the user's stored sequence (all history
  events of the sample: everything before the split's last target), capped at the most recent
  `max_len` events, with timestamps. Targets are the split's targets with the same prefix
  convention: in leave-one-out, the valid/test target is the held-out item and its
  `target_hist_len` is the row length, so a causal model reads its prediction at position
  `target_hist_len - 1`. `next_item()` gives the autoregressive labels of every position.

Padding batches (`CtrBatch.empty()`, `GenerativeBatch.empty()`) have zero users, zero targets
and `weight = 0.0`; the loader yields them so that every rank runs the same number of steps.
Compute losses so that they are finite on an empty batch and scale them by `weight`, e.g.
`loss = batch.weight * per_target.sum() / max(batch.num_targets, 1)` — a mean over zero
targets is NaN, and NaN * 0 is still NaN.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import numpy as np
import torch

from lifeseq.features.jagged import Jagged
from lifeseq.pipeline.sample_codec import HISTORY_MEMBERS, VALUE_MEMBER, UserSample

_T = TypeVar("_T")
_B = TypeVar("_B", bound="_TensorBatch")
#: `user_hash` keeps 63 bits, so a hash is a non-negative int64.
USER_HASH_MASK = (1 << 63) - 1


def user_hash(key: str) -> int:
    """Stable 63-bit hash of a raw user id: the first 8 bytes of blake2b(UTF-8 key), little
    endian, masked to [0, 2^63 - 1].

    Users are not in the vocabulary (catalogs of users are huge and open), so a model that
    embeds users hashes them into buckets (`models.blocks.user_embedding`); training and serving
    must agree on the hash across processes and runs, which Python's salted `hash()` does not.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & USER_HASH_MASK


def user_hashes(keys: Sequence[str]) -> torch.Tensor:
    """(len(keys),) int64 `user_hash` of each raw user id."""
    return torch.tensor([user_hash(k) for k in keys], dtype=torch.int64)


def _jagged_unchecked(values: torch.Tensor, lengths: torch.Tensor) -> Jagged:
    """A `Jagged` without `__post_init__`'s check, which reads `lengths.sum()` back to the host
    (a device sync per row set on a GPU, an error on `meta`); for copies of checked ones."""
    jagged = object.__new__(Jagged)
    jagged.values = values
    jagged.lengths = lengths
    return jagged


def _map_tensors(obj: _T, fn: Callable[[torch.Tensor], torch.Tensor]) -> _T:
    """Copy of a batch dataclass with `fn` applied to every tensor (also inside `Jagged`s)."""

    def apply(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return fn(value)
        if isinstance(value, Jagged):
            return _jagged_unchecked(fn(value.values), fn(value.lengths))
        if isinstance(value, dict):
            return {k: apply(v) for k, v in value.items()}
        return value

    return replace(obj, **{f.name: apply(getattr(obj, f.name)) for f in fields(obj)})  # type: ignore[type-var]


def _history_keys(samples: Sequence[UserSample]) -> list[str]:
    """History members present in every sample (`value` only when all samples carry it)."""
    keys = list(HISTORY_MEMBERS)
    with_value = [VALUE_MEMBER in s.history for s in samples]
    if all(with_value) and samples:
        keys.append(VALUE_MEMBER)
    elif any(with_value):
        user = samples[with_value.index(False)].user
        raise ValueError(
            f"sample of user {user!r} has no {VALUE_MEMBER!r} member while others in the batch do"
        )
    return keys


def _empty_history(keys: Sequence[str]) -> dict[str, Jagged]:
    empty = torch.zeros(0, dtype=torch.int64)
    out = {}
    for key in keys:
        dtype = torch.float32 if key == VALUE_MEMBER else torch.int64
        out[key] = Jagged(torch.zeros(0, dtype=dtype), empty.clone())
    return out


@dataclass
class _Packed:
    """Rows and targets of a batch as numpy arrays (shared by both collate functions)."""

    rows: dict[str, Jagged]
    row_start: np.ndarray  # (B,) index of each row's first event in the stored history
    targets: dict[str, np.ndarray]  # (T,) each
    target_user: np.ndarray  # (T,)
    target_hist_len: np.ndarray  # (T,), end of each target's window in its row
    target_hist_start: np.ndarray  # (T,), start of each target's window in its row


def _pack(samples: Sequence[UserSample], cap: int, end_at_last_target: bool) -> _Packed:
    """Slice each user's history to its row and concatenate rows and targets.

    Args:
        samples: decoded samples, one per user.
        cap: most recent events kept per row.
        end_at_last_target: rows end at `max(target_hist_len)` (CTR) instead of the stored
            history's end (generative).
    """
    if cap < 1:
        raise ValueError(f"history cap must be >= 1, got {cap}")
    keys = _history_keys(samples)
    starts, ends, counts = [], [], []
    for s in samples:
        stored = int(s.history["item"].shape[0])
        hist_len = s.targets["target_hist_len"]
        if hist_len.size and int(hist_len.max()) > stored:
            raise ValueError(
                f"sample of user {s.user!r}: target_hist_len {int(hist_len.max())} exceeds the "
                f"stored history length {stored}"
            )
        if end_at_last_target:  # CTR: every target keeps its own most recent `cap` events
            end = int(hist_len.max()) if hist_len.size else 0
            start = max(0, (int(hist_len.min()) if hist_len.size else 0) - cap)
        else:  # generative: one causal row of the most recent `cap` events
            end = stored
            start = max(0, end - cap)
        starts.append(start)
        ends.append(end)
        counts.append(int(hist_len.shape[0]))
    row_start = np.asarray(starts, dtype=np.int64)
    lengths = torch.as_tensor(np.asarray(ends, dtype=np.int64) - row_start)
    rows = {}
    for key in keys:
        parts = [s.history[key][a:b] for s, a, b in zip(samples, starts, ends, strict=True)]
        dtype = np.float32 if key == VALUE_MEMBER else np.int64
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        rows[key] = Jagged(torch.from_numpy(values), lengths)
    targets = {
        name: (
            np.concatenate([s.targets[name] for s in samples])
            if samples
            else np.zeros(0, dtype=np.float32 if name == "target_label" else np.int64)
        )
        for name in ("target_item", "target_category", "target_ts", "target_label")
    }
    target_user = np.repeat(np.arange(len(samples), dtype=np.int64), counts)
    raw_len = (
        np.concatenate([s.targets["target_hist_len"] for s in samples])
        if samples
        else np.zeros(0, dtype=np.int64)
    )
    first = row_start[target_user]
    target_hist_len = np.maximum(raw_len - first, 0)
    target_hist_start = np.minimum(np.maximum(raw_len - cap, first) - first, target_hist_len)
    return _Packed(rows, row_start, targets, target_user, target_hist_len, target_hist_start)


@dataclass(kw_only=True)
class _TensorBatch:
    """Fields, device moves and the padding flag shared by the batch dataclasses.

    Attributes:
        weight: 1.0 for real batches, 0.0 for padding batches.
        users: raw user ids, length B (stays on the host).
        loader_stats: loader counters (`features.dataset.STAT_KEYS`) incremented since the
            producing worker's previous batch; summed by the consumer (stays on the host).
        loader_worker: DataLoader worker that produced the batch (-1: not from a loader); the
            loader uses it to restore the epoch's batch order on a mid-epoch resume.
    """

    weight: float = 1.0
    users: list[str] = field(default_factory=list)
    loader_stats: dict[str, int] = field(default_factory=dict)
    loader_worker: int = -1

    @property
    def is_padding(self) -> bool:
        """Whether this is a padding batch (weight 0, no users)."""
        return self.weight == 0.0

    def to(self: _B, device: torch.device | str, non_blocking: bool = False) -> _B:
        """Copy with every tensor on `device`."""
        return _map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self: _B) -> _B:
        """Copy with every tensor in page-locked memory (DataLoader `pin_memory=True`)."""
        return _map_tensors(self, lambda t: t.pin_memory())


@dataclass
class CtrBatch(_TensorBatch):
    """CTR view: B users' capped histories (one row each) and their T targets.

    Attributes:
        history: `item`, `category`, `behavior`, `ts` (int64) and, when the shards have it,
            `value` (float32): Jagged with B rows, values of shape (N,), N = total events.
        target_item: shape (T,) int64.
        target_category: shape (T,) int64.
        target_ts: shape (T,) int64, request time of each target (epoch seconds).
        label: shape (T,) float32, 1 positive, 0 negative.
        target_hist_len: shape (T,) int64, end of the target's history window in its row:
            the history is `history[k].values[offsets[u] + target_hist_start[j] : offsets[u] +
            target_hist_len[j]]` with `u = target_user[j]`; in [0, history lengths[u]].
        target_hist_start: shape (T,) int64, start of that window (the most recent
            `max_history` events of the target's prefix).
        target_user: shape (T,) int64, row index in [0, B) of each target's user.
        history_start: shape (B,) int64, events of the stored history dropped before each row
            (by the `max_history` cap).

    Plus `weight`, `users`, `loader_stats`, `loader_worker` (keyword-only, see `_TensorBatch`).
    """

    history: dict[str, Jagged]
    target_item: torch.Tensor
    target_category: torch.Tensor
    target_ts: torch.Tensor
    label: torch.Tensor
    target_hist_len: torch.Tensor
    target_hist_start: torch.Tensor
    target_user: torch.Tensor
    history_start: torch.Tensor

    @property
    def num_users(self) -> int:
        """Number of users (history rows) B."""
        return int(self.history["item"].lengths.shape[0])

    @property
    def num_targets(self) -> int:
        """Number of targets T."""
        return int(self.label.shape[0])

    @staticmethod
    def empty(with_value: bool = False) -> CtrBatch:
        """A padding batch: zero users, zero targets, `weight = 0.0`."""
        keys = [*HISTORY_MEMBERS, *([VALUE_MEMBER] if with_value else [])]
        zeros = torch.zeros(0, dtype=torch.int64)
        return CtrBatch(
            history=_empty_history(keys),
            target_item=zeros.clone(),
            target_category=zeros.clone(),
            target_ts=zeros.clone(),
            label=torch.zeros(0, dtype=torch.float32),
            target_hist_len=zeros.clone(),
            target_hist_start=zeros.clone(),
            target_user=zeros.clone(),
            history_start=zeros.clone(),
            weight=0.0,
            users=[],
        )


def collate_ctr(samples: Sequence[UserSample], max_history: int) -> CtrBatch:
    """Build a `CtrBatch` from decoded samples (one per user).

    Args:
        samples: the batch's users; an empty list gives a padding batch.
        max_history: most recent events of its prefix each target sees.

    Raises:
        ValueError: `max_history` < 1, a target prefix longer than the stored history, or
            samples that disagree on the optional `value` member, naming the user.
    """
    if not samples:
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        return CtrBatch.empty()
    packed = _pack(samples, max_history, end_at_last_target=True)
    t = packed.targets
    return CtrBatch(
        history=packed.rows,
        target_item=torch.from_numpy(t["target_item"]),
        target_category=torch.from_numpy(t["target_category"]),
        target_ts=torch.from_numpy(t["target_ts"]),
        label=torch.from_numpy(t["target_label"]),
        target_hist_len=torch.from_numpy(packed.target_hist_len),
        target_hist_start=torch.from_numpy(packed.target_hist_start),
        target_user=torch.from_numpy(packed.target_user),
        history_start=torch.from_numpy(packed.row_start),
        weight=1.0,
        users=[s.user for s in samples],
    )


@dataclass
class GenerativeBatch(_TensorBatch):
    """Generative view: B users' sequences (one row each, causal order) and their T targets.

    Attributes:
        sequence: `item`, `category`, `behavior`, `ts` (int64) and optionally `value`
            (float32): Jagged with B rows of at most `max_len` events, values of shape (N,).
        target_item: shape (T,) int64, the items to predict (leave-one-out valid/test: the
            held-out item).
        target_category: shape (T,) int64.
        target_ts: shape (T,) int64, request time of each target (HSTU's query timestamp).
        target_label: shape (T,) float32, 1 positive, 0 negative (full ranking uses positives).
        target_hist_len: shape (T,) int64, the target follows `row[:target_hist_len[j]]` of its
            user: a causal model reads its prediction at position `target_hist_len[j] - 1`
            (0 = the target's history lies entirely before the row; no prediction position).
        target_user: shape (T,) int64, row index in [0, B) of each target's user.
        sequence_start: shape (B,) int64, events of the stored history dropped before each row
            (by the `max_len` cap).
        dropped_items: Jagged with B rows: the distinct item ids (sorted) of those dropped
            events, so that full-ranking evaluation can exclude a user's whole history (empty
            rows in training batches, see `collate_generative`).
        user_ids: shape (B,) int64, `user_hash` of each row's user (per row: rows of one user
            repeat it), what a model with a user table embeds.
        row_context: shape (B,) int64, leading positions of each row that only give context
            and are not supervised (whole-history training windows, `features.windows`; zeros
            otherwise).

    Plus `weight`, `users`, `loader_stats`, `loader_worker` (keyword-only, see `_TensorBatch`).
    """

    sequence: dict[str, Jagged]
    target_item: torch.Tensor
    target_category: torch.Tensor
    target_ts: torch.Tensor
    target_label: torch.Tensor
    target_hist_len: torch.Tensor
    target_user: torch.Tensor
    sequence_start: torch.Tensor
    dropped_items: Jagged
    user_ids: torch.Tensor
    row_context: torch.Tensor

    @property
    def num_users(self) -> int:
        """Number of users (sequence rows) B."""
        return int(self.sequence["item"].lengths.shape[0])

    @property
    def num_targets(self) -> int:
        """Number of targets T."""
        return int(self.target_label.shape[0])

    def _shifted(self, key: str, follower: torch.Tensor, fill_last: str) -> Jagged:
        """Row values of `key` shifted one position left; each row's last position takes
        `follower` of a positive target directly following the row, else `fill_last`
        (`zero` or `self`: the position's own value)."""
        column = self.sequence[key]
        values, lengths = column.values, column.lengths
        shifted = torch.zeros_like(values)
        if values.numel() > 1:
            shifted[:-1] = values[1:]
        nonempty = lengths > 0
        last = (column.offsets[1:] - 1).clamp(min=0)[nonempty]  # (B',)
        shifted[last] = values[last] if fill_last == "self" else 0
        row_len = lengths[self.target_user]  # (T,)
        follows = (self.target_label == 1) & (self.target_hist_len == row_len) & (row_len > 0)
        row_last = (column.offsets[1:] - 1).clamp(min=0)
        shifted[row_last[self.target_user[follows]]] = follower[follows]
        return _jagged_unchecked(shifted, lengths)

    def next_item(self) -> Jagged:
        """Autoregressive labels aligned with `sequence["item"]`.

        Position i of a row is labelled with the row's item at i + 1; the last position with
        the item of a positive target that directly follows the row (`target_hist_len` equal
        to the row length), else 0 (= no label, the padding id). In leave-one-out valid/test
        batches the last position's label is the held-out item.

        Returns:
            Jagged with the lengths of `sequence["item"]`, values shape (N,) int64.
        """
        return self._shifted("item", self.target_item, fill_last="zero")

    def context_positions(self) -> torch.Tensor:
        """(N,) bool aligned with `sequence["item"].values`: true at the leading
        `row_context` positions of each row (context only, not supervised)."""
        lengths = self.sequence["item"].lengths
        starts = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum()), device=lengths.device) - torch.repeat_interleave(
            starts, lengths
        )
        return within < torch.repeat_interleave(self.row_context, lengths)

    def query_ts(self) -> Jagged:
        """The time at which each position's next-item prediction is made, aligned with
        `sequence["ts"]`: the next event's timestamp; at a row's last position the request
        time (`target_ts`) of a positive target directly following the row, else the
        position's own timestamp. HSTU's time bias reads `query_ts[i] - ts[j]`.

        Returns:
            Jagged with the lengths of `sequence["ts"]`, values shape (N,) int64.
        """
        return self._shifted("ts", self.target_ts, fill_last="self")

    @staticmethod
    def empty(with_value: bool = False) -> GenerativeBatch:
        """A padding batch: zero users, zero targets, `weight = 0.0`."""
        keys = [*HISTORY_MEMBERS, *([VALUE_MEMBER] if with_value else [])]
        zeros = torch.zeros(0, dtype=torch.int64)
        return GenerativeBatch(
            sequence=_empty_history(keys),
            target_item=zeros.clone(),
            target_category=zeros.clone(),
            target_ts=zeros.clone(),
            target_label=torch.zeros(0, dtype=torch.float32),
            target_hist_len=zeros.clone(),
            target_user=zeros.clone(),
            sequence_start=zeros.clone(),
            dropped_items=Jagged(zeros.clone(), zeros.clone()),
            user_ids=zeros.clone(),
            row_context=zeros.clone(),
            weight=0.0,
            users=[],
        )


def collate_generative(
    samples: Sequence[UserSample],
    max_len: int,
    dropped_items: bool = True,
    row_context: np.ndarray | None = None,
) -> GenerativeBatch:
    """Build a `GenerativeBatch` from decoded samples (one per user).

    Args:
        samples: the batch's users; an empty list gives a padding batch.
        max_len: most recent events kept per user sequence.
        dropped_items: fill `dropped_items` (a sort per user over the events the cap drops, up
            to ~10^5 for lifelong users); False leaves its rows empty. Only full-ranking
            evaluation reads it, so training loaders skip the work.
        row_context: (B,) leading context-only positions of each row (`features.windows`), or
            None for none.

    Raises:
        ValueError: `max_len` < 1, a target prefix longer than the stored history, or samples
            that disagree on the optional `value` member, naming the user.
    """
    if not samples:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        return GenerativeBatch.empty()
    packed = _pack(samples, max_len, end_at_last_target=False)
    t = packed.targets
    return GenerativeBatch(
        sequence=packed.rows,
        target_item=torch.from_numpy(t["target_item"]),
        target_category=torch.from_numpy(t["target_category"]),
        target_ts=torch.from_numpy(t["target_ts"]),
        target_label=torch.from_numpy(t["target_label"]),
        target_hist_len=torch.from_numpy(packed.target_hist_len),
        target_user=torch.from_numpy(packed.target_user),
        sequence_start=torch.from_numpy(packed.row_start),
        dropped_items=Jagged.from_list(
            [
                torch.from_numpy(np.unique(s.history["item"][: start if dropped_items else 0]))
                for s, start in zip(samples, packed.row_start.tolist(), strict=True)
            ]
        ),
        user_ids=user_hashes([s.user for s in samples]),
        row_context=torch.zeros(len(samples), dtype=torch.int64)
        if row_context is None
        else torch.as_tensor(row_context, dtype=torch.int64),
        weight=1.0,
        users=[s.user for s in samples],
    )
