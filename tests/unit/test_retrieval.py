"""Tests of full-ranking retrieval (`models.blocks.retrieval`): target ranks and top-k items.

References are brute force: the full (T, V) score matrix in one product, and a Python loop
over queries that builds each candidate set explicitly. Hand-made cases use 1-D embeddings,
so every score is an exact small integer and the expected ranks can be read off.
"""

from __future__ import annotations

import pytest
import torch

from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.retrieval import target_ranks, top_k_items

pytestmark = pytest.mark.unit

#: 1-D item "embeddings" = scores against the query [1.0]; ids 0 (padding) and 1 (OOV) score
#: highest but must never compete.
HAND_ITEMS = torch.tensor([[100.0], [50.0], [5.0], [4.0], [3.0], [2.0], [3.0]])  # (V=7, 1)


def full_scores(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(T, V) float32 scores in one float64 product, rounded like `models.blocks.retrieval`."""
    return (queries.double() @ items.double().T).float()


def reference_ranks(
    queries: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    exclude: list[list[int]],
    first_valid_id: int = 2,
) -> torch.Tensor:
    """Brute-force ranks: per query, count candidates scoring >= the target (ties count)."""
    scores = full_scores(queries, items)
    ranks = []
    for t, target in enumerate(targets.tolist()):
        candidates = set(range(first_valid_id, items.shape[0])) - set(exclude[t]) - {target}
        ranks.append(sum(int(scores[t, c] >= scores[t, target]) for c in candidates))
    return torch.tensor(ranks, dtype=torch.int64)


def random_history(
    num_queries: int, num_items: int, max_len: int, generator: torch.Generator
) -> list[list[int]]:
    """Per-query item id lists with repeats and padding ids (0) mixed in, some empty."""
    lengths = torch.randint(0, max_len + 1, (num_queries,), generator=generator).tolist()
    return [torch.randint(0, num_items, (n,), generator=generator).tolist() for n in lengths]


def to_jagged(rows: list[list[int]]) -> Jagged:
    """Jagged int64 ids from per-row lists."""
    return Jagged.from_list([torch.tensor(r, dtype=torch.int64) for r in rows])


# ---------------------------------------------------------------------------- target_ranks


@pytest.mark.parametrize(
    ("target", "history", "expected"),
    [
        (5, [], 4),  # score 2: items 2, 3, 4, 6 (5, 4, 3, 3) all beat it; 0 and 1 never compete
        (5, [3, 0], 3),  # item 3 excluded; padding id 0 in the history is ignored
        (4, [], 3),  # score 3: items 2, 3 beat it and item 6 ties (counts against it)
        (4, [6, 6], 2),  # the tied item excluded (twice)
        (4, [4], 3),  # the target in its own history changes nothing
        (2, [], 0),  # the best item
        (3, [2], 0),  # the only better item is in the history
    ],
)
def test_target_ranks_hand_made(target: int, history: list[int], expected: int) -> None:
    queries = torch.tensor([[1.0]])
    ranks = target_ranks(queries, HAND_ITEMS, torch.tensor([target]), to_jagged([history]))
    assert ranks.tolist() == [expected]
    assert ranks.dtype == torch.int64


def test_target_ranks_batch_of_hand_made_rows_and_negative_query() -> None:
    # Query [-1] reverses the order: scores -5, -4, -3, -2, -3 for items 2..6.
    queries = torch.tensor([[1.0], [1.0], [-1.0]])
    targets = torch.tensor([5, 4, 5])
    exclude = to_jagged([[3], [], [2, 3]])
    # Row 2: target 5 scores -2, the best of the remaining candidates 4 and 6 (-3, -3).
    assert target_ranks(queries, HAND_ITEMS, targets, exclude).tolist() == [3, 3, 0]


def test_first_valid_id_lets_low_ids_compete() -> None:
    queries = torch.tensor([[1.0]])
    # With first_valid_id=0, items 0 and 1 (100, 50) also beat target 2 (5).
    ranks = target_ranks(queries, HAND_ITEMS, torch.tensor([2]), first_valid_id=0)
    assert ranks.tolist() == [2]


@pytest.mark.parametrize("chunk", [1, 3, 4, 64])
def test_target_ranks_match_brute_force_with_ties(chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    num_queries, num_items, dim = 40, 37, 3
    # Small integer embeddings: exact scores with many ties.
    queries = torch.randint(-2, 3, (num_queries, dim), generator=gen).float()
    items = torch.randint(-2, 3, (num_items, dim), generator=gen).float()
    targets = torch.randint(2, num_items, (num_queries,), generator=gen)
    history = random_history(num_queries, num_items, 8, gen)
    expected = reference_ranks(queries, items, targets, history)
    ranks = target_ranks(queries, items, targets, to_jagged(history), chunk=chunk)
    assert torch.equal(ranks, expected)
    scores = full_scores(queries, items)
    has_ties = (scores[:, 2:] == scores.gather(1, targets[:, None])).sum() > num_queries
    assert has_ties  # the data really exercises the tie rule


def test_target_ranks_match_brute_force_random_floats() -> None:
    gen = torch.Generator().manual_seed(1)
    num_queries, num_items, dim = 64, 203, 16
    queries = torch.randn(num_queries, dim, generator=gen)
    items = torch.randn(num_items, dim, generator=gen)
    targets = torch.randint(2, num_items, (num_queries,), generator=gen)
    history = random_history(num_queries, num_items, 20, gen)
    expected = reference_ranks(queries, items, targets, history)
    for chunk in (1, 3, 50, num_items):
        ranks = target_ranks(queries, items, targets, to_jagged(history), chunk=chunk)
        assert torch.equal(ranks, expected), f"chunk={chunk}"
    no_exclude = target_ranks(queries, items, targets)
    assert torch.equal(no_exclude, reference_ranks(queries, items, targets, [[]] * num_queries))


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096])
def test_collapsed_model_gets_the_worst_rank(chunk: int) -> None:
    # Every item has the same (non-integer) embedding: all scores tie in exact arithmetic,
    # although float32 products of different shapes would round them differently.
    gen = torch.Generator().manual_seed(2)
    num_queries, num_items, dim = 32, 301, 64
    queries = torch.randn(num_queries, dim, generator=gen)
    items = torch.randn(1, dim, generator=gen).expand(num_items, dim).contiguous()
    targets = torch.randint(2, num_items, (num_queries,), generator=gen)
    history = [[targets[t].item() % 50 + 2] if t % 2 else [] for t in range(num_queries)]
    ranks = target_ranks(queries, items, targets, to_jagged(history), chunk=chunk)
    candidates = num_items - 2 - 1
    expected = [candidates - len(set(h) - {targets[t].item()}) for t, h in enumerate(history)]
    assert ranks.tolist() == expected


def test_all_zero_model_and_nan_scores_get_the_worst_rank() -> None:
    num_items = 10
    zeros = target_ranks(torch.zeros(2, 4), torch.zeros(num_items, 4), torch.tensor([2, 9]))
    assert zeros.tolist() == [num_items - 3, num_items - 3]
    items = torch.arange(num_items, dtype=torch.float32)[:, None]  # (V, 1)
    queries = torch.tensor([[float("nan")], [1.0]])
    items_with_nan = items.clone()
    items_with_nan[3] = float("nan")
    ranks = target_ranks(queries, items_with_nan, torch.tensor([9, 9]))
    # Row 0: NaN target score, worst rank. Row 1: target 9 is the best, but NaN item 3 beats it.
    assert ranks.tolist() == [num_items - 3, 1]


def test_target_ranks_empty_batch() -> None:
    ranks = target_ranks(
        torch.zeros(0, 3), torch.randn(5, 3), torch.zeros(0, dtype=torch.int64), to_jagged([])
    )
    assert ranks.shape == (0,) and ranks.dtype == torch.int64


def test_target_ranks_accepts_int32_ids_and_cpu_exclude_for_any_device() -> None:
    queries = torch.tensor([[1.0]])
    exclude = Jagged(torch.tensor([3], dtype=torch.int32), torch.tensor([1]))
    ranks = target_ranks(queries, HAND_ITEMS, torch.tensor([5], dtype=torch.int32), exclude)
    assert ranks.tolist() == [3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_target_ranks_and_top_k_on_cuda_match_cpu() -> None:
    gen = torch.Generator().manual_seed(3)
    queries, items = torch.randn(50, 8, generator=gen), torch.randn(300, 8, generator=gen)
    targets = torch.randint(2, 300, (50,), generator=gen)
    exclude = to_jagged(random_history(50, 300, 10, gen))
    cpu = target_ranks(queries, items, targets, exclude, chunk=64)
    gpu = target_ranks(queries.cuda(), items.cuda(), targets.cuda(), exclude, chunk=64)
    assert torch.equal(gpu.cpu(), cpu)
    cpu_ids = top_k_items(queries, items, 5, exclude, chunk=64)[1]
    gpu_ids = top_k_items(queries.cuda(), items.cuda(), 5, exclude.to("cuda"), chunk=64)[1]
    assert torch.equal(gpu_ids.cpu(), cpu_ids)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queries": torch.zeros(2)}, r"queries must be 2-D"),
        ({"item_embeddings": torch.zeros(7)}, r"item_embeddings must be 2-D"),
        ({"queries": torch.zeros(2, 3)}, r"d=3 but item_embeddings have d=1"),
        ({"queries": torch.zeros(2, 1, dtype=torch.int64)}, r"queries must be floating"),
        ({"targets": torch.tensor([2])}, r"targets must be \(T=2,\)"),
        ({"targets": torch.tensor([2.0, 3.0])}, r"targets must be .* integer"),
        ({"targets": torch.tensor([2, 1])}, r"targets\[1\] = 1 is not a candidate id"),
        ({"targets": torch.tensor([7, 2])}, r"targets\[0\] = 7 .*\[first_valid_id=2, V=7\)"),
        ({"exclude": to_jagged([[2]])}, r"exclude has 1 rows but there are T=2 queries"),
        ({"exclude": to_jagged([[2], [7]])}, r"exclude holds item id 7, outside .*V=7"),
        ({"exclude": to_jagged([[-1], []])}, r"exclude holds item id -1"),
        ({"chunk": 0}, r"chunk must be >= 1"),
        ({"first_valid_id": 8}, r"first_valid_id must be in \[0, V=7\], got 8"),
    ],
)
def test_target_ranks_errors(kwargs: dict, match: str) -> None:
    args = {
        "queries": torch.ones(2, 1),
        "item_embeddings": HAND_ITEMS,
        "targets": torch.tensor([2, 3]),
        "exclude": None,
    }
    args.update(kwargs)
    options = {k: args.pop(k) for k in ("chunk", "first_valid_id") if k in args}
    with pytest.raises(ValueError, match=match):
        target_ranks(**args, **options)


def test_target_ranks_rejects_float_exclude_ids() -> None:
    exclude = Jagged(torch.tensor([2.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"exclude.values must be 1-D integer item ids"):
        target_ranks(torch.ones(1, 1), HAND_ITEMS, torch.tensor([2]), exclude)


# ---------------------------------------------------------------------------- top_k_items


def reference_top_k(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    exclude: list[list[int]],
    first_valid_id: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk over the full score matrix with non-candidates set to -inf."""
    scores = full_scores(queries, items)
    scores[:, :first_valid_id] = float("-inf")
    for t, row in enumerate(exclude):
        scores[t, row] = float("-inf")
    return scores.topk(k, dim=1)


@pytest.mark.parametrize("chunk", [1, 3, 50, 203, 4096])
def test_top_k_items_match_torch_topk(chunk: int) -> None:
    gen = torch.Generator().manual_seed(4)
    num_queries, num_items, dim, k = 48, 203, 16, 10
    queries = torch.randn(num_queries, dim, generator=gen)
    items = torch.randn(num_items, dim, generator=gen)
    history = random_history(num_queries, num_items, 30, gen)
    scores, ids = top_k_items(queries, items, k, to_jagged(history), chunk=chunk)
    expected_scores, expected_ids = reference_top_k(queries, items, k, history)
    assert ids.dtype == torch.int64 and ids.shape == (num_queries, k)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=0)


