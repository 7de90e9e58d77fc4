"""Tests of per-user targets, splits and negative sampling (`pipeline.targets`).

Events are hand-built so every test can assert the exact target items, labels, history cuts
(`target_hist_len`) and request times of each split.
"""

from __future__ import annotations

import numpy as np
import pytest

from lifeseq.pipeline.sample_codec import UserSample, validate_sample
from lifeseq.pipeline.targets import (
    NegativeSampler,
    TargetSpec,
    UserTargetStats,
    build_user_samples,
    user_seed,
)

pytestmark = pytest.mark.unit

VIEW, CLICK, IMPRESSION = 2, 3, 4
"""Behavior vocab ids used throughout (CLICK is the only positive behavior)."""

VALID_START, TEST_START = 1000, 2000


def make_events(
    items: list[int],
    ts: list[int],
    behavior: list[int] | None = None,
    category: list[int] | None = None,
    value: list[float] | None = None,
) -> dict[str, np.ndarray]:
    """One user's events in user order; behavior defaults to CLICK, category to item + 100."""
    n = len(items)
    assert len(ts) == n
    events = {
        "item": np.asarray(items, dtype=np.int64),
        "category": np.asarray(
            category if category is not None else [i + 100 for i in items], dtype=np.int64
        ),
        "behavior": np.asarray(behavior if behavior is not None else [CLICK] * n, dtype=np.int64),
        "ts": np.asarray(ts, dtype=np.int64),
    }
    if value is not None:
        events["value"] = np.asarray(value, dtype=np.float32)
    return events


def make_spec(**overrides: object) -> TargetSpec:
    """A time-split spec without negatives; fields overridden by keyword."""
    fields: dict[str, object] = dict(
        split="time",
        valid_start=VALID_START,
        test_start=TEST_START,
        positive_behavior_ids=(CLICK,),
        impression_behavior_id=None,
        negative_mode="none",
        negatives_per_positive=0,
        min_history=0,
        max_targets_per_user=None,
        seed=0,
    )
    fields.update(overrides)
    return TargetSpec(**fields)  # type: ignore[arg-type]


def make_sampler(
    num_items: int, counts: np.ndarray | None = None, mode: str = "uniform", alpha: float = 0.75
) -> NegativeSampler:
    """A sampler over ids 0..num_items-1 whose category of item i is 1000 + i."""
    if counts is None:
        counts = np.ones(num_items, dtype=np.int64)
    return NegativeSampler(counts, np.arange(num_items, dtype=np.int64) + 1000, mode, alpha)


def by_split(samples: list[UserSample]) -> dict[str, UserSample]:
    """Samples keyed by split (asserting one per split)."""
    out = {s.split: s for s in samples}
    assert len(out) == len(samples)
    return out


def assert_targets(
    sample: UserSample, items: list[int], labels: list[float], hist_len: list[int], ts: list[int]
) -> None:
    """Exact target arrays of a sample."""
    t = sample.targets
    np.testing.assert_array_equal(t["target_item"], items)
    np.testing.assert_array_equal(t["target_label"], np.asarray(labels, dtype=np.float32))
    np.testing.assert_array_equal(t["target_hist_len"], hist_len)
    np.testing.assert_array_equal(t["target_ts"], ts)


# --- time split -------------------------------------------------------------------------------


def test_time_split_boundaries_are_inclusive_at_valid_and_test_start() -> None:
    ts = [10, VALID_START - 1, VALID_START, TEST_START - 1, TEST_START, TEST_START + 500]
    events = make_events([10, 11, 12, 13, 14, 15], ts)

    samples, stats = build_user_samples("u", events, make_spec(), None)

    split = by_split(samples)
    assert list(split) == ["train", "valid", "test"]
    assert_targets(split["train"], [10, 11], [1, 1], [0, 1], [10, VALID_START - 1])
    assert_targets(split["valid"], [12, 13], [1, 1], [2, 3], [VALID_START, TEST_START - 1])
    assert_targets(split["test"], [14, 15], [1, 1], [4, 5], [TEST_START, TEST_START + 500])
    np.testing.assert_array_equal(split["valid"].targets["target_category"], [112, 113])
    assert stats.targets == {"train": 2, "valid": 2, "test": 2}
    assert stats.positives == {"train": 2, "valid": 2, "test": 2}
    assert stats.negatives == {"train": 0, "valid": 0, "test": 0}
    for sample in samples:
        assert sample.user == "u"
        validate_sample(sample)


