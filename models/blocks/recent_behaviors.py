"""The most recent behaviors of every CTR target as a dense (T, n) block, for CTR models that
read a short recent sequence in order (BST's Transformer, DIEN's GRUs) rather than a pooled or
searched window.

`RecentBehaviorInputs` owns what such a model shares with `models.zoo.ctr.lifelong.LifelongCtr`:
the `item` and `category` tables it declares (history and targets share them; `tables`,
`feature_ids`) and the small dense cross-feature tables (behavior type, log2 time-gap bucket,
same category as the target). Its forward gives a `RecentBehaviors`:

    index, valid   (T, n)        the window's n most recent events, oldest first (right-aligned:
                                 a window shorter than n leaves its first slots invalid)
    inherent       (T, n, 2D)    item-inherent features [item_emb, category_emb]
    cross          (T, n, D) ×3  behavior, time-gap and same-category embeddings (`PairFeatures`)
    target         (T, 2D)       the target's [item_emb, category_emb]

Invalid slots hold rows of other events (indices are clamped, as `windows.recent` gives them):
a model must mask them, so that a target never reads events outside its window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs, PairFeatures
from lifeseq.models.blocks.windows import gather_rows, recent
from lifeseq.models.ctr import item_category_tables, lifelong_inputs
from lifeseq.models.ctr_features import CtrFeatures
from lifeseq.models.interfaces import ModelDims

#: The shared tables' features → the id field each looks up (as `LifelongCtr`'s).
RECENT_FEATURES = {
    "history_item": "event_item",
    "history_category": "event_category",
    "target_item": "target_item",
    "target_category": "target_category",
}


@dataclass(frozen=True)
class RecentBehaviors:
    """Each target's n most recent behaviors (see the module docstring).

    Attributes:
        index: (T, n) int64 flat event indices, oldest first (clamped where invalid).
        valid: (T, n) bool, the slot holds an event of the target's window.
        inherent: (T, n, 2D) item-inherent features of the slots.
        cross: (T, n, D) cross features of the (target, slot) pairs.
        target: (T, 2D) item-inherent features of the targets.
    """

    index: torch.Tensor
    valid: torch.Tensor
    inherent: torch.Tensor
    cross: PairFeatures
    target: torch.Tensor


class RecentBehaviorInputs(nn.Module):
    """The shared tables and the cross-feature tables of a recent-behavior CTR model.

    Args:
        dims: the data's sizes (D = `embedding_dim`).
        length: n, the recent behaviors per target.
    """

    def __init__(self, dims: ModelDims, length: int) -> None:
        super().__init__()
        d = dims.embedding_dim
        self.dims, self.length = dims, length
        self.behavior_embedding = nn.Embedding(dims.behavior_rows, d)
        self.gap_embedding = nn.Embedding(dims.gap_buckets, d)
        self.match_embedding = nn.Embedding(2, d)
        for table in (self.behavior_embedding, self.gap_embedding, self.match_embedding):
            nn.init.normal_(table.weight, std=0.02)

    @property
    def inherent_dim(self) -> int:
        """2D, the width of the item-inherent features."""
        return 2 * self.dims.embedding_dim

    @property
    def cross_dim(self) -> int:
        """3D, the width of the concatenated cross features."""
        return 3 * self.dims.embedding_dim

    def tables(self) -> list[EmbeddingTableSpec]:
        """`item` and `category`, each serving the history and the targets."""
        return item_category_tables(self.dims)

    def feature_ids(self) -> dict[str, str]:
        """Each feature's id field."""
        return dict(RECENT_FEATURES)

    def lifelong_inputs(self, features: CtrFeatures) -> LifelongInputs:
        """The batch as `LifelongInputs` (the same view `LifelongCtr.inputs` gives its units)."""
        return lifelong_inputs(
            features, self.behavior_embedding, self.gap_embedding, self.match_embedding
        )

    def forward(self, features: CtrFeatures) -> tuple[LifelongInputs, RecentBehaviors]:
        """The batch's inputs and every target's `length` most recent behaviors."""
        inputs = self.lifelong_inputs(features)
        index, valid = recent(inputs.windows, self.length)  # (T, n)
        behaviors = RecentBehaviors(
            index=index,
            valid=valid,
            inherent=gather_rows(inputs.event_inherent, index),  # (T, n, 2D)
            cross=inputs.pair_features(inputs.all_rows(), index),  # (T, n, D) each
            target=inputs.target_inherent,  # (T, 2D)
        )
        return inputs, behaviors
