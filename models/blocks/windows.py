"""Per-target history windows over a batch's flat event array, and chunked scans over them.

A `CtrBatch` stores each user's history once (Jagged, N events in all); target j reads the
events `[lo[j], hi[j])` of that flat array (its user's row offset plus `target_hist_start` /
`target_hist_len`: the most recent `max_history` events strictly before the target). Every
lifelong unit (search, full attention, short-term attention) works on these windows without
copying a history per target:

* `TargetWindows.from_batch(batch)` — (T,) `lo`, `hi` in flat coordinates.
* `scan_chunks(windows, chunk)` — walks the flat event array in slices of `chunk` events; each
  step yields the slice (score it as a view, no copy), the targets whose windows overlap it and
  a validity mask. Memory per step is O(n × C), never O(T × L).
* `chunked_topk(score_fn, windows, k, chunk)` — top-K events per target by a score computed
  chunk by chunk, merged with `torch.topk`; O(T × (K + C)) memory.
* `recent(windows, n)` — the (T, n) indices of each window's most recent n events.
* `OnlineSoftmaxPool` — softmax-weighted sums accumulated chunk by chunk (running max, as in
  flash attention), so attention over a whole window never holds more than one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from lifeseq.features.batch import CtrBatch

#: Score of an invalid (out-of-window) position; never selected while valid ones remain.
NEG_INF = float("-inf")


@dataclass(frozen=True)
class TargetWindows:
    """Flat event ranges of the targets of a batch.

    Attributes:
        lo: (T,) int64 first flat event index of each target's window.
        hi: (T,) int64 end (exclusive); `hi - lo` is the window length (0 allowed).
        num_events: N, length of the flat event arrays the indices point into.
        whole: every window is the whole flat array `[0, N)` (one serving request: all
            candidates share the user's history). Scans then take one step over all N events
            with no data-dependent control flow, so the request path can be `torch.export`ed.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    num_events: int
    whole: bool = False

    @staticmethod
    def from_batch(batch: CtrBatch) -> TargetWindows:
        """Windows of `batch`'s targets: row offset + `[target_hist_start, target_hist_len)`."""
        item = batch.history["item"]
        row = item.offsets[:-1][batch.target_user]  # (T,)
        return TargetWindows(
            lo=row + batch.target_hist_start,
            hi=row + batch.target_hist_len,
            num_events=int(item.values.shape[0]),
        )

    @staticmethod
    def whole_history(num_targets: int, num_events: int, device: torch.device) -> TargetWindows:
        """Windows of one request: `num_targets` candidates, each over all `num_events`."""
        lo = torch.zeros(num_targets, dtype=torch.int64, device=device)
        return TargetWindows(lo=lo, hi=lo + num_events, num_events=num_events, whole=True)

    @property
    def lengths(self) -> torch.Tensor:
        """(T,) window lengths."""
        return self.hi - self.lo

    @property
    def num_targets(self) -> int:
        """T."""
        return self.lo.shape[0]  # not int(): keeps a symbolic size symbolic under torch.export


@dataclass(frozen=True)
class Chunk:
    """One step of `scan_chunks`: a contiguous slice of the flat event array and the targets
    whose windows overlap it.

    Attributes:
        rows: (n,) int64 target indices (into 0..T-1) whose window overlaps the slice.
        events: the slice `[start, stop)` of the flat event arrays (C = stop - start events);
            index per-event tensors with it (`values[chunk.events]`, a view: no copy).
        index: (n, C) int64 flat event index of each slot (the slice, broadcast to the rows).
        valid: (n, C) bool, the event lies inside the row's window.
        position: (n, C) int64 position of the event inside the row's window (0 = oldest).
    """

    rows: torch.Tensor
    events: slice
    index: torch.Tensor
    valid: torch.Tensor
    position: torch.Tensor


def scan_chunks(windows: TargetWindows, chunk: int) -> Iterator[Chunk]:
    """Walk the flat event array in slices of `chunk` events; each step holds the targets whose
    window overlaps the slice.

    A user's history is one contiguous row of the flat array and every window lies inside its
    user's row, so a slice overlaps the windows of one or two users only, and all targets of a
    user score a slice against the same events (a matrix product, no per-target copy). Total
    work is about sum(window lengths) + T × chunk. There is always at least one step (with no
    rows when the batch has no events or targets). `windows.whole` (a request): one step over
    every event for every target, whatever `chunk`.

    Raises:
        ValueError: `chunk < 1`.
    """
    if chunk < 1:
        raise ValueError(f"chunk: expected >= 1, got {chunk}")
    lo, hi = windows.lo, windows.hi
    device = lo.device
    total = windows.num_events
    if windows.whole:
        index = torch.arange(total, device=device).unsqueeze(0).expand(windows.num_targets, -1)
        yield Chunk(
            rows=torch.arange(windows.num_targets, device=device),
            events=slice(0, total),
            index=index,
            valid=torch.ones_like(index, dtype=torch.bool),
            position=index,
        )
        return
    nonempty = hi > lo
    starts = range(0, total, chunk) if total else range(0, 1)
    for start in starts:
        stop = min(start + chunk, total)
        overlaps = nonempty & (lo < stop) & (hi > start)
        rows = torch.nonzero(overlaps).flatten()
        absolute = torch.arange(start, stop, device=device)  # (C,)
        index = absolute.unsqueeze(0).expand(rows.shape[0], -1)  # (n, C)
        row_lo = lo[rows].unsqueeze(1)
        valid = (index >= row_lo) & (index < hi[rows].unsqueeze(1))
        yield Chunk(
            rows=rows, events=slice(start, stop), index=index, valid=valid, position=index - row_lo
        )


def chunked_topk(
    score_fn: Callable[[Chunk], torch.Tensor],
    windows: TargetWindows,
    k: int,
    chunk: int,
    recent_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` events of each target's window by `score_fn`, computed chunk by chunk.

    Args:
        score_fn: maps a `Chunk` to (n, C) float scores (invalid positions are masked here).
        windows: the targets' windows.
        k: events to keep per target.
        chunk: events per target per step.
        recent_first: break exact score ties toward the most recent event (a stable sort per
            step instead of `topk`), so the choice among tied events is the same for any
            `chunk` and batch layout — a serving request then picks what training picked.

    Returns:
        (index, score): (T, k) int64 flat event indices (-1 where the window has fewer than k
        events) and (T, k) float scores (-inf there), best first. Ties keep an arbitrary one of
        the tied events unless `score_fn` breaks them.
    """
    if windows.whole and not recent_first:
        (step,) = scan_chunks(windows, chunk)
        return whole_window_topk(score_fn(step), k)
    t = windows.num_targets
    device = windows.lo.device
    best_index = torch.full((t, k), -1, dtype=torch.int64, device=device)
    best_score: torch.Tensor | None = None
    for step in scan_chunks(windows, chunk):
        scores = score_fn(step).masked_fill(~step.valid, NEG_INF)  # (n, C)
        if best_score is None:
            best_score = torch.full((t, k), NEG_INF, dtype=scores.dtype, device=device)
        rows = step.rows
        if recent_first:
            # Newest first: the slice reversed, then the kept ones (older, already ordered).
            merged_score = torch.cat([scores.flip(1), best_score[rows]], dim=1)  # (n, C + k)
            merged_index = torch.cat([step.index.flip(1), best_index[rows]], dim=1)
            order = torch.sort(merged_score, dim=1, descending=True, stable=True)
            top_score, top_pos = order.values[:, :k], order.indices[:, :k]
        else:
            merged_score = torch.cat([best_score[rows], scores], dim=1)  # (n, k + C)
            merged_index = torch.cat([best_index[rows], step.index], dim=1)
            top_score, top_pos = torch.topk(merged_score, k, dim=1)
        best_score[rows] = top_score
        best_index[rows] = torch.gather(merged_index, 1, top_pos)
    if best_score is None:
        best_score = torch.full((t, k), NEG_INF, device=device)
    best_index = best_index.masked_fill(torch.isneginf(best_score), -1)
    return best_index, best_score


def whole_window_topk(
    scores: torch.Tensor, k: int, best_first: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`chunked_topk` of a request whose every window is the whole history, from its (T, N)
    scores: one `topk`, the positions being the flat event indices, with no index matrix built
    and no merge (at N = 10,000 and T = 100 that was an (T, N + k) int64 copy and a gather).

    `k` columns of -inf are appended, so a history shorter than `k` needs no shape-dependent
    branch (which `torch.export`'s dynamic N would refuse); they come back as index -1.

    Args:
        scores: (T, N) scores.
        k: events to keep per target.
        best_first: order each row best first, as `chunked_topk` does; False leaves the rows
            in any order, for a consumer that does not depend on it (an attention over the
            selected set): ~15% less time at 1,000 events.

    Returns:
        (index, score): (T, k) as `chunked_topk`'s.
    """
    t = scores.shape[0]
    padded = torch.cat([scores, scores.new_full((t, k), NEG_INF)], dim=1)  # (T, N + k)
    top_score, top_pos = torch.topk(padded, k, dim=1, sorted=best_first)
    return top_pos.masked_fill(torch.isneginf(top_score), -1), top_score


def recent(windows: TargetWindows, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The most recent `n` events of every window, oldest first.

    Returns:
        (index, valid): (T, n) int64 flat indices (clamped where invalid) and (T, n) bool.
    """
    steps = torch.arange(n, device=windows.lo.device)
    start = windows.hi - n  # (T,)
    index = start.unsqueeze(1) + steps  # (T, n)
    valid = index >= windows.lo.unsqueeze(1)
    last = max(windows.num_events - 1, 0)
    return index.clamp(min=0, max=last), valid


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`values[index]` for flat per-event values and (…) indices, with -1 mapped to row 0.

    Args:
        values: (N, ...) per-event tensor.
        index: int64 indices of any shape; -1 marks an empty slot (its row is arbitrary and
            must be masked by the caller).

    Returns:
        (*index.shape, ...) gathered values.
    """
    if values.shape[0] == 0:
        # No rows to index (a padding batch): zeros that stay connected to `values`' graph, so
        # every parameter takes part in backward (DDP's static graph requires it).
        return values.new_zeros((*index.shape, *values.shape[1:])) + 0 * values.sum()
    return values[index.clamp(min=0)]


def _chunk_max(logits: torch.Tensor) -> torch.Tensor:
    """Max over dim 1 (the chunk's events); -inf for an empty chunk."""
    if logits.shape[1] == 0:
        return logits.new_full((logits.shape[0], *logits.shape[2:]), NEG_INF)
    return logits.amax(dim=1)


class OnlineSoftmaxPool:
    """Per-target `sum_i softmax_i(logit_i) value_i` accumulated over chunks of i.

    Keeps a running max, denominator and numerator per target (and per group, e.g. head), so
    the result equals one softmax over all chunks. A target that never receives a finite logit
    pools to zeros.

    Args:
        targets: T.
        groups: shape G of the independent softmaxes per target (e.g. `(heads,)`, or `()`).
        width: d, width of the values.
        like: a tensor whose device the state takes (the state is float32 whatever `like`'s
            dtype, so a bf16 autocast forward accumulates in float32).
        null_logit: (*G) logit of a zero-valued "null" slot in every softmax (None: no slot).
    """

    def __init__(
        self,
        targets: int,
        groups: tuple[int, ...],
        width: int,
        like: torch.Tensor,
        null_logit: torch.Tensor | None = None,
    ) -> None:
        if null_logit is None:
            self.max = like.new_full((targets, *groups), NEG_INF, dtype=torch.float32)
            self.denominator = like.new_zeros(targets, *groups, dtype=torch.float32)
        else:
            self.max = null_logit.to(torch.float32).expand(targets, *groups)
            self.denominator = like.new_ones(targets, *groups, dtype=torch.float32)  # exp(0)
        self.numerator = like.new_zeros(targets, *groups, width, dtype=torch.float32)

    def add(self, rows: torch.Tensor, logits: torch.Tensor, values: torch.Tensor) -> None:
        """Add a chunk.

        Args:
            rows: (n,) target indices (distinct).
            logits: (n, C, *G), -inf for positions to ignore.
            values: (n, C, *G, d).
        """
        new_max = torch.maximum(self.max[rows], _chunk_max(logits))  # (n, *G)
        safe_max = new_max.masked_fill(torch.isneginf(new_max), 0.0)
        scale = torch.exp(self.max[rows] - safe_max)  # (n, *G); exp(-inf) = 0
        weights = torch.exp(logits - safe_max.unsqueeze(1))  # (n, C, *G)
        weighted = (weights.unsqueeze(-1) * values).sum(dim=1)  # (n, *G, d)
        self._merge(rows, new_max, scale, weights.sum(dim=1), weighted)

    def add_shared(self, rows: torch.Tensor, logits: torch.Tensor, values: torch.Tensor) -> None:
        """`add` for values shared by every row of the chunk: logits (n, C), values (C, d)
        (one matrix product, no (n, C, d) broadcast)."""
        new_max = torch.maximum(self.max[rows], _chunk_max(logits))  # (n,)
        safe_max = new_max.masked_fill(torch.isneginf(new_max), 0.0)
        scale = torch.exp(self.max[rows] - safe_max)
        weights = torch.exp(logits - safe_max.unsqueeze(1))  # (n, C)
        self._merge(rows, new_max, scale, weights.sum(dim=1), weights @ values)

    def _merge(
        self,
        rows: torch.Tensor,
        new_max: torch.Tensor,
        scale: torch.Tensor,
        weight_sum: torch.Tensor,
        weighted: torch.Tensor,
    ) -> None:
        scale, weight_sum, weighted = scale.float(), weight_sum.float(), weighted.float()
        self.denominator = self.denominator.index_put(
            (rows,), self.denominator[rows] * scale + weight_sum
        )
        self.numerator = self.numerator.index_put(
            (rows,), self.numerator[rows] * scale.unsqueeze(-1) + weighted
        )
        self.max = self.max.index_put((rows,), new_max.float())

    def result(self) -> torch.Tensor:
        """(T, *G, d) pooled values."""
        return self.numerator / self.denominator.clamp(min=1e-30).unsqueeze(-1)


def window_mean(values: torch.Tensor, windows: TargetWindows) -> torch.Tensor:
    """Mean of every target's window of flat per-event `values` (N, D), through one prefix sum
    (O(N + T), no per-target copy).

    Returns:
        (T, D): mean of `values[lo[j]:hi[j]]`, zeros for an empty window.
    """
    csum = torch.cat([values.new_zeros(1, values.shape[1]), values.cumsum(0)])  # (N + 1, D)
    total = csum[windows.hi] - csum[windows.lo]  # (T, D)
    count = (windows.hi - windows.lo).clamp(min=1).unsqueeze(1).to(values.dtype)  # (T, 1)
    return total / count  # (T, D)