def test_time_split_skips_splits_without_targets() -> None:
    events = make_events([10, 11, 12], [1, 2, TEST_START])

    samples, _ = build_user_samples("u", events, make_spec(), None)

    assert [s.split for s in samples] == ["train", "test"]


def test_non_positive_events_are_history_but_not_targets() -> None:
    events = make_events([10, 11, 12, 13], [1, 2, 3, 4], behavior=[VIEW, CLICK, VIEW, CLICK])

    (train,), _ = build_user_samples("u", events, make_spec(), None)

    assert_targets(train, [11, 13], [1, 1], [1, 3], [2, 4])
    np.testing.assert_array_equal(train.history["item"], [10, 11, 12])
    np.testing.assert_array_equal(train.history["behavior"], [VIEW, CLICK, VIEW])


# --- no-leak invariant ------------------------------------------------------------------------


def test_equal_timestamps_are_ordered_by_position_and_never_include_the_target() -> None:
    events = make_events([20, 21, 22, 23, 24], [5, 5, 5, 7, 7])

    (train,), _ = build_user_samples("u", events, make_spec(), None)

    assert_targets(train, [20, 21, 22, 23, 24], [1] * 5, [0, 1, 2, 3, 4], [5, 5, 5, 7, 7])
    item = train.history["item"]
    # Target 22 (position 2) shares ts 5 with 20 and 21: those earlier rows are in its history...
    assert list(item[: train.targets["target_hist_len"][2]]) == [20, 21]
    # ...and no target's own event is in its own history.
    for j, target in enumerate(train.targets["target_item"]):
        assert target not in item[: train.targets["target_hist_len"][j]]


