"""BERT4Rec (Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM'19): a bidirectional post-LN Transformer encoder,
trained by the masked-item (cloze) task.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/bert4rec.yaml \
        --data.root OUT --trainer.default_root_dir RUN

On the input features x (N, d) (`item · √d + position`: `ItemAndPosition`, the base config's;
masked events hold the task's learned mask vector in place of their item), as in the paper and
its BERT-based reference code:

    x = Dropout(LayerNorm(x))                            # BERT's embedding LayerNorm
    per block:                                           # post-LN
        x = LayerNorm(x + Dropout(MHA(x, x, x)))         # bidirectional: the whole row
        x = LayerNorm(x + Dropout(W2 · GELU(W1 · x)))    # FFN of width 4·d by default
    out = GELU(W_P · x + b_P)                            # the paper's projection layer

`MHA` is `models.blocks.jagged_attention.softmax_attention(..., causal=False)` on the rows'
length groups: every position attends to every real event of its own row and to no padding
slot (tested in `tests/unit/test_bert4rec.py` and the conformance suite). The paper's per-item
output bias has no place in the cosine scoring every sequential model shares, so it is left out.
The masked-item task (`trainers.tasks.masked_item.MaskedItemModule`, `mask_ratio` 0.2) hides
events behind the mask vector in training and ranks the next item at a mask appended after the
history; the next-item task refuses this encoder (it is not causal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifeseq.models.blocks.checks import check_dropout, check_positive
from lifeseq.models.blocks.jagged_attention import LengthGroup, softmax_attention
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows

LAYER_NORM_EPS = 1e-12  # BERT's


@dataclass(frozen=True)
class Bert4RecConfig:
    """YAML `encoder.init_args.config` of `Bert4Rec`.

    Attributes:
        blocks: Transformer layers.
        heads: attention heads (d must divide by it).
        ffn_dim: hidden width of the feed-forward network; None: 4·d (the paper's).
        dropout: dropout of the embeddings, the attention weights, the attention output and
            the FFN output.
        length_bucket: rows are padded to a multiple of this inside attention.
    """

    blocks: int = 2
    heads: int = 2
    ffn_dim: int | None = None
    dropout: float = 0.1
    length_bucket: int = 32

    def __post_init__(self) -> None:
        for name in ("blocks", "heads", "length_bucket"):
            check_positive(f"Bert4RecConfig.{name}", getattr(self, name))
        if self.ffn_dim is not None:
            check_positive("Bert4RecConfig.ffn_dim", self.ffn_dim)
        check_dropout("Bert4RecConfig.dropout", self.dropout)


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = Bert4RecConfig()


class Bert4RecBlock(nn.Module):
    """One post-LN Transformer layer over jagged rows, bidirectional.

    Args:
        dim: model width d (split over `heads`).
        heads: attention heads.
        ffn_dim: hidden width of the feed-forward network.
        dropout: dropout of the attention weights, the attention output and the FFN output.

    Raises:
        ValueError: `dim` not divisible by `heads`.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(
                f"Bert4RecConfig.heads: the width d = {dim} is not divisible by heads = {heads}"
            )
        self.heads, self.dropout_p = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, groups: list[LengthGroup]
    ) -> torch.Tensor:
        """x: (N, d) jagged by `offsets` (B + 1,) → (N, d)."""
        d, h = x.shape[-1], self.heads
        q, k, v = (t.reshape(-1, h, d // h) for t in self.qkv(x).split(d, dim=-1))  # (N, H, d/H)
        dropout = self.dropout_p if self.training else 0.0
        attended = softmax_attention(q, k, v, offsets, dropout, groups, causal=False)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended.reshape(-1, d))))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))  # (N, d)


class Bert4Rec(SequenceEncoder):
    """Embedding LayerNorm, a stack of `Bert4RecBlock`s, the projection layer (see the module
    docstring). Bidirectional.

    Args:
        dims: the data's sizes (`embedding_dim` = d).
        config: the architecture.
    """

    causal = False

    def __init__(self, dims: ModelDims, config: Bert4RecConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        d = dims.embedding_dim
        self.input_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.input_dropout = nn.Dropout(config.dropout)
        ffn_dim = config.ffn_dim or 4 * d
        self.blocks = nn.ModuleList(
            Bert4RecBlock(d, config.heads, ffn_dim, config.dropout) for _ in range(config.blocks)
        )
        self.projection = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) embedded events of `rows` → (N, d)."""
        groups = rows.length_groups(self.config.length_bucket)
        x = self.input_dropout(self.input_norm(x))  # (N, d)
        for block in self.blocks:
            x = block(x, rows.offsets, groups)
        return F.gelu(self.projection(x))  # (N, d)
