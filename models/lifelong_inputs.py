"""Embedded inputs of the lifelong CTR models, shared by every search and attention unit.

`LifelongInputs` holds, for one `CtrBatch` (B users, N history events, T targets):

* the flat event ids (`item`, `category`, `behavior`, `ts`), each (N,);
* `event_inherent` (N, 2D): item-inherent features `[item_emb, category_emb]`;
* `event_behavior` (N, D): behavior-type embedding;
* the targets' ids, request times and `target_inherent` (T, 2D);
* the targets' `windows` (`models.windows.TargetWindows`);
* `pair_features(rows, index)`: cross features of (target, event) pairs — the behavior
  embedding and the embedding of the log2 time-gap bucket between the event and the target's
  request time, computed only for the pairs asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from features.schema import bucketize_time_gap
from models.target_attention import PairFeatures
from models.windows import TargetWindows, gather_rows


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

    @property
    def num_targets(self) -> int:
        """T."""
        return int(self.target_item.shape[0])

    def gap_bucket(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(n, C) log2 time-gap buckets of targets `rows` (n,) and flat events `index` (n, C)."""
        gap = self.target_ts[rows].unsqueeze(1) - gather_rows(self.event_ts, index)
        return bucketize_time_gap(gap, self.gap_embedding.num_embeddings)

    def pair_features(self, rows: torch.Tensor, index: torch.Tensor) -> PairFeatures:
        """Cross features of targets `rows` (n,) with flat events `index` (n, C)."""
        return PairFeatures(
            behavior=gather_rows(self.event_behavior, index),
            gap=self.gap_embedding(self.gap_bucket(rows, index)),
        )

    def all_rows(self) -> torch.Tensor:
        """(T,) every target's row index."""
        return torch.arange(self.num_targets, device=self.target_item.device)
