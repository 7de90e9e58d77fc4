"""ETA (Chen et al., "End-to-End User Behavior Retrieval in Click-Through Rate Prediction
Model", 2021): SimHash retrieval → ESU.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/eta.yaml \
        --data.root OUT --trainer.default_root_dir RUN

The GSU signs the item-inherent embeddings with `bits` fixed random hyperplanes (seeded by the
model seed; no gradient) and keeps the K behaviors at the smallest Hamming distance to the
target's signature, ties to the most recent (`EtaSearch`); the ESU attends over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lifeseq.models.blocks.checks import check_positive, check_top_k
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.search import EtaSearch, SearchResult
from lifeseq.models.blocks.target_attention import EsuConfig
from lifeseq.models.blocks.two_stage import RetrievalUnit
from lifeseq.models.interfaces import ModelDims


@dataclass(frozen=True)
class EtaConfig:
    """YAML `long_term.init_args.config` of `Eta`.

    Attributes:
        top_k: behaviors the GSU retrieves per target.
        chunk: window events scored per target per step.
        bits: SimHash signature length m.
        esu: the ESU's shape.
    """

    top_k: int = 64
    chunk: int = 1024
    bits: int = 64
    esu: EsuConfig = field(default_factory=EsuConfig)

    def __post_init__(self) -> None:
        for name in ("top_k", "chunk", "bits"):
            check_positive(f"EtaConfig.{name}", getattr(self, name))


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = EtaConfig()


class Eta(RetrievalUnit):
    """SimHash/Hamming top-K → ESU.

    Args:
        dims: the data's sizes (`seed` seeds the hyperplanes).
        config: top-K, chunk, bits and the ESU.
    """

    def __init__(self, dims: ModelDims, config: EtaConfig = DEFAULT_CONFIG) -> None:
        check_top_k("Eta", config.top_k, dims.max_history)
        super().__init__(dims, config.esu)
        self.config = config
        d = dims.embedding_dim
        self.search = EtaSearch(2 * d, config.bits, config.top_k, config.chunk, seed=dims.seed)

    def retrieve(
        self, inputs: LifelongInputs, query: torch.Tensor, event_keys: torch.Tensor
    ) -> SearchResult:
        """Top-K by Hamming distance of the SimHash signatures."""
        return self.search(inputs)
