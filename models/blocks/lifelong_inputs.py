"""Embedded inputs of the lifelong CTR models, shared by every search and attention unit.

`LifelongInputs` holds, for one `CtrBatch` (B users, N history events, T targets):

* the flat event ids (`item`, `category`, `behavior`, `ts`), each (N,);
* `event_inherent` (N, 2D): item-inherent features `[item_emb, category_emb]`;
* `event_behavior` (N, D): behavior-type embedding;
* `request_ts` (1,): set for a serving request, whose candidates share one request time;
* `embedded`: every looked-up embedding feature's rows (e.g. SIM soft's `gsu_history_item`);
* `cached`: item-cache rows at the history's items (a serving request, e.g. TWIN's keys);
* the targets' ids, request times and `target_inherent` (T, 2D);
* the targets' `windows` (`models.blocks.windows.TargetWindows`);
* `pair_features(rows, index)`: cross features of (target, event) pairs — the behavior
  embedding, the embedding of the log2 time-gap bucket between the event and the target's
  request time and the embedding of "same category as the target", computed only for the pairs asked for (`chunk_pair_features` for a
  `scan_chunks` step).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from lifeseq.features.schema import bucketize_time_gap
from lifeseq.models.blocks.windows import Chunk, TargetWindows, gather_rows


@dataclass(frozen=True)
class PairFeatures:
    """Cross features of (target, behavior) pairs, shaped like the pairs.

    Attributes:
        behavior: (..., D) behavior-type embedding of each behavior.
        gap: (..., D) time-gap-bucket embedding of each (target, behavior) pair.
        match: (..., D) embedding of "the behavior's category equals the target's" (0/1).
    """

    behavior: torch.Tensor
    gap: torch.Tensor
    match: torch.Tensor

    def cat(self) -> torch.Tensor:
        """(..., 3D) concatenated cross features `c_ij`."""
        return torch.cat([self.behavior, self.gap, self.match], dim=-1)


@dataclass
class LifelongInputs:
    """See the module docstring. Tensors are on the model's device."""

    windows: TargetWindows
    event_item: torch.Tensor
    event_category: torch.Tensor
    event_behavior_id: torch.Tensor
    event_ts: torch.Tensor
    event_inherent: torch.Tensor
    event_behavior: torch.Tensor
    target_item: torch.Tensor
    target_category: torch.Tensor
    target_ts: torch.Tensor
    target_inherent: torch.Tensor
    gap_embedding: nn.Embedding
    match_embedding: nn.Embedding
    request_ts: torch.Tensor | None = None
    embedded: dict[str, torch.Tensor] = field(default_factory=dict)
    cached: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        """T."""
        return self.target_item.shape[0]  # not int(): stays symbolic under torch.export

    def gap_bucket(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(n, C) log2 time-gap buckets of targets `rows` (n,) and flat events `index` (n, C)."""
        gap = self.target_ts[rows].unsqueeze(1) - gather_rows(self.event_ts, index)
        return bucketize_time_gap(gap, self.gap_embedding.num_embeddings)

    def pair_features(self, rows: torch.Tensor, index: torch.Tensor) -> PairFeatures:
        """Cross features of targets `rows` (n,) with flat events `index` (n, C)."""
        same = gather_rows(self.event_category, index) == self.target_category[rows].unsqueeze(1)
        return PairFeatures(
            behavior=gather_rows(self.event_behavior, index),
            gap=self.gap_embedding(self.gap_bucket(rows, index)),
            match=self.match_embedding(same.long()),
        )

    def chunk_gap_bucket(self, step: Chunk) -> torch.Tensor:
        """(n, C) time-gap buckets of a `scan_chunks` step's rows and event slice.

        When every target shares one request time (a serving request), the buckets are computed
        once per event and broadcast.
        """
        return self.chunk_gap_bucket_rows(step).expand(step.rows.shape[0], -1)

    def chunk_gap_bucket_rows(self, step: Chunk) -> torch.Tensor:
        """The step's time-gap buckets, broadcastable to (n, C): (1, C) when every target
        shares one request time (a serving request: one bucket per event, so a per-bucket
        term is looked up per event, not per pair), else (n, C)."""
        buckets = self.gap_embedding.num_embeddings
        events_ts = self.event_ts[step.events].unsqueeze(0)  # (1, C)
        if self.shared_request_ts is not None:
            return bucketize_time_gap(self.shared_request_ts - events_ts, buckets)
        gap = self.target_ts[step.rows].unsqueeze(1) - events_ts
        return bucketize_time_gap(gap, buckets)

    @functools.cached_property
    def request_gap_bucket(self) -> torch.Tensor:
        """(N,) time-gap bucket of every event to the request time of a serving request (whose
        targets share `request_ts`), so per-bucket terms are looked up once per event; computed
        once per request (the GSU and the ESU both read it)."""
        assert self.request_ts is not None, "request_gap_bucket: not a serving request"
        gap = self.request_ts - self.event_ts
        return bucketize_time_gap(gap, self.gap_embedding.num_embeddings)

    @functools.cached_property
    def shared_request_ts(self) -> torch.Tensor | None:
        """(1, 1) request time of every target when they all share one, else None (`request_ts`
        when given: a serving request, no device sync)."""
        if self.request_ts is not None:
            return self.request_ts.reshape(1, 1)
        ts = self.target_ts
        if ts.numel() and bool(ts.min() == ts.max()):
            return ts[:1].unsqueeze(1)
        return None

    def chunk_match(self, step: Chunk) -> torch.Tensor:
        """(n, C) int64: 1 where the slice's event has the row's target category."""
        return self.chunk_same_category(step).long()

    def chunk_same_category(self, step: Chunk) -> torch.Tensor:
        """(n, C) bool: the slice's event has the row's target category."""
        categories = self.event_category[step.events].unsqueeze(0)
        return categories == self.target_category[step.rows].unsqueeze(1)

    def chunk_pair_features(
        self, step: Chunk, bucket: torch.Tensor, match: torch.Tensor
    ) -> PairFeatures:
        """Cross features of a step's pairs, shaped (n, C, D), from its `chunk_gap_bucket` and
        `chunk_match`."""
        behavior = self.event_behavior[step.events].expand(step.rows.shape[0], -1, -1)
        return PairFeatures(
            behavior=behavior, gap=self.gap_embedding(bucket), match=self.match_embedding(match)
        )

    def all_rows(self) -> torch.Tensor:
        """(T,) every target's row index."""
        return torch.arange(self.num_targets, device=self.target_item.device)
