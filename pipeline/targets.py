"""Per-user targets, splits and negative sampling (pure numpy; runs inside Spark executors).

Given one user's events in user order (by `ts`, ties by input order), build the user's
`UserRecord`: the history once and the targets of every split, each tagged with its split. A target's history is the prefix `item[:target_hist_len]` of the user's
history events that come strictly before the target event in user order, so a label can never
leak into its own history. Impressions (when configured) are targets but never history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lifeseq.pipeline.sample_codec import SPLIT_FIELD, SPLITS, VALUE_MEMBER, UserRecord, UserSample

NegativeMode = Literal["impressions", "sampled", "none"]
_MAX_SAMPLING_ROUNDS = 32


@dataclass(frozen=True)
class TargetSpec:
    """Target rules with behaviors resolved to vocab ids (built on the driver from the config).

    Attributes:
        split: `time` or `leave_one_out`.
        valid_start: first ts of the valid split (`time`).
        test_start: first ts of the test split (`time`).
        positive_behavior_ids: behavior ids of positive events.
        impression_behavior_id: behavior id of impressions, or None.
        negative_mode: resolved negative source.
        negatives_per_positive: sampled negatives per positive (`sampled` mode).
        min_history: minimum number of earlier history events for a target.
        max_targets_per_user: cap on logged targets per user and split, or None.
        seed: base seed.
    """

    split: str
    valid_start: int | None
    test_start: int | None
    positive_behavior_ids: tuple[int, ...]
    impression_behavior_id: int | None
    negative_mode: NegativeMode
    negatives_per_positive: int
    min_history: int
    max_targets_per_user: int | None
    seed: int


class NegativeSampler:
    """Draws negative item ids from the item vocab, uniformly or by popularity^alpha.

    Ids 0 (padding) and 1 (OOV) are never drawn. Items in the caller's exclusion set are
    rejected and redrawn (up to a fixed number of rounds; what is still missing is reported).

    Args:
        item_counts: shape (V,), event count of each item id (index = id); V = item table size.
        item_category: shape (V,), category id of each item id.
        mode: `uniform` or `popularity`.
        alpha: popularity exponent.
    """

    def __init__(
        self,
        item_counts: np.ndarray,
        item_category: np.ndarray,
        mode: str = "uniform",
        alpha: float = 0.75,
    ) -> None:
        if item_counts.shape != item_category.shape:
            raise ValueError(
                f"item_counts {item_counts.shape} and item_category {item_category.shape} differ"
            )
        self.item_category = item_category.astype(np.int64, copy=False)
        self.num_items = int(item_counts.shape[0])
        self.mode = mode
        self._cdf: np.ndarray | None = None
        if mode == "popularity" and self.num_items > 2:
            weights = np.power(item_counts[2:].astype(np.float64), alpha)
            cdf = np.cumsum(weights)
            self._cdf = cdf if cdf[-1] > 0 else None  # no counts at all: uniform
        elif mode not in ("uniform", "popularity"):
            raise ValueError(
                f"negative sampling mode: expected uniform or popularity, got {mode!r}"
            )

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self._cdf is not None:
            u = rng.random(n) * self._cdf[-1]
            return np.searchsorted(self._cdf, u, side="right").astype(np.int64) + 2
        return rng.integers(2, self.num_items, size=n, dtype=np.int64)

    def sample(self, rng: np.random.Generator, n: int, exclude: np.ndarray) -> np.ndarray:
        """Draw `n` item ids not in `exclude` (sorted unique ids); -1 where none was found.

        Returns:
            shape (n,) int64.
        """
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or self.num_items <= 2:
            return out
        pending = np.arange(n)
        for _ in range(_MAX_SAMPLING_ROUNDS):
            cand = self._draw(rng, pending.size)
            if exclude.size == 0:  # indexing exclude[-1] below would raise on an empty set
                hit = np.zeros(cand.size, dtype=bool)
            else:
                pos = np.searchsorted(exclude, cand)
                hit = (pos < exclude.size) & (exclude[np.minimum(pos, exclude.size - 1)] == cand)
            ok = ~hit
            out[pending[ok]] = cand[ok]
            pending = pending[hit]
            if pending.size == 0:
                break
        return out


@dataclass
class UserTargetStats:
    """Counts for one user, summed into the manifest."""

    targets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    positives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    negatives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    negatives_short: int = 0


def user_seed(user: str) -> int:
    """Stable 63-bit seed of a raw user id (independent of partitioning and Python's hash)."""
    return int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:8], "little") >> 1