def _random_user(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """A user with unique item ids, many equal timestamps and a mix of behaviors."""
    ts = np.sort(rng.integers(VALID_START - 20, TEST_START + 20, size=n))
    behavior = rng.choice([VIEW, CLICK, IMPRESSION], size=n, p=[0.3, 0.5, 0.2])
    return make_events(list(range(10, 10 + n)), ts.tolist(), behavior=behavior.tolist())


@pytest.mark.parametrize("negative_mode", ["none", "sampled", "impressions"])
def test_history_of_every_target_is_strictly_earlier_in_user_order(negative_mode: str) -> None:
    rng = np.random.default_rng(7)
    sampler = make_sampler(400)
    spec = make_spec(
        impression_behavior_id=IMPRESSION,
        negative_mode=negative_mode,
        negatives_per_positive=2 if negative_mode == "sampled" else 0,
    )
    checked = 0
    for u in range(20):
        events = _random_user(rng, 60)
        position = {int(item): p for p, item in enumerate(events["item"])}
        samples, _ = build_user_samples(f"user{u}", events, spec, sampler)
        for sample in samples:
            validate_sample(sample)
            assert IMPRESSION not in sample.history["behavior"]
            t = sample.targets
            logged = np.isin(t["target_item"], events["item"])  # not a sampled negative
            for j in np.flatnonzero(logged):
                target_pos = position[int(t["target_item"][j])]
                hist = sample.history["item"][: t["target_hist_len"][j]]
                assert all(position[int(h)] < target_pos for h in hist)
                assert t["target_ts"][j] == events["ts"][target_pos]
                checked += 1
    assert checked > 200


# --- leave-one-out ----------------------------------------------------------------------------


def test_leave_one_out_assigns_last_two_positives_to_test_and_valid() -> None:
    spec = make_spec(split="leave_one_out", valid_start=None, test_start=None)
    events = make_events([10, 11, 12, 13, 14, 15], [1, 2, 3, 3, 4, 4])

    samples, stats = build_user_samples("u", events, spec, None)

    split = by_split(samples)
    assert_targets(split["train"], [11, 12, 13], [1, 1, 1], [1, 2, 3], [2, 3, 3])
    assert_targets(split["valid"], [14], [1], [4], [4])
    assert_targets(split["test"], [15], [1], [5], [4])
    np.testing.assert_array_equal(split["test"].history["item"], [10, 11, 12, 13, 14])
    assert stats.targets == {"train": 3, "valid": 1, "test": 1}


def test_leave_one_out_ignores_non_positive_events_when_picking_valid_and_test() -> None:
    spec = make_spec(split="leave_one_out", valid_start=None, test_start=None)
    events = make_events(
        [10, 11, 12, 13, 14, 15],
        [1, 2, 3, 4, 5, 6],
        behavior=[CLICK, CLICK, VIEW, CLICK, CLICK, VIEW],
    )

    split = by_split(build_user_samples("u", events, spec, None)[0])

    assert_targets(split["train"], [11], [1], [1], [2])
    assert_targets(split["valid"], [13], [1], [3], [4])
    assert_targets(split["test"], [14], [1], [4], [5])


def test_leave_one_out_with_two_events_gives_only_a_test_target() -> None:
    spec = make_spec(split="leave_one_out", valid_start=None, test_start=None)

    samples, stats = build_user_samples("u", make_events([10, 11], [1, 2]), spec, None)

    (test,) = samples
    assert test.split == "test"
    assert_targets(test, [11], [1], [1], [2])
    np.testing.assert_array_equal(test.history["item"], [10])
    assert stats.targets == {"train": 0, "valid": 0, "test": 1}


def test_leave_one_out_with_one_event_gives_no_samples() -> None:
    spec = make_spec(split="leave_one_out", valid_start=None, test_start=None)

    samples, stats = build_user_samples("u", make_events([10], [1]), spec, None)

    assert samples == []
    assert stats == UserTargetStats()


# --- sampled negatives ------------------------------------------------------------------------


def _sampled_user(
    k: int, num_items: int = 12, seed: int = 0
) -> tuple[dict[str, np.ndarray], list[UserSample], UserTargetStats, NegativeSampler]:
    """40 clicks over items 2..6 in a catalog of `num_items`, all in train, k negatives each."""
    items = [2 + i % 5 for i in range(40)]
    events = make_events(items, list(range(1, 41)))
    sampler = make_sampler(num_items)
    spec = make_spec(negative_mode="sampled", negatives_per_positive=k, seed=seed)
    samples, stats = build_user_samples("u", events, spec, sampler)
    return events, samples, stats, sampler


def test_sampled_negatives_follow_their_positive_with_same_ts_and_history() -> None:
    k = 3
    events, (train,), stats, _ = _sampled_user(k)

    t = train.targets
    assert t["target_item"].size == 40 * (k + 1)
    rows = {name: a.reshape(40, k + 1) for name, a in t.items()}
    np.testing.assert_array_equal(rows["target_label"], np.tile([1, 0, 0, 0], (40, 1)))
    np.testing.assert_array_equal(rows["target_item"][:, 0], events["item"])
    np.testing.assert_array_equal(rows["target_ts"], np.repeat(events["ts"][:, None], k + 1, 1))
    np.testing.assert_array_equal(
        rows["target_hist_len"], np.repeat(np.arange(40)[:, None], k + 1, 1)
    )
    assert stats.positives["train"] == 40
    assert stats.negatives["train"] == 40 * k
    assert stats.negatives_short == 0
    validate_sample(train)


def test_sampled_negatives_avoid_every_item_the_user_interacted_with() -> None:
    events, (train,), _, _ = _sampled_user(3)

    labels, items = train.targets["target_label"], train.targets["target_item"]
    negatives = items[labels == 0]
    # The user saw half of the drawable catalog (2..11), so most first draws collide.
    assert not np.isin(negatives, events["item"]).any()
    assert set(negatives.tolist()) <= set(range(7, 12))
    assert len(set(negatives.tolist())) > 1


def test_sampled_negative_category_comes_from_the_sampler_table() -> None:
    events, (train,), _, sampler = _sampled_user(2)

    t = train.targets
    neg = t["target_label"] == 0
    np.testing.assert_array_equal(t["target_category"][neg], t["target_item"][neg] + 1000)
    np.testing.assert_array_equal(t["target_category"][~neg], events["category"])
    np.testing.assert_array_equal(
        sampler.item_category[t["target_item"][neg]], t["target_category"][neg]
    )


def test_sampled_negatives_fill_the_rest_of_a_nearly_exhausted_catalog() -> None:
    # Catalog ids 2..7; the user saw 2..6, so item 7 is the only possible negative.
    events, (train,), stats, _ = _sampled_user(2, num_items=8)

    t = train.targets
    np.testing.assert_array_equal(t["target_item"][t["target_label"] == 0], [7] * 80)
    assert stats.negatives_short == 0


def test_sampled_negatives_short_when_user_saw_the_whole_catalog() -> None:
    k = 2
    events, (train,), stats, _ = _sampled_user(k, num_items=7)  # catalog 2..6 == all seen

    assert stats.negatives_short == 40 * k
    assert stats.negatives["train"] == 0
    np.testing.assert_array_equal(train.targets["target_item"], events["item"])
    np.testing.assert_array_equal(train.targets["target_label"], np.ones(40, np.float32))
    assert (train.targets["target_item"] >= 0).all()
    assert (train.targets["target_category"] >= 0).all()
    validate_sample(train)


def test_sampled_mode_without_sampler_raises() -> None:
    spec = make_spec(negative_mode="sampled", negatives_per_positive=1)
    with pytest.raises(ValueError, match="NegativeSampler"):
        build_user_samples("u", make_events([10], [1]), spec, None)


def test_sampler_never_draws_padding_or_oov_ids() -> None:
    counts = np.array([10**6, 10**6, 1, 1, 1], dtype=np.int64)
    for mode in ("uniform", "popularity"):
        sampler = make_sampler(5, counts, mode=mode)
        drawn = sampler.sample(np.random.default_rng(0), 5000, np.array([3], dtype=np.int64))
        assert set(drawn.tolist()) == {2, 4}, mode


def test_popularity_sampling_prefers_popular_items() -> None:
    counts = np.array([0, 0, 1000] + [1] * 9, dtype=np.int64)  # item 2 is ~99% of all events
    exclude = np.array([11], dtype=np.int64)
    rng = np.random.default_rng(123)

    popular = make_sampler(12, counts, mode="popularity", alpha=1.0).sample(rng, 20_000, exclude)
    uniform = make_sampler(12, counts, mode="uniform").sample(rng, 20_000, exclude)

    assert np.mean(popular == 2) == pytest.approx(1000 / 1008, abs=0.01)
    assert np.mean(uniform == 2) == pytest.approx(1 / 9, abs=0.01)
    assert not np.isin(popular, [0, 1, 11]).any()


def test_popularity_alpha_flattens_the_distribution() -> None:
    counts = np.array([0, 0, 900, 100], dtype=np.int64)
    rng = np.random.default_rng(5)
    exclude = np.array([0], dtype=np.int64)

    drawn = make_sampler(4, counts, mode="popularity", alpha=0.5).sample(rng, 20_000, exclude)

    assert np.mean(drawn == 2) == pytest.approx(30 / 40, abs=0.01)  # sqrt(900) : sqrt(100)


def test_sampler_with_empty_exclusion_set() -> None:
    drawn = make_sampler(6).sample(np.random.default_rng(0), 100, np.array([], dtype=np.int64))

    assert set(drawn.tolist()) == {2, 3, 4, 5}


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="differ"):
        NegativeSampler(np.ones(4, np.int64), np.ones(5, np.int64))
    with pytest.raises(ValueError, match="'zipf'"):
        NegativeSampler(np.ones(4, np.int64), np.ones(4, np.int64), mode="zipf")


