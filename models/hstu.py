"""HSTU encoder (Zhai et al., "Actions Speak Louder than Words", ICML'24) over jagged sequences.

Each block, on x of shape (N, d) (the events of B rows packed together):

    u, v, q, k = split(SiLU(LayerNorm(x) · W_uvqk))            # one fused projection
    a = hstu_attention(q, k, v, rab)                            # SiLU(QKᵀ + rab) / N, causal
    x = x + W_o · Dropout(u ⊙ LayerNorm(a))

as in generative-recommenders' `research/modeling/sequential/hstu.py` (layer norms without
learned scale, eps 1e-6; W_uvqk ~ N(0, 0.02²) without bias; W_o Xavier-uniform with bias).
`rab` is `RelativeBias`: a learned bias over the relative position (2N − 1 values) plus a learned
bias over the bucketized gap between the query's time and the key's time (129 values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.jagged_attention import LengthGroup, RelativeBiasInputs, hstu_attention

LAYER_NORM_EPS = 1e-6


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
        ).reshape(-1, h * dl)  # fmt: skip
        normed = F.layer_norm(attended, attended.shape[-1:], eps=LAYER_NORM_EPS)
        return x + self.output(self.dropout(u * normed))


class HstuEncoder(nn.Module):
    """A stack of `HstuBlock`s, each with its own `RelativeBias` (as in the reference).

    Args:
        dim, heads, attention_dim, linear_dim, dropout: see `HstuBlock`.
        blocks: number of layers.
        max_len: longest row N (normalizer and position table size).
        num_time_buckets: see `RelativeBias`.
    """

    def __init__(
        self,
        dim: int,
        blocks: int,
        heads: int,
        attention_dim: int,
        linear_dim: int,
        dropout: float,
        max_len: int,
        num_time_buckets: int = 128,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            HstuBlock(dim, heads, attention_dim, linear_dim, dropout, normalizer=max_len)
            for _ in range(blocks)
        )
        self.biases = nn.ModuleList(RelativeBias(max_len, num_time_buckets) for _ in range(blocks))

    def forward(
        self,
        x: torch.Tensor,
        offsets: torch.Tensor,
        key_ts: torch.Tensor,
        query_ts: torch.Tensor,
        groups: list[LengthGroup],
    ) -> torch.Tensor:
        """x: (N, d) jagged by `offsets`; `key_ts`, `query_ts`: (N,) → (N, d)."""
        for block, bias in zip(self.blocks, self.biases, strict=True):
            x = block(x, offsets, bias(key_ts, query_ts), groups)
        return x
