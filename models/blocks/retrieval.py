"""Full-ranking retrieval over an item embedding table, in chunks: target ranks and top-k.

Sequential recommenders (SASRec, HSTU, ...) are evaluated by scoring every item of the catalogue
against each query (the model's output at the position before the target) and reading the
target's rank, not by sampling negatives. Both functions here walk the item table `chunk` rows
at a time, so memory is O(T x chunk) and the full (T, V) score matrix never exists.

Candidate rules (shared by both functions): item ids `[first_valid_id, V)` compete (ids 0 =
padding and 1 = OOV do not, with the default `first_valid_id=2`); the ids in row t of
`exclude` (e.g. user t's history) are removed for query t; `target_ranks` also removes the
target itself.

Scores are dot products accumulated in float64 and rounded to float32 before comparing (float32
accumulation on devices without float64, i.e. MPS). A float32 matrix product rounds differently
for different matrix shapes, so the same (query, item) pair could score differently in two
chunks, or in the product and in the target's own dot product; accumulating in float64 and
rounding makes scores that are equal in exact arithmetic (tied items, a collapsed model)
compare equal, apart from a chance of about d * 2**-29 per score. Inputs in float64 are thus
compared at float32 resolution too. The price is a float64 product: about 1.5x the float32
time on a CPU (measured); on a GPU it depends on its float64 throughput, which consumer cards
lack.

    ranks = target_ranks(queries, item_table.weight, targets, exclude=history)  # (T,)
    scores, ids = top_k_items(queries, item_table.weight, k=10, exclude=history)  # (T, 10)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lifeseq.features.jagged import Jagged

__all__ = ["target_ranks", "top_k_items"]


def _score_dtype(device: torch.device) -> torch.dtype:
    """Accumulation dtype of the dot products: float64 where the device supports it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _is_integer(x: Tensor) -> bool:
    """True for integer (not bool, float or complex) tensors."""
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def _check_tables(
    queries: Tensor, item_embeddings: Tensor, first_valid_id: int, chunk: int
) -> None:
    """Raise `ValueError` for bad shapes, dtypes or devices of the score inputs, or bad ints."""
    if queries.dim() != 2:
        raise ValueError(f"queries must be 2-D (T, d), got shape {tuple(queries.shape)}")
    if item_embeddings.dim() != 2:
        raise ValueError(
            f"item_embeddings must be 2-D (V, d), got shape {tuple(item_embeddings.shape)}"
        )
    if queries.shape[1] != item_embeddings.shape[1]:
        raise ValueError(
            f"queries have dimension d={queries.shape[1]} but item_embeddings have "
            f"d={item_embeddings.shape[1]}; both must be (·, d) in the same space"
        )
    for name, x in (("queries", queries), ("item_embeddings", item_embeddings)):
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if queries.device != item_embeddings.device:
        raise ValueError(
            f"queries are on {queries.device} but item_embeddings on {item_embeddings.device}; "
            "move both to one device"
        )
    num_items = item_embeddings.shape[0]
    if not 0 <= first_valid_id <= num_items:
        raise ValueError(f"first_valid_id must be in [0, V={num_items}], got {first_valid_id}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 item rows, got {chunk}")


