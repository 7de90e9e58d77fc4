"""Smoke CTR model: mean-pooled history window + target embedding → MLP → logit.

    lifeseq train fit --config configs/smoke.yaml --data.root OUT --trainer.default_root_dir RUN

The smallest model that exercises the whole platform (tables on either backend, jagged CTR
batches, a dense part for DDP, export). Per target j of a batch:

    e_n  = item_emb(history_item[n]) + category_emb(history_category[n])   # (N, D), once per user
    h_j  = mean(e over target j's window)                                   # (T, D)
    t_j  = item_emb(target_item[j]) + category_emb(target_category[j])      # (T, D)
    logit_j = MLP([h_j, t_j, h_j * t_j])                                    # (T,)

Each window is pooled through one prefix sum over the batch's flat events (O(N + T), no
(T, L, D) copy); an empty window gives h_j = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lifeseq.models.blocks.checks import check_widths
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.mlp import mlp
from lifeseq.models.blocks.windows import window_mean
from lifeseq.models.ctr import item_category_tables
from lifeseq.models.ctr_features import CtrFeatures, CtrOutput
from lifeseq.models.interfaces import CtrModel, ModelDims


@dataclass(frozen=True)
class SmokeConfig:
    """YAML `model.init_args.config` of `SmokeCtr`.

    Attributes:
        hidden: widths of the MLP's hidden layers (ReLU); may be empty (a linear model).
    """

    hidden: tuple[int, ...] = (32,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", check_widths("SmokeConfig.hidden", self.hidden))


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = SmokeConfig()


class SmokeCtr(CtrModel):
    """See the module docstring.

    Args:
        dims: the data's sizes.
        config: the MLP.
    """

    def __init__(self, dims: ModelDims, config: SmokeConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.mlp = mlp(3 * dims.embedding_dim, config.hidden)

    def tables(self) -> list[EmbeddingTableSpec]:
        """`item` and `category`, each serving the history and the targets."""
        return item_category_tables(self.dims)

    def feature_ids(self) -> dict[str, str]:
        """Each feature's id field."""
        return {
            "history_item": "event_item", "history_category": "event_category",
            "target_item": "target_item", "target_category": "target_category",
        }  # fmt: skip

    def forward(self, features: CtrFeatures) -> CtrOutput:
        """(T,) logits."""
        e = features.embedded
        events = e["history_item"] + e["history_category"]  # (N, D)
        pooled = window_mean(events, features.windows)  # (T, D)
        target = e["target_item"] + e["target_category"]  # (T, D)
        return CtrOutput(self.mlp(torch.cat([pooled, target, pooled * target], dim=1)).squeeze(1))
