"""SIM hard search (Qi et al., "Search-based User Interest Modeling", CIKM'20) → ESU.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/sim_hard.yaml \
        --data.root OUT --trainer.default_root_dir RUN

The GSU keeps the behaviors of the target's category, most recent first (`SimHardSearch`,
chunk by chunk over the window); the ESU attends over those K (`RetrievalUnit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lifeseq.models.blocks.checks import check_positive, check_top_k
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.search import SearchResult, SimHardSearch
from lifeseq.models.blocks.target_attention import EsuConfig
from lifeseq.models.blocks.two_stage import RetrievalUnit
from lifeseq.models.interfaces import ModelDims


@dataclass(frozen=True)
class SimHardConfig:
    """YAML `long_term.init_args.config` of `SimHard`.

    Attributes:
        top_k: behaviors the GSU retrieves per target.
        chunk: window events scored per target per step (memory: T × chunk).
        esu: the ESU's shape.
    """

    top_k: int = 64
    chunk: int = 1024
    esu: EsuConfig = field(default_factory=EsuConfig)

    def __post_init__(self) -> None:
        for name in ("top_k", "chunk"):
            check_positive(f"SimHardConfig.{name}", getattr(self, name))


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = SimHardConfig()


class SimHard(RetrievalUnit):
    """Same-category behaviors, newest first → ESU.

    Args:
        dims: the data's sizes.
        config: top-K, chunk and the ESU.
    """

    def __init__(self, dims: ModelDims, config: SimHardConfig = DEFAULT_CONFIG) -> None:
        check_top_k("SimHard", config.top_k, dims.max_history)
        super().__init__(dims, config.esu)
        self.config = config
        self.search = SimHardSearch(config.top_k, config.chunk)

    def retrieve(
        self, inputs: LifelongInputs, query: torch.Tensor, event_keys: torch.Tensor
    ) -> SearchResult:
        """Top-K same-category events of each window, newest first."""
        return self.search(inputs)
