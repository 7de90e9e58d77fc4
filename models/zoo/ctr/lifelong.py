"""Lifelong CTR: DIN over the most recent behaviors, an optional long-term unit over the whole
history window, and an MLP tower — the frame of SIM, ETA and TWIN, and with no long-term unit
the DIN-N baseline (`short_term_len: 100`: DIN-100).

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/twin.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Per target j (item t_j, request time ts_j):

    t_j      = [item_emb, category_emb](target)                                  (2D)
    short_j  = DIN(t_j; the window's most recent `short_term_len` behaviors)     (5D)
    long_j   = long-term unit (a `models.interfaces.LongTermUnit` from the zoo)  (out_dim)
    logit_j  = MLP([t_j, short_j, long_j])

Behaviors carry item-inherent features `[item_emb, category_emb]` and target-behavior cross
features (behavior type, log2 time gap to ts_j, same category as the target: small dense
tables); see `models.blocks.target_attention`. The `item` and `category` tables (history and
targets share them) live in the embedding collection; a long-term unit may declare more
(SIM soft's `gsu_item`, `gsu_category`). Long-term units: `models/zoo/long_term/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lifeseq.models.blocks.checks import check_positive, check_widths
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.mlp import mlp
from lifeseq.models.blocks.target_attention import DinAttention
from lifeseq.models.blocks.windows import gather_rows, recent
from lifeseq.models.ctr import item_category_tables, lifelong_inputs
from lifeseq.models.ctr_features import CtrFeatures, CtrOutput
from lifeseq.models.interfaces import CtrModel, ItemCache, LongTermUnit, ModelDims

#: The shared tables' features → the id field each looks up.
BASE_FEATURES = {
    "history_item": "event_item",
    "history_category": "event_category",
    "target_item": "target_item",
    "target_category": "target_category",
}


@dataclass(frozen=True)
class LifelongCtrConfig:
    """YAML `model.init_args.config` of `LifelongCtr`.

    Attributes:
        short_term_len: behaviors DIN attends to (the most recent of each window).
        din_hidden: hidden widths of DIN's activation unit.
        tower_hidden: hidden widths of the tower MLP.
    """

    short_term_len: int = 100
    din_hidden: tuple[int, ...] = (64, 32)
    tower_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        check_positive("LifelongCtrConfig.short_term_len", self.short_term_len)
        for name in ("din_hidden", "tower_hidden"):
            widths = check_widths(f"LifelongCtrConfig.{name}", getattr(self, name))
            object.__setattr__(self, name, widths)


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = LifelongCtrConfig()


class LifelongCtr(CtrModel):
    """See the module docstring.

    Args:
        dims: the data's sizes.
        config: DIN and tower settings.
        long_term: builds the long-term unit from `dims` (a zoo class or partial), or None
            for DIN alone.
    """

    def __init__(
        self,
        dims: ModelDims,
        config: LifelongCtrConfig = DEFAULT_CONFIG,
        long_term: Callable[[ModelDims], LongTermUnit] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        d = dims.embedding_dim
        self.dims = dims
        self.behavior_embedding = nn.Embedding(dims.behavior_rows, d)
        self.gap_embedding = nn.Embedding(dims.gap_buckets, d)
        self.match_embedding = nn.Embedding(2, d)
        for table in (self.behavior_embedding, self.gap_embedding, self.match_embedding):
            nn.init.normal_(table.weight, std=0.02)
        self.din = DinAttention(key_dim=2 * d, side_dim=3 * d, hidden=config.din_hidden)
        self.long_term = long_term(dims) if long_term is not None else None
        long_width = self.long_term.out_dim if self.long_term is not None else 0
        self.tower = mlp(2 * d + self.din.out_dim + long_width, config.tower_hidden)

    def tables(self) -> list[EmbeddingTableSpec]:
        """`item` and `category` (history and targets share them), then the unit's own."""
        own = self.long_term.tables() if self.long_term is not None else []
        return [*item_category_tables(self.dims), *own]

    def feature_ids(self) -> dict[str, str]:
        """The shared features' id fields, then the unit's."""
        own = self.long_term.feature_ids() if self.long_term is not None else {}
        return {**BASE_FEATURES, **own}

    def item_caches(self) -> dict[str, ItemCache]:
        """The long-term unit's per-item caches (TWIN's ESU keys)."""
        return self.long_term.item_caches() if self.long_term is not None else {}

    def inputs(self, features: CtrFeatures) -> LifelongInputs:
        """The units' view of a batch: item-inherent and behavior embeddings, cross tables."""
        return lifelong_inputs(
            features, self.behavior_embedding, self.gap_embedding, self.match_embedding
        )

    def short_term(self, inputs: LifelongInputs) -> torch.Tensor:
        """(T, 5D) DIN pooling of each window's most recent `short_term_len` behaviors."""
        index, valid = recent(inputs.windows, self.config.short_term_len)  # (T, n)
        if inputs.request_ts is not None:  # a serving request: one window for every target
            return self._short_term_shared(inputs, index[0], valid[0])
        cross = inputs.pair_features(inputs.all_rows(), index)
        keys = gather_rows(inputs.event_inherent, index)  # (T, n, 2D)
        return self.din(inputs.target_inherent, keys, cross.cat(), valid)

    def _short_term_shared(
        self, inputs: LifelongInputs, index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """`short_term` when every target has the same window and time (a serving request):
        the (n,) most recent events are gathered once (`DinAttention.forward_shared`)."""
        gap = inputs.gap_embedding(inputs.gap_bucket(inputs.all_rows()[:1], index.unsqueeze(0)))
        side = torch.cat([gather_rows(inputs.event_behavior, index), gap[0]], dim=1)  # (n, 2D)
        same = gather_rows(inputs.event_category, index).unsqueeze(0) == (
            inputs.target_category.unsqueeze(1)
        )  # (T, n)
        keys = gather_rows(inputs.event_inherent, index)  # (n, 2D)
        return self.din.forward_shared(
            inputs.target_inherent, keys, side, same, inputs.match_embedding.weight, valid
        )

    def forward(self, features: CtrFeatures) -> CtrOutput:
        """(T,) logits (and a long-term unit's auxiliary logits)."""
        inputs = self.inputs(features)
        parts = [inputs.target_inherent, self.short_term(inputs)]  # (T, 2D), (T, 5D)
        aux_logits, aux_weight = None, 0.0
        if self.long_term is not None:
            long = self.long_term(inputs)
            parts.append(long.out)  # (T, out_dim)
            aux_logits, aux_weight = long.aux_logits, long.aux_weight
        logits = self.tower(torch.cat(parts, dim=1)).squeeze(1)  # (T,)
        return CtrOutput(logits, aux_logits, aux_weight)
