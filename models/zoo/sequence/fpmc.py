"""FPMC (Rendle, Freudenthaler & Schmidt-Thieme, "Factorizing Personalized Markov Chains for
Next-Basket Recommendation", WWW'10): matrix factorization of the user-item matrix plus a
factorized first-order Markov chain, as a causal sequence encoder.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/fpmc.yaml \
        --data.root OUT --trainer.default_root_dir RUN

The paper scores item i for user u whose last basket is l (baskets of one event here) as

    x(u, l, i) = ⟨V_u^{U,I}, V_i^{I,U}⟩ + ⟨V_l^{L,I}, V_i^{I,L}⟩.

Here the candidate side of both terms is our shared item table V_i (the one table every
sequential model scores against, not two item-side factor matrices), the user factor V_u is a
row of the hashed user table (`models.blocks.user_embedding`, width d) and the previous item's
factor is a linear map W (d × d) of its item row e_l, so

    x(u, l, i) = ⟨V_u, V_i⟩ + ⟨W·e_l, V_i⟩ = ⟨V_u + W·e_l, V_i⟩,

and the output at position t is `V_u + W·e_t` (e_t the item at t): first order and causal by
construction. The composite L2-normalizes outputs and items (`models.sequential`), so training
and ranking use the cosine of the two (over the loss temperature); the formula above is the
output before that normalization. Input features: `ItemOnly` (the chain is first order: no
positions). Loss: the task's (the paper's S-BPR is a pairwise loss over sampled negatives).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.user_embedding import UserEmbeddingConfig
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows


@dataclass(frozen=True)
class FpmcConfig:
    """YAML `encoder.init_args.config` of `Fpmc`.

    Attributes:
        user: the hashed user table V_u (its `dim` must be the item width d, or null).
    """

    user: UserEmbeddingConfig = field(default_factory=UserEmbeddingConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.user, UserEmbeddingConfig):
            raise ValueError(
                f"FpmcConfig.user: expected a UserEmbeddingConfig (buckets, dim), got {self.user!r}"
            )


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = FpmcConfig()


class Fpmc(SequenceEncoder):
    """`V_u + W·e_t` at every position t (see the module docstring).

    Args:
        dims: the data's sizes (`embedding_dim` = d).
        config: the user table.

    Raises:
        ValueError: `config.user.dim` other than d (the user factor meets the items).
    """

    causal = True

    def __init__(self, dims: ModelDims, config: FpmcConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        d = dims.embedding_dim
        if config.user.width(d) != d:
            raise ValueError(
                f"FpmcConfig.user.dim: the user factor is scored against the items, so it must "
                f"be the item width {d} (or null), got {config.user.dim}"
            )
        self.config = config
        self.transition = nn.Linear(d, d, bias=False)  # W: an item row → its chain factor
        self._user_table = config.user.table(d)

    def tables(self) -> list[EmbeddingTableSpec]:
        """The hashed user table V_u."""
        return [self._user_table]

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) item rows of `rows` → (N, d) `V_u + W·x`."""
        return rows.user_per_event() + self.transition(x)  # (N, d)
