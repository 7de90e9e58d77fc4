"""Tests of the user-grouped jagged batches (`features.batch`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifeseq.features.batch import CtrBatch, GenerativeBatch, collate_ctr, collate_generative
from lifeseq.features.jagged import Jagged
from lifeseq.pipeline.sample_codec import UserSample

pytestmark = pytest.mark.unit


def sample(
    user: str,
    length: int,
    hist_len: list[int],
    labels: list[float] | None = None,
    stored: int | None = None,
    value: bool = False,
) -> UserSample:
    """`stored` events (default `length`) with items 100 * k + i, ts 10 * i; one target per
    entry of `hist_len`, its item 9000 + j."""
    n = length if stored is None else stored
    k = int(user[1:])
    history = {
        "item": 100 * k + np.arange(n, dtype=np.int64),
        "category": np.full(n, k, dtype=np.int64),
        "behavior": np.arange(n, dtype=np.int64) % 3 + 2,
        "ts": 10 * np.arange(n, dtype=np.int64),
    }
    if value:
        history["value"] = np.arange(n, dtype=np.float32)
    t = len(hist_len)
    targets = {
        "target_item": 9000 + np.arange(t, dtype=np.int64),
        "target_category": np.full(t, 5, dtype=np.int64),
        "target_ts": 10 * np.asarray(hist_len, dtype=np.int64),
        "target_label": np.asarray(labels or [1.0] * t, dtype=np.float32),
        "target_hist_len": np.asarray(hist_len, dtype=np.int64),
    }
    return UserSample(user=user, split="train", history=history, targets=targets)


def rows(jagged: Jagged) -> list[list]:
    return [r.tolist() for r in torch.split(jagged.values, jagged.lengths.tolist())]


# --- CTR -----------------------------------------------------------------------------------------


def test_ctr_history_is_stored_once_per_user() -> None:
    a = sample("u1", 10, [3, 7, 10], labels=[1.0, 0.0, 1.0])
    b = sample("u2", 5, [5, 5], labels=[1.0, 0.0])

    batch = collate_ctr([a, b], max_history=100)

    assert batch.num_users == 2 and batch.num_targets == 5
    assert batch.history["item"].lengths.tolist() == [10, 5]
    assert batch.history["item"].values.shape == (15,)  # not 5 targets x history
    assert rows(batch.history["item"]) == [list(range(100, 110)), list(range(200, 205))]
    assert rows(batch.history["ts"])[1] == [0, 10, 20, 30, 40]
    assert batch.target_user.tolist() == [0, 0, 0, 1, 1]
    assert batch.target_hist_len.tolist() == [3, 7, 10, 5, 5]
    assert batch.target_item.tolist() == [9000, 9001, 9002, 9000, 9001]
    assert batch.label.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0] and batch.label.dtype == torch.float32
    assert batch.history_start.tolist() == [0, 0]
    assert batch.users == ["u1", "u2"] and batch.weight == 1.0 and not batch.is_padding
    assert set(batch.history) == {"item", "category", "behavior", "ts"}
    assert all(j.values.dtype == torch.int64 for j in batch.history.values())


def test_ctr_cap_keeps_the_most_recent_events_of_each_targets_prefix() -> None:
    a = sample("u1", 10, [3, 7, 10])
    b = sample("u2", 5, [5, 5])

    batch = collate_ctr([a, b], max_history=4)

    # rows cover every target's window: u1 from event 0 (prefix 3), u2 from event 1
    assert rows(batch.history["item"]) == [list(range(100, 110)), [201, 202, 203, 204]]
    assert batch.history_start.tolist() == [0, 1]
    assert batch.target_hist_start.tolist() == [0, 3, 6, 0, 0]
    assert batch.target_hist_len.tolist() == [3, 7, 10, 4, 4]
    offsets = batch.history["item"].offsets
    for j in range(batch.num_targets):
        u = int(batch.target_user[j])
        lo, hi = int(batch.target_hist_start[j]), int(batch.target_hist_len[j])
        seen = batch.history["item"].values[offsets[u] + lo : offsets[u] + hi].tolist()
        prefix = [a, b][u].history["item"][: [a, b][u].targets["target_hist_len"][j - 3 * u]]
        assert seen == prefix[-4:].tolist()  # the most recent min(4, len) events of its prefix


def test_ctr_row_ends_at_the_largest_target_prefix() -> None:
    s = sample("u3", 0, [4, 6], stored=10)  # stored history longer than any target's prefix

    batch = collate_ctr([s], max_history=3)

    assert rows(batch.history["item"]) == [[301, 302, 303, 304, 305]]
    assert batch.history_start.tolist() == [1]
    assert batch.target_hist_len.tolist() == [3, 5]
    assert batch.target_hist_start.tolist() == [0, 2]


def test_ctr_value_member_and_mismatch() -> None:
    batch = collate_ctr([sample("u1", 4, [4], value=True)], max_history=2)
    assert rows(batch.history["value"]) == [[2.0, 3.0]]
    assert batch.history["value"].values.dtype == torch.float32

    with pytest.raises(ValueError, match="'u2'.*'value'"):
        collate_ctr([sample("u1", 4, [4], value=True), sample("u2", 4, [4])], max_history=2)


def test_ctr_rejects_prefix_longer_than_history_and_bad_cap() -> None:
    with pytest.raises(ValueError, match="'u1'.*target_hist_len 9 exceeds"):
        collate_ctr([sample("u1", 0, [9], stored=4)], max_history=10)
    with pytest.raises(ValueError, match="must be >= 1"):
        collate_ctr([sample("u1", 4, [4])], max_history=0)


def test_user_with_empty_history_has_an_empty_row() -> None:
    batch = collate_ctr([sample("u1", 0, [0]), sample("u2", 2, [2])], max_history=5)

    assert batch.history["item"].lengths.tolist() == [0, 2]
    assert batch.target_user.tolist() == [0, 1] and batch.target_hist_len.tolist() == [0, 2]


# --- generative ----------------------------------------------------------------------------------


def test_generative_caps_sequence_and_adjusts_targets() -> None:
    a = sample("u1", 10, [7, 10], labels=[1.0, 1.0])  # leave-one-out-like: last target follows
    b = sample("u2", 2, [2], labels=[1.0])

    batch = collate_generative([a, b], max_len=3)

    assert isinstance(batch, GenerativeBatch)
    assert rows(batch.sequence["item"]) == [[107, 108, 109], [200, 201]]
    assert rows(batch.sequence["ts"]) == [[70, 80, 90], [0, 10]]
    assert batch.sequence_start.tolist() == [7, 0]
    assert rows(batch.dropped_items) == [list(range(100, 107)), []]
    training = collate_generative([a, b], max_len=3, dropped_items=False)
    assert rows(training.dropped_items) == [[], []]
    assert rows(training.sequence["item"]) == rows(batch.sequence["item"])
    assert batch.target_hist_len.tolist() == [0, 3, 2]
    assert batch.target_user.tolist() == [0, 0, 1]
    assert batch.target_ts.tolist() == [70, 100, 20]
    # autoregressive labels: next item in the row, then the positive target that follows it
    assert rows(batch.next_item()) == [[108, 109, 9001], [201, 9000]]


def test_generative_row_is_the_whole_stored_sequence() -> None:
    s = sample("u3", 0, [4, 6], labels=[1.0, 0.0], stored=8)

    batch = collate_generative([s], max_len=100)

    assert batch.sequence["item"].lengths.tolist() == [8]
    assert batch.target_hist_len.tolist() == [4, 6]
    # no positive target follows the row: the last position has no label (0)
    assert rows(batch.next_item()) == [[301, 302, 303, 304, 305, 306, 307, 0]]


def test_next_item_ignores_negative_targets_and_empty_rows() -> None:
    a = sample("u1", 3, [3, 3], labels=[0.0, 1.0])
    empty = sample("u2", 0, [0], labels=[1.0])

    batch = collate_generative([empty, a], max_len=5)

    assert rows(batch.next_item()) == [[], [101, 102, 9001]]


# --- padding, devices ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CtrBatch, GenerativeBatch])
def test_padding_batch_is_empty_with_weight_zero(cls: type) -> None:
    batch = cls.empty(with_value=True)

    assert batch.weight == 0.0 and batch.is_padding
    assert batch.num_users == 0 and batch.num_targets == 0
    jagged = batch.history if cls is CtrBatch else batch.sequence
    assert set(jagged) == {"item", "category", "behavior", "ts", "value"}
    assert all(j.values.numel() == 0 and j.lengths.numel() == 0 for j in jagged.values())


def test_empty_sample_list_collates_to_padding() -> None:
    assert collate_ctr([], max_history=5).is_padding
    assert collate_generative([], max_len=5).is_padding
    assert collate_generative([], max_len=5).next_item().values.numel() == 0


def _tensors(batch: object) -> list[torch.Tensor]:
    out = []
    for value in vars(batch).values():
        items = value.values() if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, Jagged):
                out += [item.values, item.lengths]
            elif isinstance(item, torch.Tensor):
                out.append(item)
    return out


@pytest.mark.parametrize("view", ["ctr", "generative"])
def test_to_device_moves_every_tensor_and_keeps_host_fields(view: str) -> None:
    samples = [sample("u1", 5, [3, 5]), sample("u2", 2, [2])]
    batch = collate_ctr(samples, 4) if view == "ctr" else collate_generative(samples, 4)
    batch.loader_stats = {"samples": 2}

    moved = batch.to("meta")

    tensors = _tensors(moved)
    assert len(tensors) >= 15 and all(t.device.type == "meta" for t in tensors)
    assert moved.users == ["u1", "u2"] and moved.weight == 1.0
    assert moved.loader_stats == {"samples": 2}
    assert all(t.device.type == "cpu" for t in _tensors(batch))  # the original is unchanged


def test_pin_memory_pins_every_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: list[int] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:  # no CUDA on the test machine
        copy = self.clone()
        pinned.append(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = collate_ctr([sample("u1", 5, [3, 5])], max_history=4)

    out = batch.pin_memory()

    assert sorted(id(t) for t in _tensors(out)) == sorted(pinned)
    assert out.target_hist_len.tolist() == batch.target_hist_len.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_and_pinned_copy() -> None:
    batch = collate_generative([sample("u1", 5, [3, 5])], max_len=4)

    moved = batch.pin_memory().to("cuda", non_blocking=True)

    assert all(t.is_cuda for t in _tensors(moved))
    assert rows(moved.next_item().to("cpu")) == rows(batch.next_item())
