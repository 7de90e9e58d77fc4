"""Whole-history training windows (`features.windows`): rows, context and labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifeseq.features.batch import collate_generative
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.features.windows import TrainingWindows, window_ends, window_samples
from lifeseq.models.zoo.sequence.sasrec import SasRec
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.platform_module import EmbeddingConfig
from lifeseq.trainers.tasks.next_item import NextItemModule


def _sample(user: str, items: list[int], follower: int | None) -> UserSample:
    n = len(items)
    history = {
        "item": np.asarray(items, dtype=np.int64),
        "category": np.full(n, 2, dtype=np.int64),
        "behavior": np.full(n, 2, dtype=np.int64),
        "ts": np.arange(10, 10 + n, dtype=np.int64),
    }
    targets = {
        "target_item": np.asarray([follower] if follower else [], dtype=np.int64),
        "target_category": np.full(1 if follower else 0, 2, dtype=np.int64),
        "target_ts": np.full(1 if follower else 0, 10 + n, dtype=np.int64),
        "target_label": np.ones(1 if follower else 0, dtype=np.float32),
        "target_hist_len": np.full(1 if follower else 0, n, dtype=np.int64),
    }
    return UserSample(user, "train", history, targets)


def _supervised(samples: list[UserSample], max_len: int, context: int | None) -> list[list[int]]:
    """Per row, the (label) items of its supervised positions."""
    rows, row_context = window_samples(samples, max_len, TrainingWindows(context))
    batch = collate_generative(rows, max_len, dropped_items=False, row_context=row_context)
    labels = batch.next_item().values.masked_fill(batch.context_positions(), 0)
    out = []
    for row in torch.split(labels, batch.sequence["item"].lengths.tolist()):
        out.append([int(v) for v in row if v > 0])
    return out


def test_window_ends_tile_the_history() -> None:
    assert window_ends(7, 2) == [1, 3, 5, 7]
    assert window_ends(6, 3) == [3, 6]
    assert window_ends(0, 3) == []


def test_rows_context_and_labels() -> None:
    items = [11, 12, 13, 14, 15, 16, 17]
    rows, context = window_samples([_sample("u", items, follower=18)], 4, TrainingWindows(2))
    assert [r.history["item"].tolist()[-4:] for r in rows] == [
        [11], [11, 12, 13], [12, 13, 14, 15], [14, 15, 16, 17]
    ]  # fmt: skip
    assert context.tolist() == [0, 1, 2, 2]
    assert [r.targets["target_item"].tolist() for r in rows] == [[12], [14], [16], [18]]
    # Every event is supervised once: labels 12..18, each exactly once, in order.
    per_row = _supervised([_sample("u", items, follower=18)], 4, 2)
    assert per_row == [[12], [13, 14], [15, 16], [17, 18]]


def test_every_position_supervised_once_for_many_users() -> None:
    rng = np.random.default_rng(0)
    samples = []
    for user in range(5):
        n = int(rng.integers(1, 40))
        samples.append(_sample(f"u{user}", list(range(100, 100 + n)), follower=100 + n))
    for max_len, context in ((8, None), (8, 0), (8, 7), (50, 10)):
        per_row = _supervised(samples, max_len, context)
        got = sorted(v for row in per_row for v in row)
        expected = sorted(v for s in samples for v in range(101, 101 + len(s.history["item"])))
        assert got == expected, (max_len, context)


def test_context_is_the_previous_windows_events() -> None:
    items = list(range(20, 40))
    rows, context = window_samples([_sample("u", items, 40)], 10, TrainingWindows(6))
    assert window_ends(20, 4) == [4, 8, 12, 16, 20]
    # 4 supervised positions after up to 6 earlier events (all there are near the start).
    assert context.tolist() == [0, 4, 6, 6, 6]
    for row, ctx in zip(rows, context, strict=True):
        assert min(10, row.history["item"].shape[0]) - ctx == 4


def test_without_windows_nothing_is_context() -> None:
    batch = collate_generative([_sample("u", [3, 4, 5], 6)], 2)
    assert batch.row_context.tolist() == [0]
    assert not batch.context_positions().any()


def test_bad_context_is_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match="train_windows.context"):
        TrainingWindows(-1)
    with pytest.raises(ValueError, match="context: 8 leaves no supervised position"):
        TrainingWindows(8).stride(8)


def test_next_item_task_leaves_context_positions_unsupervised() -> None:
    schema = FeatureSchema.from_vocab(
        {"item": 40, "category": 3, "behavior": 3}, FeatureConfig(embedding_dim=8, max_len=4)
    )
    module = NextItemModule(SasRec, embedding=EmbeddingConfig(backend="torch"), schema=schema)
    module.setup_model(schema)
    items = list(range(11, 18))
    rows, context = window_samples([_sample("u", items, 18)], 4, TrainingWindows(2))
    batch = collate_generative(rows, 4, dropped_items=False, row_context=context)
    labels = module.train().rows(batch)[3]
    assert [int(v) for v in labels if v > 0] == list(range(12, 19))  # each event once
    assert labels.tolist() == [12, 0, 13, 14, 0, 0, 15, 16, 0, 0, 17, 18]
