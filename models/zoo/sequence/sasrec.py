"""SASRec encoder (Kang & McAuley, ICDM'18) over jagged sequences, the HSTU baseline.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/sasrec.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Each block, on x of shape (N, d), follows the reference SASRec (and generative-recommenders'
`sasrec.py`): `q = LayerNorm(x)`; `x = q + MHA(q, x, x)` (softmax attention, causal unless
`config.causal` is false); `x = LayerNorm(x)`; `x = x + FFN(x)` with FFN = Linear → ReLU →
Dropout → Linear → Dropout. A final LayerNorm follows the last block. Input features:
`item · √d + position` (`ItemAndPosition`). With `causal: false` every position attends to its
whole row: a bidirectional encoder for the masked-item (cloze) task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifeseq.models.blocks.checks import check_dropout, check_positive
from lifeseq.models.blocks.jagged_attention import LengthGroup, softmax_attention
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows


@dataclass(frozen=True)
class SasRecConfig:
    """YAML `encoder.init_args.config` of `SasRec`.

    Attributes:
        blocks: layers.
        heads: attention heads (d must divide by it).
        ffn_dim: hidden width of the point-wise feed-forward network.
        dropout: dropout of the attention weights, the attention output and the FFN.
        length_bucket: rows are padded to a multiple of this inside attention.
        causal: causal attention (next-item); false: bidirectional (masked-item).
    """

    blocks: int = 2
    heads: int = 1
    ffn_dim: int = 50
    dropout: float = 0.2
    length_bucket: int = 32
    causal: bool = True

    def __post_init__(self) -> None:
        for name in ("blocks", "heads", "ffn_dim", "length_bucket"):
            check_positive(f"SasRecConfig.{name}", getattr(self, name))
        check_dropout("SasRecConfig.dropout", self.dropout)


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = SasRecConfig()


class SasRecBlock(nn.Module):
    """One SASRec layer.

    Args:
        dim: model width d (split over `heads`).
        heads: attention heads.
        ffn_dim: hidden width of the point-wise feed-forward network.
        dropout: dropout of the attention weights, the attention output and the FFN.
        causal: causal attention.
    """

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, dropout: float, causal: bool = True
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SASRec: dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout_p, self.causal = heads, dropout, causal
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
        q = (query_input @ wq.T + bq).view(-1, h, d // h)  # (N, H, d/H)
        k = (x @ wk.T + bk).view(-1, h, d // h)
        v = (x @ wv.T + bv).view(-1, h, d // h)
        dropout = self.dropout_p if self.training else 0.0
        attended = softmax_attention(q, k, v, offsets, dropout, groups, self.causal)
        x = query_input + self.attention_dropout(self.attention_out(attended.reshape(-1, d)))
        x = self.ffn_norm(x)
        return x + self.ffn(x)  # (N, d)


class SasRec(SequenceEncoder):
    """A stack of `SasRecBlock`s followed by a LayerNorm.

    Args:
        dims: the data's sizes (`embedding_dim` = d).
        config: the architecture.
    """

    def __init__(self, dims: ModelDims, config: SasRecConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        self.causal = config.causal
        d = dims.embedding_dim
        self.blocks = nn.ModuleList(
            SasRecBlock(d, config.heads, config.ffn_dim, config.dropout, config.causal)
            for _ in range(config.blocks)
        )
        self.final_norm = nn.LayerNorm(d, eps=1e-8)

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) embedded events of `rows` → (N, d)."""
        groups = rows.length_groups(self.config.length_bucket)
        for block in self.blocks:
            x = block(x, rows.offsets, groups)  # (N, d)
        return self.final_norm(x)
