"""TWIN (Chang et al., "TWo-stage Interest Network for Lifelong User Behavior Modeling",
KDD'23): the consistency-preserving GSU ranks behaviors by the ESU's own attention logits.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/twin.yaml \
        --data.root OUT --trainer.default_root_dir RUN

GSU score of behavior i for target j: the mean over heads of `q_h·k_h/√dh + β_h(c_ij)` — the
ESU's query, the cached item-inherent keys and three bias lookups (behavior, time-gap bucket,
same category) per pair (`TwinSearch`, no gradient); the same ESU then attends over the top K.
Keys depend on the item alone: export writes them per item (`twin_item_keys`) and serving
gathers them instead of projecting every history event per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lifeseq.models.blocks.checks import check_positive, check_top_k
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.search import SearchResult, TwinSearch
from lifeseq.models.blocks.target_attention import EsuConfig
from lifeseq.models.blocks.two_stage import RetrievalUnit
from lifeseq.models.interfaces import ItemCache, ModelDims


@dataclass(frozen=True)
class TwinConfig:
    """YAML `long_term.init_args.config` of `Twin`.

    Attributes:
        top_k: behaviors the GSU retrieves per target.
        chunk: window events scored per target per step.
        esu: the ESU's shape (the GSU shares it).
    """

    top_k: int = 64
    chunk: int = 1024
    esu: EsuConfig = field(default_factory=EsuConfig)

    def __post_init__(self) -> None:
        for name in ("top_k", "chunk"):
            check_positive(f"TwinConfig.{name}", getattr(self, name))


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = TwinConfig()


class Twin(RetrievalUnit):
    """CP-GSU (the ESU's logits) → the same ESU.

    Args:
        dims: the data's sizes.
        config: top-K, chunk and the ESU.
    """

    def __init__(self, dims: ModelDims, config: TwinConfig = DEFAULT_CONFIG) -> None:
        check_top_k("Twin", config.top_k, dims.max_history)
        super().__init__(dims, config.esu)
        self.config = config
        self.search = TwinSearch(config.top_k, config.chunk)

    def retrieve(
        self, inputs: LifelongInputs, query: torch.Tensor, event_keys: torch.Tensor
    ) -> SearchResult:
        """Top-K by the ESU's own logits, averaged over heads."""
        return self.search(inputs, self.attention, event_keys, query)

    def item_caches(self) -> dict[str, ItemCache]:
        """The ESU keys per item (the GSU's serving cache)."""
        return self.key_cache()
