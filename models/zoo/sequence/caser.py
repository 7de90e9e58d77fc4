"""Caser (Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding", WSDM'18): horizontal and vertical convolutions over the last L items, with the
user's embedding, as a causal sequence encoder.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/caser.yaml \
        --data.root OUT --trainer.default_root_dir RUN

At every position t of a row, on E_t (L × d): the input features of the L events ending at t
(oldest first; left-padded with zeros inside the row, so a row's first positions see zeros
where no event exists — never another row's events):

    o_h = [max_s ReLU(F^k ∗ E_t[s : s + h]) for h in 1..L, k in 1..n_h]   # (n_h·L,)
    o_v = [Σ_l F̃^k_l · E_t[l] for k in 1..n_v]                            # (n_v·d,)
    z   = ReLU(W₁ · Dropout([o_v; o_h]) + b₁)                              # (d,)
    y_t = W₂ · [z; P_u] + b₂                                               # (d,) the output

The convolutions have no bias, as in the paper's formulas (with one, the planted rule is learnt
far slower — the small item rows drown in the biases: HR@10 0.38 vs 0.99 after the conformance
suite's 200 steps); W₁ and W₂ have one. P_u is the row's user (hashed user table,
`models.blocks.user_embedding`; width `config.user.dim`, default d). Causal by construction:
E_t holds events ≤ t only. All windows are gathered at once from the packed batch with one zero
row in front, by an (N, L) index that points at the zero row where a window reaches before its
row's start: no loop over positions, and a serving request (one row) traces with a dynamic
length (`Tensor.unfold` would give the same windows, but `torch.export` then guards the length
to ≥ L). Input features: `ItemOnly` (the windows carry the order). Training: the paper
supervises each position with its next T = 3 items (`NextItemModule(targets_per_position=3)`,
the config's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lifeseq.models.blocks.checks import check_dropout, check_positive
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.user_embedding import UserEmbeddingConfig
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows


@dataclass(frozen=True)
class CaserConfig:
    """YAML `encoder.init_args.config` of `Caser`.

    Attributes:
        window: L, the events each position convolves (the paper's Markov order).
        n_h: horizontal filters per height h = 1..L.
        n_v: vertical filters.
        dropout: dropout on the concatenated convolution outputs.
        user: the hashed user table P_u.
    """

    window: int = 5
    n_h: int = 16
    n_v: int = 4
    dropout: float = 0.5
    user: UserEmbeddingConfig = field(default_factory=UserEmbeddingConfig)

    def __post_init__(self) -> None:
        for name in ("window", "n_h", "n_v"):
            check_positive(f"CaserConfig.{name}", getattr(self, name))
        check_dropout("CaserConfig.dropout", self.dropout)
        if not isinstance(self.user, UserEmbeddingConfig):
            raise ValueError(
                f"CaserConfig.user: expected a UserEmbeddingConfig (buckets, dim), got {self.user!r}"
            )


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = CaserConfig()


def causal_windows(x: torch.Tensor, rows: SequenceRows, window: int) -> torch.Tensor:
    """The last `window` (L) events up to each position, oldest first, zero where the window
    reaches before the row's start.

    Args:
        x: (N, d) packed events of `rows`.
        rows: the row structure (`positions` say how far back each row goes).
        window: L.

    Returns:
        (N, d, L): `out[n, :, L - 1 - k]` is event n − k of n's row, or zeros.
    """
    back = torch.arange(window - 1, -1, -1, device=x.device)  # (L,) how far back each column is
    padded = torch.cat([x.new_zeros(1, x.shape[1]), x])  # (N + 1, d): row 0 is the zero event
    index = torch.arange(1, x.shape[0] + 1, device=x.device).unsqueeze(1) - back  # (N, L)
    inside = rows.positions.unsqueeze(1) >= back  # (N, L) the window is still in the row
    windows = padded[torch.where(inside, index, 0)]  # (N, L, d)
    return windows.transpose(1, 2)  # (N, d, L)


class Caser(SequenceEncoder):
    """Horizontal + vertical convolutions over each position's window, then the user (see the
    module docstring).

    Args:
        dims: the data's sizes (`embedding_dim` = d).
        config: the architecture.
    """

    causal = True

    def __init__(self, dims: ModelDims, config: CaserConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        d, window = dims.embedding_dim, config.window
        self.horizontal = nn.ModuleList(
            nn.Conv1d(d, config.n_h, height, bias=False) for height in range(1, window + 1)
        )  # F^k of height h: (n_h, d, h) each
        self.vertical = nn.Linear(window, config.n_v, bias=False)  # F̃^k: (n_v, L)
        self.dropout = nn.Dropout(config.dropout)
        self.hidden = nn.Linear(config.n_h * window + config.n_v * d, d)  # W₁
        self.output = nn.Linear(d + config.user.width(d), d)  # W₂
        self._user_table = config.user.table(d)

    def tables(self) -> list[EmbeddingTableSpec]:
        """The hashed user table P_u."""
        return [self._user_table]

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) embedded events of `rows` → (N, d)."""
        windows = causal_windows(x, rows, self.config.window)  # (N, d, L)
        horizontal = [
            torch.relu(conv(windows)).amax(dim=2) for conv in self.horizontal
        ]  # L × (N, n_h)
        vertical = self.vertical(windows).flatten(1)  # (N, d·n_v)
        o = self.dropout(torch.cat([vertical, *horizontal], dim=1))  # (N, n_v·d + n_h·L)
        z = torch.relu(self.hidden(o))  # (N, d)
        return self.output(torch.cat([z, rows.user_per_event()], dim=1))  # (N, d)