def _assign_splits(
    spec: TargetSpec, ts: np.ndarray, logged: np.ndarray, is_pos: np.ndarray
) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of every event; -1 for non-targets."""
    split_of = np.full(ts.shape[0], -1, dtype=np.int64)
    if spec.split == "time":
        split_of[logged] = np.where(
            ts[logged] < spec.valid_start, 0, np.where(ts[logged] < spec.test_start, 1, 2)
        )
        return split_of
    positions = np.flatnonzero(logged & is_pos)
    if positions.size == 0:
        return split_of
    test_pos = positions[-1]
    valid_pos = positions[-2] if positions.size >= 2 else test_pos
    order = np.arange(ts.shape[0])
    split_of[logged] = np.where(
        order[logged] < valid_pos, 0, np.where(order[logged] < test_pos, 1, 2)
    )
    return split_of


def build_user_samples(
    user: str,
    events: dict[str, np.ndarray],
    spec: TargetSpec,
    sampler: NegativeSampler | None,
) -> tuple[list[UserSample], UserTargetStats]:
    """The per-split views (one per split with targets) of `build_user_record`'s record: what
    the loader yields for this user from each split.

    Returns:
        The samples in split order and the user's target counts.
    """
    record, stats = build_user_record(user, events, spec, sampler)
    return ([] if record is None else record.split_samples()), stats


def build_user_record(
    user: str,
    events: dict[str, np.ndarray],
    spec: TargetSpec,
    sampler: NegativeSampler | None,
    new_events: np.ndarray | None = None,
) -> tuple[UserRecord | None, UserTargetStats]:
    """Build one user's record: the history once and the targets of every split.

    Args:
        user: raw user id.
        events: `item`, `category`, `behavior`, `ts` (int64, shape (N,)) and optionally
            `value` (float32), all in user order.
        spec: resolved target rules.
        sampler: negative sampler (required when `spec.negative_mode == "sampled"`).
        new_events: shape (N,) bool, the events an incremental build added; when given, only
            targets of those events are kept. Splits, caps and negatives are still decided over
            the whole history, so the kept targets equal a full build's targets of them.

    Returns:
        The record (None when the user has no target in any split; its history is cut after
        the last event any target needs) and the user's target counts.
    """
    item, behavior, ts = events["item"], events["behavior"], events["ts"]
    n = item.shape[0]
    stats = UserTargetStats()
    if spec.impression_behavior_id is not None:
        is_imp = behavior == spec.impression_behavior_id
    else:
        is_imp = np.zeros(n, dtype=bool)
    is_hist = ~is_imp
    hist_before = np.cumsum(is_hist) - is_hist
    is_pos = np.isin(behavior, np.asarray(spec.positive_behavior_ids, dtype=np.int64)) & is_hist
    min_hist = max(spec.min_history, 1 if spec.split == "leave_one_out" else 0)
    eligible = hist_before >= min_hist
    logged = is_pos & eligible
    if spec.negative_mode == "impressions" and is_imp.any():
        positive_items = np.unique(item[is_pos])
        logged |= is_imp & eligible & ~np.isin(item, positive_items)
    split_of = _assign_splits(spec, ts, logged, is_pos)

    history = {name: events[name][is_hist] for name in ("item", "category", "behavior", "ts")}
    if VALUE_MEMBER in events:
        history[VALUE_MEMBER] = events[VALUE_MEMBER][is_hist]
    seen_items = np.unique(item)
    base_seed = user_seed(user)
    parts: list[dict[str, np.ndarray]] = []
    for split_index, split in enumerate(SPLITS):
        chosen = np.flatnonzero(split_of == split_index)
        if chosen.size == 0:
            continue
        rng = np.random.default_rng([spec.seed, base_seed, split_index])
        cap = spec.max_targets_per_user
        if cap is not None and chosen.size > cap:
            chosen = np.sort(rng.choice(chosen, size=cap, replace=False))
        sample_targets, source, short = _targets_for(
            chosen, events, is_pos, hist_before, spec, sampler, rng, seen_items
        )
        if new_events is not None:
            sample_targets = {k: v[new_events[source]] for k, v in sample_targets.items()}
            short = short[new_events[chosen]]
        stats.negatives_short += int(short.sum())
        labels = sample_targets["target_label"]
        if labels.size == 0:
            continue
        stats.targets[split] += int(labels.size)
        stats.positives[split] += int((labels == 1).sum())
        stats.negatives[split] += int((labels == 0).sum())
        sample_targets[SPLIT_FIELD] = np.full(labels.size, split_index, dtype=np.int64)
        parts.append(sample_targets)
    if not parts:
        return None, stats
    targets = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    keep = int(targets["target_hist_len"].max())
    record = UserRecord(
        user=user,
        history={name: np.ascontiguousarray(a[:keep]) for name, a in history.items()},
        targets=targets,
    )
    return record, stats


def _targets_for(
    chosen: np.ndarray,
    events: dict[str, np.ndarray],
    is_pos: np.ndarray,
    hist_before: np.ndarray,
    spec: TargetSpec,
    sampler: NegativeSampler | None,
    rng: np.random.Generator,
    seen_items: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Target arrays for the logged target events `chosen`, with sampled negatives after each
    positive; plus each target's source event (index into `events`) and the negatives each
    chosen event is short of."""
    t_item = events["item"][chosen]
    t_cat = events["category"][chosen]
    t_ts = events["ts"][chosen]
    t_label = is_pos[chosen].astype(np.float32)
    t_hist = hist_before[chosen].astype(np.int64)
    k = spec.negatives_per_positive
    if spec.negative_mode == "sampled" and k > 0:
        if sampler is None:
            raise ValueError("negative_mode 'sampled' needs a NegativeSampler")
        pos_rows = np.flatnonzero(t_label == 1)
        negs = sampler.sample(rng, pos_rows.size * k, seen_items).reshape(pos_rows.size, k)
        short = np.zeros(chosen.size, dtype=np.int64)
        short[pos_rows] = (negs < 0).sum(axis=1)
        # Each row of the result: the logged target, then its k negatives (-1 = none found).
        width = k + 1
        grid_item = np.full((chosen.size, width), -1, dtype=np.int64)
        grid_item[:, 0] = t_item
        grid_item[pos_rows, 1:] = negs
        keep = grid_item.reshape(-1) >= 0
        rep = np.repeat(np.arange(chosen.size), width)[keep]
        flat_item = grid_item.reshape(-1)[keep]
        is_first = np.tile(np.arange(width) == 0, chosen.size)[keep]
        category = np.where(is_first, t_cat[rep], sampler.item_category[np.maximum(flat_item, 0)])
        targets = {
            "target_item": flat_item,
            "target_category": category.astype(np.int64),
            "target_ts": t_ts[rep],
            "target_label": np.where(is_first, t_label[rep], np.float32(0)).astype(np.float32),
            "target_hist_len": t_hist[rep],
        }
        return targets, chosen[rep], short
    targets = {
        "target_item": t_item.astype(np.int64),
        "target_category": t_cat.astype(np.int64),
        "target_ts": t_ts.astype(np.int64),
        "target_label": t_label,
        "target_hist_len": t_hist,
    }
    return targets, chosen, np.zeros(chosen.size, dtype=np.int64)