# --- logged impressions -----------------------------------------------------------------------


def test_impressions_are_targets_but_never_history() -> None:
    spec = make_spec(impression_behavior_id=IMPRESSION, negative_mode="impressions")
    events = make_events(
        items=[10, 11, 12, 12, 13, 14, 15, 14],
        ts=[1, 2, 3, 4, 5, 6, 7, 8],
        behavior=[VIEW, IMPRESSION, CLICK, IMPRESSION, IMPRESSION, IMPRESSION, VIEW, CLICK],
    )

    (train,), stats = build_user_samples("u", events, spec, None)

    # 11 and 13: impressions of never-positive items → negatives. 12 (clicked before) and
    # 14 (clicked later) are impressions of positive items → not targets.
    assert_targets(train, [11, 12, 13, 14], [0, 1, 0, 1], [1, 1, 2, 3], [2, 3, 5, 8])
    np.testing.assert_array_equal(train.targets["target_category"], [111, 112, 113, 114])
    np.testing.assert_array_equal(train.history["item"], [10, 12, 15])
    np.testing.assert_array_equal(train.history["ts"], [1, 3, 7])
    assert IMPRESSION not in train.history["behavior"]
    assert stats.negatives["train"] == 2
    assert stats.positives["train"] == 2


def test_impressions_are_dropped_in_sampled_mode() -> None:
    spec = make_spec(
        impression_behavior_id=IMPRESSION, negative_mode="sampled", negatives_per_positive=1
    )
    events = make_events([10, 11, 12], [1, 2, 3], behavior=[CLICK, IMPRESSION, CLICK])

    (train,), _ = build_user_samples("u", events, spec, make_sampler(50))

    labels, items = train.targets["target_label"], train.targets["target_item"]
    np.testing.assert_array_equal(items[labels == 1], [10, 12])
    np.testing.assert_array_equal(train.targets["target_hist_len"], [0, 0, 1, 1])
    assert not np.isin(items[labels == 0], [10, 11, 12]).any()  # the impressed item is excluded
    np.testing.assert_array_equal(train.history["item"], [10])


