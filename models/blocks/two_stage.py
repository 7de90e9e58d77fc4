"""Two-stage long-term units: a General Search Unit retrieves each target's top-K behaviors
from its whole window, an Exact Search Unit (multi-head target attention) attends over them.

`RetrievalUnit` is the shared part of SIM hard, SIM soft, ETA and TWIN (`models/zoo/long_term/`):
it owns the ESU (`MultiHeadTargetAttention` over item-inherent keys with a cross-feature bias)
and runs, per target j,

    q_j   = ESU.query(target_j)                       # (T, H, dh)
    K     = ESU.keys(every event's item features)     # (N, H, dh) (or the per-item cache)
    top_j = retrieve(inputs, q, K)                    # the GSU: (T, K) flat event indices
    out_j = ESU.attend(q_j, K[top_j], x[top_j], c_j·) # (T, out_dim)

A subclass defines `retrieve`. The ESU is built before the GSU, so the dense layers draw their
initial values in the same order whatever the GSU.
"""

from __future__ import annotations

import torch

from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.search import SearchResult
from lifeseq.models.blocks.target_attention import EsuConfig, MultiHeadTargetAttention
from lifeseq.models.blocks.windows import gather_rows
from lifeseq.models.interfaces import ItemCache, LongTermOutput, LongTermUnit, ModelDims

#: Name of the ESU key cache (a request input and an export file set).
KEY_CACHE = "twin_item_keys"


class RetrievalUnit(LongTermUnit):
    """GSU → ESU (see the module docstring).

    Args:
        dims: the data's sizes (`embedding_dim` = D: item-inherent features are 2D wide, cross
            features 3D).
        esu: the ESU's shape.
    """

    def __init__(self, dims: ModelDims, esu: EsuConfig) -> None:
        super().__init__()
        d = dims.embedding_dim
        self.attention = MultiHeadTargetAttention(
            target_dim=2 * d, inherent_dim=2 * d, cross_dim=3 * d, heads=esu.heads,
            head_dim=esu.head_dim, out_dim=esu.out_dim,
        )  # fmt: skip
        self.out_dim = esu.out_dim

    def retrieve(
        self, inputs: LifelongInputs, query: torch.Tensor, event_keys: torch.Tensor
    ) -> SearchResult:
        """The GSU: each target's top-K flat event indices (overridden).

        Args:
            inputs: the batch's embedded inputs.
            query: (T, H, dh) the ESU's queries.
            event_keys: (N, H, dh) the ESU's keys of every event.
        """
        raise NotImplementedError(f"{type(self).__name__}.retrieve")

    def event_keys(self, inputs: LifelongInputs) -> torch.Tensor:
        """(N, H, dh) ESU keys of the events: the serving cache when the request carries it,
        else projected from the events' item features."""
        cached = inputs.cached.get(KEY_CACHE)
        return cached if cached is not None else self.attention.keys(inputs.event_inherent)

    def item_keys(self, item_rows: torch.Tensor, category_rows: torch.Tensor) -> torch.Tensor:
        """(M, H, dh) ESU keys of items from their (M, D) item and category rows: what
        `event_keys` computes for those items' behaviors (they depend on the item alone)."""
        return self.attention.keys(torch.cat([item_rows, category_rows], dim=1))

    def key_cache(self) -> dict[str, ItemCache]:
        """The ESU keys as an item cache (`KEY_CACHE`)."""
        shape = (self.attention.heads, self.attention.head_dim)
        return {KEY_CACHE: ItemCache(KEY_CACHE, shape, self.item_keys)}

    def aux_weight(self) -> float:
        """Weight of the auxiliary loss of the GSU's `aux_logits` (default: none)."""
        return 0.0

    def forward(self, inputs: LifelongInputs) -> LongTermOutput:
        """(T, out_dim) ESU output over each target's retrieved behaviors."""
        query = self.attention.query(inputs.target_inherent)  # (T, H, dh)
        event_keys = self.event_keys(inputs)  # (N, H, dh)
        found = self.retrieve(inputs, query, event_keys)
        index = found.index  # (T, K)
        if inputs.request_ts is not None:  # a serving request: one time for every target
            out = self.attention.attend_request(query, event_keys, inputs, index)
            return LongTermOutput(out, found.aux_logits, self.aux_weight())
        cross = inputs.pair_features(inputs.all_rows(), index)  # (T, K, ...)
        out = self.attention.attend(
            query, gather_rows(event_keys, index), gather_rows(inputs.event_inherent, index),
            cross, found.valid,
        )  # (T, out_dim)  # fmt: skip
        return LongTermOutput(out, found.aux_logits, self.aux_weight())
