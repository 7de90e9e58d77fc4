"""HSTU encoder (Zhai et al., "Actions Speak Louder than Words", ICML'24) over jagged sequences.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/hstu.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Each block, on x of shape (N, d) (the events of B rows packed together):

    u, v, q, k = split(SiLU(LayerNorm(x) · W_uvqk))            # one fused projection
    a = hstu_attention(q, k, v, rab)                            # SiLU(QKᵀ + rab) / N, causal
    x = x + W_o · Dropout(u ⊙ LayerNorm(a))

as in generative-recommenders' `research/modeling/sequential/hstu.py` (layer norms without
learned scale, eps 1e-6; W_uvqk ~ N(0, 0.02²) without bias; W_o Xavier-uniform with bias).
`rab` is `RelativeBias`: a learned bias over the relative position (2N − 1 values) plus a learned
bias over the bucketized gap between the query's time and the key's time (129 values).
Input features: `item · √d + position` (`ItemAndPosition`, the base config's).

The time bias of position i reads the query time `SequenceRows.query_ts`: the next event's
timestamp, and at a row's last position the target's request time (the reference pads that one
with the padding timestamp 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifeseq.models.blocks.checks import check_dropout, check_positive
from lifeseq.models.blocks.jagged_attention import LengthGroup, RelativeBiasInputs, hstu_attention
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows

LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class HstuConfig:
    """YAML `encoder.init_args.config` of `Hstu`.

    Attributes:
        blocks: layers.
        heads: attention heads.
        attention_dim: q/k width per head.
        linear_dim: u/v width per head.
        dropout: dropout on `u ⊙ LayerNorm(a)`.
        num_time_buckets: time-bias buckets (the table has one more entry).
        length_bucket: rows are padded to a multiple of this inside attention.
    """

    blocks: int = 2
    heads: int = 1
    attention_dim: int = 50
    linear_dim: int = 50
    dropout: float = 0.2
    num_time_buckets: int = 128
    length_bucket: int = 32

    def __post_init__(self) -> None:
        for name in ("blocks", "heads", "attention_dim", "linear_dim", "num_time_buckets",
                     "length_bucket"):  # fmt: skip
            check_positive(f"HstuConfig.{name}", getattr(self, name))
        check_dropout("HstuConfig.dropout", self.dropout)


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = HstuConfig()


class RelativeBias(nn.Module):
    """HSTU's `rab` tables: position bias over j − i and time bias over `time_bucket` buckets.

    Args:
        max_len: longest row N (the position table has 2N − 1 entries).
        num_time_buckets: largest time bucket (the table has one more entry; reference: 128).
    """

    def __init__(self, max_len: int, num_time_buckets: int = 128) -> None:
        super().__init__()
        self.max_len = max_len
        self.position_weight = nn.Parameter(torch.empty(2 * max_len - 1).normal_(0.0, 0.02))
        self.time_weight = nn.Parameter(torch.empty(num_time_buckets + 1).normal_(0.0, 0.02))

    def forward(self, key_ts: torch.Tensor, query_ts: torch.Tensor) -> RelativeBiasInputs:
        """Bias inputs for events with timestamps `key_ts` (N,) and query times `query_ts` (N,)."""
        return RelativeBiasInputs(
            position_weight=self.position_weight,
            time_weight=self.time_weight,
            key_ts=key_ts,
            query_ts=query_ts,
            max_len=self.max_len,
        )


class HstuBlock(nn.Module):
    """One HSTU layer (see the module docstring).

    Args:
        dim: model width d.
        heads: attention heads H.
        attention_dim: q/k width per head.
        linear_dim: u/v width per head.
        dropout: dropout on `u ⊙ LayerNorm(a)` before W_o.
        normalizer: N dividing the attention weights (the padded maximum length).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        attention_dim: int,
        linear_dim: int,
        dropout: float,
        normalizer: int,
    ) -> None:
        super().__init__()
        self.heads, self.attention_dim, self.linear_dim = heads, attention_dim, linear_dim
        self.normalizer = normalizer
        width = heads * (2 * linear_dim + 2 * attention_dim)
        self.uvqk = nn.Parameter(torch.empty(dim, width).normal_(0.0, 0.02))
        self.output = nn.Linear(heads * linear_dim, dim)
        nn.init.xavier_uniform_(self.output.weight)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        offsets: torch.Tensor,
        bias: RelativeBiasInputs | None,
        groups: list[LengthGroup] | None = None,
    ) -> torch.Tensor:
        """x: (N, d) jagged by `offsets` (B + 1,) → (N, d)."""
        h, dl, da = self.heads, self.linear_dim, self.attention_dim
        projected = F.silu(F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS) @ self.uvqk)
        u, v, q, k = torch.split(projected, [h * dl, h * dl, h * da, h * da], dim=-1)
        attended = hstu_attention(
            q.view(-1, h, da), k.view(-1, h, da), v.view(-1, h, dl),
            offsets, bias, self.normalizer, groups,
        ).reshape(-1, h * dl)  # (N, H·dl)  # fmt: skip
        normed = F.layer_norm(attended, attended.shape[-1:], eps=LAYER_NORM_EPS)
        return x + self.output(self.dropout(u * normed))  # (N, d)


class Hstu(SequenceEncoder):
    """A stack of `HstuBlock`s, each with its own `RelativeBias` (as in the reference); causal.

    Args:
        dims: the data's sizes (`embedding_dim` = d, `max_len` = N).
        config: the architecture.
    """

    causal = True

    def __init__(self, dims: ModelDims, config: HstuConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        c, d = config, dims.embedding_dim
        self.blocks = nn.ModuleList(
            HstuBlock(d, c.heads, c.attention_dim, c.linear_dim, c.dropout, normalizer=dims.max_len)
            for _ in range(c.blocks)
        )
        self.biases = nn.ModuleList(
            RelativeBias(dims.max_len, c.num_time_buckets) for _ in range(c.blocks)
        )

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) embedded events of `rows` → (N, d)."""
        groups = rows.length_groups(self.config.length_bucket)
        for block, bias in zip(self.blocks, self.biases, strict=True):
            x = block(x, rows.offsets, bias(rows.key_ts, rows.query_ts), groups)  # (N, d)
        return x
