"""Tests of the full-ranking metrics (`trainers.ranking_metrics`): HR@K, NDCG@K, MRR.

Expected values are worked out by hand from the definitions (one relevant item per target):
hit = rank < K, NDCG = 1 / log2(rank + 2) within the cut-off, RR = 1 / (rank + 1).
"""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch

from lifeseq.trainers.ranking_metrics import RankingMetrics, ranking_metrics

pytestmark = pytest.mark.unit

RANKS = [0, 1, 9, 10, 60]
#: Hand-computed means over RANKS.
EXPECTED = {
    "hr@10": 3 / 5,  # ranks 0, 1, 9
    "ndcg@10": (1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5,
    "hr@50": 4 / 5,  # ranks 0, 1, 9, 10
    "ndcg@50": (1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12)) / 5,
    "mrr": (1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 61) / 5,
}


def as_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Python floats of a metric dict, after checking every value is a float32 scalar."""
    for name, value in metrics.items():
        assert value.shape == () and value.dtype == torch.float32, name
    return {name: value.item() for name, value in metrics.items()}


def test_ranking_metrics_hand_computed() -> None:
    got = as_floats(ranking_metrics(torch.tensor(RANKS)))
    assert list(got) == ["hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr"]
    assert got == pytest.approx(EXPECTED, rel=1e-6)


def test_ranking_metrics_custom_cutoffs_and_boundaries() -> None:
    # K = 1: only rank 0 hits. K = 2: ranks 0 and 1; rank 1 gains 1 / log2(3).
    got = as_floats(ranking_metrics(torch.tensor([0, 1, 2, 3]), ks=(2, 1)))
    assert list(got) == ["hr@2", "ndcg@2", "hr@1", "ndcg@1", "mrr"]
    assert got == pytest.approx(
        {
            "hr@2": 2 / 4,
            "ndcg@2": (1 + 1 / math.log2(3)) / 4,
            "hr@1": 1 / 4,
            "ndcg@1": 1 / 4,
            "mrr": (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4,
        },
        rel=1e-6,
    )


def test_ranking_metrics_perfect_and_empty() -> None:
    perfect = as_floats(ranking_metrics(torch.zeros(7, dtype=torch.int64)))
    assert perfect == {"hr@10": 1.0, "ndcg@10": 1.0, "hr@50": 1.0, "ndcg@50": 1.0, "mrr": 1.0}
    empty = as_floats(ranking_metrics(torch.zeros(0, dtype=torch.int64)))
    assert empty == {"hr@10": 0.0, "ndcg@10": 0.0, "hr@50": 0.0, "ndcg@50": 0.0, "mrr": 0.0}


@pytest.mark.parametrize(
    ("ranks", "ks", "match"),
    [
        (torch.tensor([[0, 1]]), (10,), r"ranks must be 1-D"),
        (torch.tensor([0.0, 1.0]), (10,), r"ranks must be integer"),
        (torch.tensor([0, -1]), (10,), r"ranks must be >= 0 .* got -1"),
        (torch.tensor([0]), (), r"ks must be a non-empty sequence"),
        (torch.tensor([0]), (10, 0), r"positive ints, got \(10, 0\)"),
        (torch.tensor([0]), (10, 2.5), r"positive ints"),
        (torch.tensor([0]), (10, 10), r"ks must be distinct, got \(10, 10\)"),
    ],
)
def test_ranking_metrics_errors(ranks: torch.Tensor, ks: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ranking_metrics(ranks, ks=ks)


def test_metric_accumulates_exactly_like_one_shot() -> None:
    gen = torch.Generator().manual_seed(0)
    ranks = torch.randint(0, 200, (1000,), generator=gen)
    metric = RankingMetrics()
    for batch in torch.split(ranks, [1, 0, 250, 333, 416]):
        metric.update(batch)
    got = as_floats(metric.compute())
    assert got.pop("count") == 1000.0
    assert got == as_floats(ranking_metrics(ranks))
    reference = {
        "hr@10": (ranks < 10).double().mean().item(),
        "ndcg@10": torch.where(ranks < 10, 1 / torch.log2(ranks.double() + 2), 0).mean().item(),
        "hr@50": (ranks < 50).double().mean().item(),
        "ndcg@50": torch.where(ranks < 50, 1 / torch.log2(ranks.double() + 2), 0).mean().item(),
        "mrr": (1 / (ranks.double() + 1)).mean().item(),
    }
    assert got == pytest.approx(reference, rel=1e-6)


def test_metric_hand_computed_over_two_updates() -> None:
    metric = RankingMetrics()
    metric.update(torch.tensor(RANKS[:2]))
    metric.update(torch.tensor(RANKS[2:]))
    got = as_floats(metric.compute())
    assert list(got) == ["hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr", "count"]
    assert got == pytest.approx({**EXPECTED, "count": 5.0}, rel=1e-6)


def test_metric_with_no_targets_is_zero_and_silent() -> None:
    zeros = {"hr@10": 0.0, "ndcg@10": 0.0, "hr@50": 0.0, "ndcg@50": 0.0, "mrr": 0.0, "count": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        never_updated = as_floats(RankingMetrics().compute())
        only_empty = RankingMetrics()
        only_empty.update(torch.zeros(0, dtype=torch.int64))
        empty = as_floats(only_empty.compute())
    assert never_updated == zeros
    assert empty == zeros


def test_metric_stays_silent_and_exact_when_copied_or_unpickled() -> None:
    metric = RankingMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for copy in (metric.clone(), pickle.loads(pickle.dumps(metric))):
            assert as_floats(copy.compute())["count"] == 0.0
            copy.update(torch.tensor(RANKS))
            assert as_floats(copy.compute()) == pytest.approx({**EXPECTED, "count": 5.0})


def test_metric_reset_and_state_reduction() -> None:
    metric = RankingMetrics(ks=(5,))
    metric.update(torch.tensor([0, 7]))
    assert as_floats(metric.compute())["hr@5"] == 0.5
    metric.reset()
    metric.update(torch.tensor([3]))
    assert as_floats(metric.compute()) == pytest.approx(
        {"hr@5": 1.0, "ndcg@5": 1 / math.log2(5), "mrr": 1 / 4, "count": 1.0}
    )
    assert set(metric._reductions) == {"hits_at_5", "ndcg_at_5", "reciprocal_rank", "count"}
    assert all(fn.__name__ == "dim_zero_sum" for fn in metric._reductions.values())


def test_metric_errors() -> None:
    with pytest.raises(ValueError, match=r"ks must be distinct"):
        RankingMetrics(ks=(10, 10))
    metric = RankingMetrics()
    with pytest.raises(ValueError, match=r"ranks must be >= 0"):
        metric.update(torch.tensor([-3]))
    with pytest.raises(ValueError, match=r"ranks must be 1-D"):
        RankingMetrics(validate_args=False).update(torch.zeros(2, 2, dtype=torch.int64))
