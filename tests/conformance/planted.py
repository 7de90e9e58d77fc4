"""Planted signals the conformance suite trains every zoo model on (no Spark: samples are
built in memory and collated as the loader would).

* `far_history_sample` (CTR): a target is positive exactly when its category occurs in the
  user's history more than `RECENT` events before it; the most recent `RECENT` events never
  hold a target category, so a model that sees only them (DIN-100) is at chance and a
  long-term unit that finds the far events is not.
* `rule_sample` (sequential): a chain that follows a fixed successor rule `next = RULE[item]`
  (one cycle through the catalog), its next item the positive target.
"""

from __future__ import annotations

import numpy as np

from lifeseq.features.batch import CtrBatch, GenerativeBatch, collate_ctr, collate_generative
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.pipeline.sample_codec import UserSample

#: Events of a CTR history; the last `RECENT` of them hold only noise categories.
HISTORY, RECENT = 240, 100
#: CTR vocabulary sizes (ids 0 padding, 1 OOV).
CTR_VOCAB = {"item": 400, "category": 12, "behavior": 5}
#: Target categories (looked for in the far history) and noise categories.
TARGET_CATEGORIES, NOISE_CATEGORIES = np.arange(2, 7), np.arange(7, 12)
TARGETS_PER_USER = 4

#: Sequential catalog: items 2..ITEMS-1 in one successor cycle.
ITEMS = 100
SEQ_VOCAB = {"item": ITEMS, "category": 3, "behavior": 3}
_CYCLE = np.random.default_rng(99).permutation(np.arange(2, ITEMS))
RULE = np.zeros(ITEMS, dtype=np.int64)
RULE[_CYCLE] = np.roll(_CYCLE, -1)
SEQ_MAX_LEN = 24


def schema(vocab: dict[str, int], **config: int) -> FeatureSchema:
    """A feature schema for in-memory samples of `vocab` (a manifest's fields)."""
    return FeatureSchema.from_vocab(vocab, FeatureConfig(**config))


def far_history_sample(user: int, split: str = "train") -> UserSample:
    """User `user` (see the module docstring): `HISTORY` events, `TARGETS_PER_USER` targets at
    the end, half positive."""
    rng = np.random.default_rng([5, user])
    far = HISTORY - RECENT
    present = rng.choice(TARGET_CATEGORIES, 2, replace=False)
    absent = np.setdiff1d(TARGET_CATEGORIES, present)
    category = rng.choice(NOISE_CATEGORIES, HISTORY)
    slots = rng.choice(far, 6, replace=False)  # three far events of each present category
    category[slots] = np.repeat(present, 3)
    history = {
        "item": rng.integers(2, CTR_VOCAB["item"], HISTORY),
        "category": category.astype(np.int64),
        "behavior": rng.integers(2, CTR_VOCAB["behavior"], HISTORY),
        "ts": 1_700_000_000 + np.cumsum(rng.integers(60, 3_600, HISTORY)),
    }
    half = TARGETS_PER_USER // 2
    target_category = np.concatenate(
        [rng.choice(present, half), rng.choice(absent, TARGETS_PER_USER - half)]
    ).astype(np.int64)
    targets = {
        "target_item": rng.integers(2, CTR_VOCAB["item"], TARGETS_PER_USER),
        "target_category": target_category,
        "target_ts": np.full(TARGETS_PER_USER, history["ts"][-1] + 60, dtype=np.int64),
        "target_label": np.repeat([1.0, 0.0], [half, TARGETS_PER_USER - half]).astype(np.float32),
        "target_hist_len": np.full(TARGETS_PER_USER, HISTORY, dtype=np.int64),
    }
    return UserSample(user=f"user{user:05d}", split=split, history=history, targets=targets)


def rule_sample(
    user: int,
    split: str = "train",
    length: int | None = None,
    events: tuple[int, int] = (10, 21),
    gap_s: int = 3_600,
) -> UserSample:
    """User `user`: a chain of the rule from a seeded random item, `events` (a range: 10..20 by
    default) or `length` events `gap_s` apart, and the chain's next item as the one positive
    target."""
    rng = np.random.default_rng([7, user])
    n = int(rng.integers(*events)) if length is None else length
    chain = [int(rng.integers(2, ITEMS))]
    for _ in range(n):
        chain.append(int(RULE[chain[-1]]))
    items = np.asarray(chain, dtype=np.int64)
    ts = 1_700_000_000 + gap_s * np.arange(n + 1, dtype=np.int64)
    history = {
        "item": items[:n],
        "category": np.full(n, 2, dtype=np.int64),
        "behavior": np.full(n, 2, dtype=np.int64),
        "ts": ts[:n],
    }
    targets = {
        "target_item": items[n:],
        "target_category": np.full(1, 2, dtype=np.int64),
        "target_ts": ts[n:],
        "target_label": np.ones(1, dtype=np.float32),
        "target_hist_len": np.array([n], dtype=np.int64),
    }
    return UserSample(user=f"user{user:05d}", split=split, history=history, targets=targets)


def ctr_batches(first_user: int, users: int, per_batch: int) -> list[CtrBatch]:
    """`far_history_sample` users [first_user, first_user + users) in batches."""
    samples = [far_history_sample(u) for u in range(first_user, first_user + users)]
    return [
        collate_ctr(samples[i : i + per_batch], max_history=HISTORY)
        for i in range(0, users, per_batch)
    ]


def rule_batches(first_user: int, users: int, per_batch: int, train: bool) -> list[GenerativeBatch]:
    """`rule_sample` users in batches (training batches skip the dropped-item lists)."""
    samples = [rule_sample(u) for u in range(first_user, first_user + users)]
    return [
        collate_generative(samples[i : i + per_batch], SEQ_MAX_LEN, dropped_items=not train)
        for i in range(0, users, per_batch)
    ]


def prefix_sample(user: int, events: int = 60) -> UserSample:
    """A CTR user with random events and targets at several prefixes of its history (the
    structural checks: windows, causality, jagged batches)."""
    rng = np.random.default_rng([13, user])
    hist_len = np.sort(rng.choice(np.arange(1, events + 1), 4, replace=False))
    history = {
        "item": rng.integers(2, CTR_VOCAB["item"], events),
        "category": rng.integers(2, CTR_VOCAB["category"], events),
        "behavior": rng.integers(2, CTR_VOCAB["behavior"], events),
        "ts": 1_700_000_000 + np.cumsum(rng.integers(1, 100_000, events)),
    }
    targets = {
        "target_item": rng.integers(2, CTR_VOCAB["item"], 4),
        "target_category": rng.integers(2, CTR_VOCAB["category"], 4),
        "target_ts": history["ts"][hist_len - 1] + rng.integers(1, 1_000, 4),
        "target_label": np.array([1, 0, 1, 0], dtype=np.float32),
        "target_hist_len": hist_len.astype(np.int64),
    }
    return UserSample(user=f"user{user:05d}", split="train", history=history, targets=targets)