# --- max_targets_per_user ---------------------------------------------------------------------


def _many_targets_user() -> dict[str, np.ndarray]:
    """30 train, 10 valid and 10 test clicks."""
    ts = (
        list(range(1, 31))
        + list(range(VALID_START, VALID_START + 10))
        + list(range(TEST_START, TEST_START + 10))
    )
    return make_events(list(range(10, 60)), ts)


def _capped(seed: int, user: str = "u", cap: int = 5, k: int = 0) -> dict[str, UserSample]:
    spec = make_spec(
        max_targets_per_user=cap,
        seed=seed,
        negative_mode="sampled" if k else "none",
        negatives_per_positive=k,
    )
    return by_split(build_user_samples(user, _many_targets_user(), spec, make_sampler(200))[0])


def test_max_targets_per_user_caps_each_split() -> None:
    events = _many_targets_user()
    split = _capped(seed=0)

    for sample in split.values():
        t = sample.targets
        assert t["target_item"].size == 5
        assert (np.diff(t["target_ts"]) > 0).all()  # kept in user order
        # Each kept target keeps its own history cut: position of its event.
        np.testing.assert_array_equal(t["target_hist_len"], t["target_item"] - 10)
        assert set(t["target_item"].tolist()) <= set(events["item"].tolist())
        assert sample.history["item"].size == t["target_hist_len"].max()


def test_max_targets_per_user_adds_negatives_per_kept_positive() -> None:
    train = _capped(seed=0, k=2)["train"]

    assert train.targets["target_item"].size == 5 * 3
    assert (train.targets["target_label"] == 1).sum() == 5


def test_max_targets_per_user_is_deterministic_and_depends_on_seed_and_user() -> None:
    def picks(seed: int, user: str = "u") -> list[int]:
        return _capped(seed, user)["train"].targets["target_item"].tolist()

    assert picks(0) == picks(0)
    assert picks(0) != picks(1)
    assert picks(0, "u") != picks(0, "v")


def test_max_targets_per_user_larger_than_targets_keeps_all() -> None:
    split = _capped(seed=0, cap=30)

    assert split["train"].targets["target_item"].size == 30
    assert split["valid"].targets["target_item"].size == 10


# --- determinism, seeds -----------------------------------------------------------------------


def test_same_inputs_give_identical_arrays() -> None:
    def run() -> list[UserSample]:
        spec = make_spec(negative_mode="sampled", negatives_per_positive=4, seed=3)
        events = make_events(list(range(10, 60)), list(range(0, 2500, 50)), value=[0.5] * 50)
        return build_user_samples("alice", events, spec, make_sampler(500))[0]

    first, second = run(), run()
    assert [s.split for s in first] == [s.split for s in second] == ["train", "valid", "test"]
    for a, b in zip(first, second, strict=True):
        assert a.history.keys() == b.history.keys()
        assert a.targets.keys() == b.targets.keys()
        for name in a.history:
            np.testing.assert_array_equal(a.history[name], b.history[name])
            assert a.history[name].dtype == b.history[name].dtype
        for name in a.targets:
            np.testing.assert_array_equal(a.targets[name], b.targets[name])