def _exclusion_pairs(
    exclude: Jagged | None, num_queries: int, num_items: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(row, item id) pairs of `exclude`, as two (N,) int64 tensors on `device`.

    Raises:
        ValueError: if `exclude` does not have one row per query, its values are not 1-D
            integer ids, or an id is outside [0, V).
    """
    if exclude is None:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty
    if exclude.batch_size != num_queries:
        raise ValueError(
            f"exclude has {exclude.batch_size} rows but there are T={num_queries} queries; "
            "give one row of excluded item ids per query (an empty row excludes nothing)"
        )
    if exclude.values.dim() != 1 or not _is_integer(exclude.values):
        raise ValueError(
            "exclude.values must be 1-D integer item ids, got shape "
            f"{tuple(exclude.values.shape)} and dtype {exclude.values.dtype}"
        )
    ids = exclude.values.to(device=device, dtype=torch.int64)  # (N,)
    lengths = exclude.lengths.to(device=device, dtype=torch.int64)  # (T,)
    bad = (ids < 0) | (ids >= num_items)
    if bool(bad.any()):
        raise ValueError(
            f"exclude holds item id {int(ids[bad][0])}, outside the item table [0, V={num_items})"
        )
    rows = torch.repeat_interleave(torch.arange(num_queries, device=device), lengths)  # (N,)
    return rows, ids


def _masked_chunks(
    rows: Tensor, ids: Tensor, num_queries: int, first_valid_id: int, num_items: int, chunk: int
) -> Iterator[tuple[int, int, Tensor]]:
    """Walk the candidate ids [first_valid_id, V) in chunks, with each chunk's exclusion mask.

    The (row, id) pairs are sorted by id once; each chunk scatters only its own slice, so the
    total work is O(N log N + T x V) with no loop over queries.

    Args:
        rows: (N,) int64 query rows of the excluded pairs.
        ids: (N,) int64 excluded item ids, in [0, V); ids below `first_valid_id` are ignored.
        num_queries: T.
        first_valid_id: first candidate id.
        num_items: V.
        chunk: item rows per chunk.

    Yields:
        `(start, end, excluded)`: the chunk covers ids [start, end); `excluded` is a
        (T, end - start) bool tensor, True where row t excludes id start + j.
    """
    ids, order = torch.sort(ids)  # (N,)
    rows = rows[order]  # (N,)
    starts = list(range(first_valid_id, num_items, chunk))
    edges = torch.tensor([*starts, num_items], dtype=torch.int64, device=ids.device)
    bounds = torch.searchsorted(ids, edges).tolist()
    for i, start in enumerate(starts):
        end = min(start + chunk, num_items)
        excluded = torch.zeros(num_queries, end - start, dtype=torch.bool, device=ids.device)
        lo, hi = bounds[i], bounds[i + 1]
        excluded[rows[lo:hi], ids[lo:hi] - start] = True
        yield start, end, excluded


def _chunk_scores(queries: Tensor, items: Tensor) -> Tensor:
    """(T, c) float32 scores of `queries` (T, d), already in the score dtype, vs `items` (c, d)."""
    return (queries @ items.to(queries.dtype).T).float()


@torch.no_grad()
def target_ranks(
    queries: Tensor,
    item_embeddings: Tensor,
    targets: Tensor,
    exclude: Jagged | None = None,
    *,
    first_valid_id: int = 2,
    chunk: int = 4096,
) -> Tensor:
    """0-based rank of each target among all candidate items (full ranking, no sampling).

    rank[t] = number of candidates c with score(t, c) >= score(t, targets[t]), where
    score(t, i) = queries[t] · item_embeddings[i] and the candidates of query t are the ids
    in [first_valid_id, V) minus the ids in row t of `exclude`, minus the target itself.
    Ties count against the target (pessimistic): a degenerate model that gives every item the
    same score ranks each target last, rank = number of candidates, instead of first. A NaN
    score never helps the target either: a NaN candidate score counts as beating it, and a NaN
    target score gets the worst rank.

    Args:
        queries: (T, d) float query (user) vectors.
        item_embeddings: (V, d) float item table, on the same device as `queries`.
        targets: (T,) integer target item ids, each in [first_valid_id, V).
        exclude: T rows of integer item ids to remove per query, e.g. the user's history
            (duplicates and ids below `first_valid_id`, such as padding, are fine); moved to
            the queries' device. None excludes nothing.
        first_valid_id: smallest id that competes; lower ids (padding, OOV) never do.
        chunk: item rows scored at a time; memory is O(T x chunk).

    Returns:
        (T,) int64 ranks on the queries' device; 0 is best. Not differentiable.

    Raises:
        ValueError: if a shape, dtype or device does not match, a target id is outside
            [first_valid_id, V), `exclude` does not have T rows or holds an id outside
            [0, V), `first_valid_id` is outside [0, V] or `chunk` < 1.
    """
    _check_tables(queries, item_embeddings, first_valid_id, chunk)
    num_queries, num_items = queries.shape[0], item_embeddings.shape[0]
    device = queries.device
    if targets.dim() != 1 or targets.shape[0] != num_queries or not _is_integer(targets):
        raise ValueError(
            f"targets must be (T={num_queries},) integer item ids, got shape "
            f"{tuple(targets.shape)} and dtype {targets.dtype}"
        )
    targets = targets.to(device=device, dtype=torch.int64)  # (T,)
    bad = (targets < first_valid_id) | (targets >= num_items)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"targets[{row}] = {int(targets[row])} is not a candidate id: targets must be in "
            f"[first_valid_id={first_valid_id}, V={num_items})"
        )
    rows, ids = _exclusion_pairs(exclude, num_queries, num_items, device)
    rows = torch.cat([rows, torch.arange(num_queries, device=device)])  # (N + T,)
    ids = torch.cat([ids, targets])  # (N + T,)

    q = queries.to(_score_dtype(device))  # (T, d)
    target_scores = (q * item_embeddings[targets].to(q.dtype)).sum(-1).float()  # (T,)
    target_scores = target_scores.unsqueeze(1)  # (T, 1)
    ranks = torch.zeros(num_queries, dtype=torch.int64, device=device)  # (T,)
    for start, end, excluded in _masked_chunks(
        rows, ids, num_queries, first_valid_id, num_items, chunk
    ):
        scores = _chunk_scores(q, item_embeddings[start:end])  # (T, c)
        beats = scores.lt(target_scores).logical_not_()  # (T, c) >=, or a NaN on either side
        beats.masked_fill_(excluded, False)
        ranks += beats.sum(dim=1, dtype=torch.int32)
    return ranks


@torch.no_grad()
def top_k_items(
    queries: Tensor,
    item_embeddings: Tensor,
    k: int,
    exclude: Jagged | None = None,
    *,
    first_valid_id: int = 2,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """The k highest-scoring candidate items of each query (brute-force inner product).

    Candidates are the ids in [first_valid_id, V) minus the ids in row t of `exclude`. The item
    table is scored `chunk` rows at a time and merged into a running top-k, so memory is
    O(T x (k + chunk)). Scores are assumed finite: an excluded item is masked with -inf, so a
    valid item scoring -inf could lose to it. The order among tied scores is unspecified.

    Args:
        queries: (T, d) float query vectors.
        item_embeddings: (V, d) float item table, on the same device as `queries`.
        k: number of items per query, >= 1.
        exclude: T rows of integer item ids to leave out per query (e.g. already-seen items),
            as for `target_ranks`; None excludes nothing.
        first_valid_id: smallest id that competes.
        chunk: item rows scored at a time.

    Returns:
        `(scores, ids)`: (T, k) float32 scores, sorted descending along dim 1, and (T, k) int64
        item ids. Not differentiable.

    Raises:
        ValueError: if a shape, dtype or device does not match, `k` < 1, a query has fewer
            than k candidates, or as for `target_ranks`.
    """
    _check_tables(queries, item_embeddings, first_valid_id, chunk)
    num_queries, num_items = queries.shape[0], item_embeddings.shape[0]
    device = queries.device
    num_candidates = num_items - first_valid_id
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > num_candidates:
        raise ValueError(
            f"k={k} but there are only {num_candidates} candidate items "
            f"(ids [{first_valid_id}, {num_items})); lower k"
        )
    rows, ids = _exclusion_pairs(exclude, num_queries, num_items, device)

    q = queries.to(_score_dtype(device))  # (T, d)
    best_scores = torch.full(
        (num_queries, k), float("-inf"), dtype=torch.float32, device=device
    )  # (T, k)
    best_ids = torch.full((num_queries, k), -1, dtype=torch.int64, device=device)  # (T, k)
    available = torch.zeros(num_queries, dtype=torch.int64, device=device)  # (T,)
    for start, end, excluded in _masked_chunks(
        rows, ids, num_queries, first_valid_id, num_items, chunk
    ):
        scores = _chunk_scores(q, item_embeddings[start:end]).masked_fill_(excluded, float("-inf"))
        chunk_ids = torch.arange(start, end, device=device).expand(num_queries, -1)  # (T, c)
        merged = torch.cat([best_scores, scores], dim=1)  # (T, k + c)
        best_scores, pick = merged.topk(k, dim=1)  # (T, k) each
        best_ids = torch.cat([best_ids, chunk_ids], dim=1).gather(1, pick)  # (T, k)
        available += (end - start) - excluded.sum(dim=1)
    if num_queries and bool((available < k).any()):
        row = int(available.argmin())
        raise ValueError(
            f"k={k} but query row {row} has only {int(available[row])} candidate items left "
            f"after its exclusions (ids [{first_valid_id}, {num_items})); lower k or exclude less"
        )
    return best_scores, best_ids
