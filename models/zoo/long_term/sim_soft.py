"""SIM soft search (Qi et al., CIKM'20) → ESU: retrieval by the inner product of separate GSU
embeddings, trained by SIM's auxiliary CTR task.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/sim_soft.yaml \
        --data.root OUT --trainer.default_root_dir RUN

The unit declares two tables of its own, `gsu_item` and `gsu_category` (looked up for the
history and the targets alongside the shared tables). Relevance of behavior i to target j is
`(W_b g_i)·(W_a g_j)`; the top K go to the ESU, and the softmax-pooled whole window predicts the
label through a small MLP (`aux_logits`, weighted by `aux_weight` in the loss): top-K selection
has no gradient, so the auxiliary task is what trains the GSU (`SimSoftSearch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lifeseq.models.blocks.checks import check_positive, check_top_k
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.search import SearchResult, SimSoftSearch
from lifeseq.models.blocks.target_attention import EsuConfig
from lifeseq.models.blocks.two_stage import RetrievalUnit
from lifeseq.models.interfaces import ModelDims

#: The GSU's own embedding features → the id field each looks up.
GSU_FEATURES = {
    "gsu_history_item": "event_item",
    "gsu_history_category": "event_category",
    "gsu_target_item": "target_item",
    "gsu_target_category": "target_category",
}


@dataclass(frozen=True)
class SimSoftConfig:
    """YAML `long_term.init_args.config` of `SimSoft`.

    Attributes:
        top_k: behaviors the GSU retrieves per target.
        chunk: window events scored per target per step.
        projection_dim: width of the GSU's projections W_a, W_b.
        aux_weight: weight of the auxiliary CTR loss.
        esu: the ESU's shape.
    """

    top_k: int = 64
    chunk: int = 1024
    projection_dim: int = 32
    aux_weight: float = 0.1
    esu: EsuConfig = field(default_factory=EsuConfig)

    def __post_init__(self) -> None:
        for name in ("top_k", "chunk", "projection_dim"):
            check_positive(f"SimSoftConfig.{name}", getattr(self, name))
        if self.aux_weight < 0:
            raise ValueError(f"SimSoftConfig.aux_weight: expected >= 0, got {self.aux_weight}")


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = SimSoftConfig()


class SimSoft(RetrievalUnit):
    """GSU-embedding inner-product top-K → ESU, with SIM's auxiliary task.

    Args:
        dims: the data's sizes (the GSU tables have the item and category tables' rows).
        config: top-K, chunk, projection width, auxiliary weight and the ESU.
    """

    def __init__(self, dims: ModelDims, config: SimSoftConfig = DEFAULT_CONFIG) -> None:
        check_top_k("SimSoft", config.top_k, dims.max_history)
        super().__init__(dims, config.esu)
        self.config = config
        self.dims = dims
        d = dims.embedding_dim
        self.search = SimSoftSearch(2 * d, config.projection_dim, config.top_k, config.chunk)

    def tables(self) -> list[EmbeddingTableSpec]:
        """`gsu_item` and `gsu_category`, each serving the history and the targets."""
        d, dims = self.dims.embedding_dim, self.dims
        return [
            EmbeddingTableSpec(
                "gsu_item", dims.item_rows, d, ("gsu_history_item", "gsu_target_item")
            ),
            EmbeddingTableSpec(
                "gsu_category",
                dims.category_rows,
                d,
                ("gsu_history_category", "gsu_target_category"),
            ),
        ]

    def feature_ids(self) -> dict[str, str]:
        """The GSU features' id fields."""
        return dict(GSU_FEATURES)

    def aux_weight(self) -> float:
        """`config.aux_weight`."""
        return self.config.aux_weight

    def retrieve(
        self, inputs: LifelongInputs, query: torch.Tensor, event_keys: torch.Tensor
    ) -> SearchResult:
        """Top-K by GSU relevance, plus the auxiliary logits."""
        e = inputs.embedded
        events = torch.cat([e["gsu_history_item"], e["gsu_history_category"]], 1)  # (N, 2D)
        targets = torch.cat([e["gsu_target_item"], e["gsu_target_category"]], 1)  # (T, 2D)
        return self.search(inputs, events, targets)