def test_negatives_change_with_seed() -> None:
    def negatives(seed: int) -> list[int]:
        _, (train,), _, _ = _sampled_user(2, num_items=1000, seed=seed)
        return train.targets["target_item"][train.targets["target_label"] == 0].tolist()

    assert negatives(0) == negatives(0)
    assert negatives(0) != negatives(1)


def test_user_seed_is_stable_and_user_specific() -> None:
    assert user_seed("u1") == 6729809261511164253
    assert user_seed("alice") == 6305047449316846613
    assert user_seed("u1") != user_seed("u2")
    assert 0 <= user_seed("") < 2**63


# --- min_history and stored history --------------------------------------------------------


def test_min_history_drops_targets_with_too_short_history() -> None:
    events = make_events([10, 11, 12, 13, 14], [1, 2, 3, 4, 5])

    (train,), _ = build_user_samples("u", events, make_spec(min_history=3), None)

    assert_targets(train, [13, 14], [1, 1], [3, 4], [4, 5])


def test_min_history_counts_history_events_not_impressions() -> None:
    spec = make_spec(impression_behavior_id=IMPRESSION, negative_mode="impressions", min_history=2)
    events = make_events(
        [10, 11, 12, 13, 14],
        [1, 2, 3, 4, 5],
        behavior=[IMPRESSION, IMPRESSION, VIEW, IMPRESSION, CLICK],
    )

    samples, _ = build_user_samples("u", events, spec, None)

    assert samples == []  # 13 and 14 have a single history event (12) before them


def test_stored_history_is_truncated_to_largest_hist_len_of_the_split() -> None:
    events = make_events(
        [10, 11, 12, 13, 14, 15],
        [1, 2, 3, VALID_START, VALID_START + 1, VALID_START + 2],
        behavior=[CLICK, VIEW, CLICK, VIEW, CLICK, VIEW],
        value=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    )

    split = by_split(build_user_samples("u", events, make_spec(), None)[0])

    train, valid = split["train"], split["valid"]
    np.testing.assert_array_equal(train.targets["target_hist_len"], [0, 2])
    np.testing.assert_array_equal(train.history["item"], [10, 11])
    np.testing.assert_array_equal(valid.targets["target_hist_len"], [4])
    np.testing.assert_array_equal(valid.history["item"], [10, 11, 12, 13])
    for sample in (train, valid):
        length = sample.history["item"].size
        assert {name: a.size for name, a in sample.history.items()} == dict.fromkeys(
            ["item", "category", "behavior", "ts", "value"], length
        )
        assert sample.history["value"].dtype == np.float32
    np.testing.assert_array_equal(valid.history["value"], [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize("split", ["time", "leave_one_out"])
def test_an_increments_targets_are_the_full_targets_of_its_new_events(split: str) -> None:
    """`new_events`: only targets of the added events, each equal to the full build's (splits,
    negatives and the `max_targets_per_user` cap are decided over the whole history)."""
    from lifeseq.pipeline.targets import build_user_record

    items = list(range(10, 30))
    ts = [100 * i for i in range(1, 21)]
    events = make_events(items, ts, behavior=[CLICK, VIEW] * 10)
    spec = make_spec(
        split=split, negative_mode="sampled", negatives_per_positive=2, max_targets_per_user=4
    )
    new_events = np.zeros(20, dtype=bool)
    new_events[14:] = True

    full, full_stats = build_user_record("alice", events, spec, make_sampler(500))
    part, part_stats = build_user_record("alice", events, spec, make_sampler(500), new_events)

    positions = np.searchsorted(events["ts"], full.targets["target_ts"])
    keep = new_events[positions]
    assert 0 < keep.sum() < keep.size
    for name, values in part.targets.items():
        np.testing.assert_array_equal(values, full.targets[name][keep], err_msg=name)
    assert sum(part_stats.targets.values()) == int(keep.sum())
    assert part.history["item"].shape[0] == int(part.targets["target_hist_len"].max())
