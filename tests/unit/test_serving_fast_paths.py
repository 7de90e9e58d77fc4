"""Serving's fast paths give what the plain ones give: DIN's shared-window pooling equals its
per-pair form, a request's one top-k equals the chunked scan, and the integer vocabulary lookup
equals the dict lookup."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lifeseq.models.blocks.target_attention import DinAttention
from lifeseq.models.blocks.windows import TargetWindows, chunked_topk
from lifeseq.serving.scorer import (
    SMALL_VOCAB,
    NumericIndex,
    RequestError,
    Vocab,
    canonical_integers,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("targets", "events"), [(7, 11), (1, 1), (30, 100)])
def test_din_shared_window_equals_the_per_pair_form(targets: int, events: int) -> None:
    torch.manual_seed(targets)
    key_dim, d = 32, 16
    din = DinAttention(key_dim, 3 * d, hidden=(64, 32)).eval()
    query, keys = torch.randn(targets, key_dim), torch.randn(events, key_dim)
    side, table = torch.randn(events, 2 * d), torch.randn(2, d)
    same, valid = torch.rand(targets, events) > 0.5, torch.rand(events) > 0.2
    pair_side = torch.cat([side.expand(targets, -1, -1), table[same.long()]], dim=-1)
    expected = din(query, keys.expand(targets, -1, -1), pair_side, valid.expand(targets, -1))
    got = din.forward_shared(query, keys, side, same, table, valid)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("events", [0, 1, 5, 8, 9, 300])
def test_a_requests_one_top_k_equals_the_chunked_scan(events: int) -> None:
    """`windows.whole` (a request) takes `whole_window_topk`: same indices and scores as the
    chunk-by-chunk merge, with -1 / -inf where the history is shorter than k."""
    k, targets = 8, 6
    scores = torch.randn(targets, events, generator=torch.Generator().manual_seed(events))
    whole = TargetWindows.whole_history(targets, events, torch.device("cpu"))
    scanned = TargetWindows(whole.lo, whole.hi, events)  # the same windows, chunk by chunk

    def score(step):  # noqa: ANN001, ANN202
        return scores[step.rows][:, step.events]

    index, top = chunked_topk(score, whole, k, chunk=4)
    expected_index, expected_top = chunked_topk(score, scanned, k, chunk=4)
    assert index.shape == (targets, k)
    assert torch.equal(index, expected_index) and torch.equal(top, expected_top)
    assert int((index >= 0).sum(dim=1).min()) == min(k, events)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["1", "22", "-3", "0", "9223372036854775807"], [1, 22, -3, 0, 9223372036854775807]),
        (["007"], None), (["+7"], None), (["-0"], None), ([" 3"], None), (["1e3"], None),
        ([""], None), (["i17"], None), (["99999999999999999999"], None),
        (["-9223372036854775808"], None),
    ],
)  # fmt: skip
def test_canonical_integers_only_for_what_str_int_writes(raw, expected) -> None:
    got = canonical_integers(raw)
    assert (got is None and expected is None) or got.tolist() == expected


def _vocab(tmp_path: Path, raw_ids: list[str]) -> Vocab:
    path = tmp_path / "item.parquet"
    ids = list(range(2, 2 + len(raw_ids)))
    pq.write_table(pa.table({"raw_id": raw_ids, "id": ids}), path)
    return Vocab(path)


@pytest.mark.parametrize(
    "raw_ids",
    [
        [str(i) for i in range(0, 3000, 3)],  # compact: a dense table
        [str(i * 10**12) for i in range(-50, 50)],  # negative and sparse: binary search
        ["a", "7", "b"],  # not all integers, a small vocabulary: Arrow's index_in
        [f"i{i}" for i in range(SMALL_VOCAB + 1)],  # too many for index_in: the dict
    ],
)
def test_integer_lookup_equals_the_dict_lookup(tmp_path: Path, raw_ids: list[str]) -> None:
    vocab = _vocab(tmp_path, raw_ids)
    assert (vocab.numeric is None) == (not all(r.lstrip("-").isdigit() for r in raw_ids))
    assert (vocab.small is not None) == (vocab.numeric is None and len(raw_ids) <= SMALL_VOCAB)
    rng = np.random.default_rng(0)
    requests = [
        list(rng.choice(raw_ids, 500)),  # all known
        [str(int(x)) for x in rng.integers(-(10**13), 10**13, 500)] + raw_ids[:3],  # unknown
        ["007", raw_ids[1], "x", "-0"],  # not canonical: the dict
        [],
    ]
    for request in requests:
        expected = np.fromiter(map(vocab.ids.get, request, itertools.repeat(1)), np.int64)
        for ids, oov in (vocab.lookup(request), vocab.lookup_field("f", request)):
            np.testing.assert_array_equal(ids, expected)
            assert oov == int((expected == 1).sum())


@pytest.mark.parametrize(
    "raw_ids",
    [["3", "7", "11"], ["a", "7", "b"], ["a", "7", *(f"i{i}" for i in range(SMALL_VOCAB))]],
)
def test_a_fields_integer_ids_stand_for_their_decimal_strings(tmp_path, raw_ids) -> None:
    """Numeric, small and large vocabularies: `7`, `"7"` and `np.int64(7)` are one id."""
    vocab = _vocab(tmp_path, raw_ids)
    ids, oov = vocab.lookup_field("history_items", [7, "7", np.int64(7), 8, "a", 10**30])
    assert ids.tolist() == [vocab.ids["7"]] * 3 + [1, vocab.ids.get("a", 1), 1]
    assert oov == 2 + ("a" not in vocab.ids)


@pytest.mark.parametrize(
    ("value", "message"),
    [("7", "expected a list, got str"), (["7", None], r"\[1\]: expected a string or integer"),
     (["7", 1.5], r"\[1\]: expected a string or integer"), ([True], r"\[0\]: expected"),
     (["7", b"7"], r"\[1\]: expected a string or integer id, got b'7'")],
)  # fmt: skip
def test_a_fields_bad_ids_are_named_on_every_path(tmp_path, value, message) -> None:
    for raw_ids in (["3", "7"], ["a", "7"], [f"i{i}" for i in range(SMALL_VOCAB + 1)]):
        with pytest.raises(RequestError, match=message):
            _vocab(tmp_path, raw_ids).lookup_field("history_items", value)


def test_numeric_index_refuses_nothing_and_finds_nothing_in_an_empty_vocab() -> None:
    empty = NumericIndex(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert empty.find(np.array([0, 5, -1])).tolist() == [1, 1, 1]
