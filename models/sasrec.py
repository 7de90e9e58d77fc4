"""SASRec encoder (Kang & McAuley, ICDM'18) over jagged sequences, the HSTU baseline.

Each block, on x of shape (N, d), follows the reference SASRec (and generative-recommenders'
`sasrec.py`): `q = LayerNorm(x)`; `x = q + MHA(q, x, x)` (causal softmax attention);
`x = LayerNorm(x)`; `x = x + FFN(x)` with FFN = Linear → ReLU → Dropout → Linear → Dropout.
A final LayerNorm follows the last block. Same inputs, loss and evaluation as HSTU
(`models.generative`), so the comparison is fair.
"""

from __future__ import annotations

import torch
from torch import nn

from models.jagged_attention import LengthGroup, softmax_attention


class SasRecBlock(nn.Module):
    """One SASRec layer.

    Args:
        dim: model width d (split over `heads`).
        heads: attention heads.
        ffn_dim: hidden width of the point-wise feed-forward network.
        dropout: dropout of the attention weights, the attention output and the FFN.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SASRec: dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout_p = heads, dropout
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.attention_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim), nn.Dropout(dropout),
        )  # fmt: skip

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, groups: list[LengthGroup] | None = None
    ) -> torch.Tensor:
        """x: (N, d) jagged by `offsets` (B + 1,) → (N, d)."""
        d, h = x.shape[-1], self.heads
        query_input = self.attention_norm(x)
        wq, wk, wv = self.qkv.weight.split(d)
        bq, bk, bv = self.qkv.bias.split(d)
        q = (query_input @ wq.T + bq).view(-1, h, d // h)
        k = (x @ wk.T + bk).view(-1, h, d // h)
        v = (x @ wv.T + bv).view(-1, h, d // h)
        dropout = self.dropout_p if self.training else 0.0
        attended = softmax_attention(q, k, v, offsets, dropout, groups).reshape(-1, d)
        x = query_input + self.attention_dropout(self.attention_out(attended))
        x = self.ffn_norm(x)
        return x + self.ffn(x)


class SasRecEncoder(nn.Module):
    """A stack of `SasRecBlock`s followed by a LayerNorm.

    Args:
        dim, heads, ffn_dim, dropout: see `SasRecBlock`.
        blocks: number of layers.
    """

    def __init__(self, dim: int, blocks: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SasRecBlock(dim, heads, ffn_dim, dropout) for _ in range(blocks)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, groups: list[LengthGroup]
    ) -> torch.Tensor:
        """x: (N, d) jagged by `offsets` → (N, d)."""
        for block in self.blocks:
            x = block(x, offsets, groups)
        return self.final_norm(x)