def test_top_k_items_with_ties_never_return_excluded_or_low_ids() -> None:
    gen = torch.Generator().manual_seed(5)
    num_queries, num_items, k = 30, 40, 8
    queries = torch.randint(-2, 3, (num_queries, 3), generator=gen).float()
    items = torch.randint(-2, 3, (num_items, 3), generator=gen).float()
    history = random_history(num_queries, num_items, 10, gen)
    scores, ids = top_k_items(queries, items, k, to_jagged(history), chunk=7)
    expected_scores, _ = reference_top_k(queries, items, k, history)
    assert torch.equal(scores, expected_scores)  # ties: ids may differ, the scores may not
    assert torch.equal(scores, full_scores(queries, items).gather(1, ids))
    for t, row in enumerate(ids.tolist()):
        assert len(set(row)) == k
        assert not set(row) & (set(history[t]) | {0, 1})


def test_top_k_items_hand_made() -> None:
    queries = torch.tensor([[1.0], [-1.0]])
    scores, ids = top_k_items(queries, HAND_ITEMS, 2, to_jagged([[2], []]), chunk=2)
    # Row 0 (item 2 excluded): 3 scores 4, then 4 and 6 tie at 3. Row 1: 5 scores -2, then 4
    # and 6 tie at -3.
    assert scores.tolist() == [[4.0, 3.0], [-2.0, -3.0]]
    assert ids[:, 0].tolist() == [3, 5]
    assert set(ids[:, 1].tolist()) <= {4, 6}


def test_top_k_items_errors() -> None:
    queries = torch.ones(2, 1)
    with pytest.raises(ValueError, match=r"k=6 but there are only 5 candidate items"):
        top_k_items(queries, HAND_ITEMS, 6)
    with pytest.raises(ValueError, match=r"k=4 but query row 1 has only 3 candidate items"):
        top_k_items(queries, HAND_ITEMS, 4, to_jagged([[0, 1], [2, 3, 3]]))
    with pytest.raises(ValueError, match=r"k must be >= 1, got 0"):
        top_k_items(queries, HAND_ITEMS, 0)
    with pytest.raises(ValueError, match=r"exclude has 1 rows but there are T=2 queries"):
        top_k_items(queries, HAND_ITEMS, 2, to_jagged([[]]))
    with pytest.raises(ValueError, match=r"chunk must be >= 1"):
        top_k_items(queries, HAND_ITEMS, 2, chunk=0)


def test_top_k_items_do_not_track_gradients() -> None:
    queries = torch.randn(3, 4, requires_grad=True)
    items = torch.randn(20, 4, requires_grad=True)
    scores, _ = top_k_items(queries, items, 5)
    assert not scores.requires_grad
