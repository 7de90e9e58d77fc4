"""BST (Chen et al., "Behavior Sequence Transformer for E-commerce Recommendation in Alibaba",
DLP-KDD'19): a Transformer over the user's most recent behaviors with the target item as one
more token; every token's output, concatenated, and the target go to an MLP tower.

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/bst.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Per target j (t_j = [item_emb, category_emb] of the target, request time ts_j), over the
n = `recent_len` most recent behaviors of its window (oldest first;
`models.blocks.recent_behaviors`):

    x_i   = W_in [item_emb, category_emb, c_ij] + p_i    i < n: behavior i      (d_m)
    x_n   = W_in [t_j, c_t] + p_n                        the target token       (d_m)
    X     = post-LN Transformer block(s)(x_0 .. x_n)     (n + 1, d_m)
    logit = MLP([flatten(X), t_j])                       (n + 1)·d_m + 2D → 1

`c_ij` are the target-behavior cross features every lifelong CTR model here shares (behavior
type, the log2 bucket of ts_j − ts_i — the paper's time-gap "position" — and whether the
behavior's category is t_j's); `c_t` is a learned vector in their place for the target token;
`p` is a learned embedding of the slot (recency rank; the target's slot last). Each block, as
the paper's (a standard post-LN Transformer layer, LeakyReLU FFN):

    S' = LayerNorm(S + Dropout(MultiHead(S)))
    S  = LayerNorm(S' + Dropout(W2 · LeakyReLU(W1 · S')))

A slot outside the target's window (a window shorter than n) is masked as a key and its output
is zeroed before the flatten, so a target reads only events of its own window; the target token
is always a valid key. The paper's other features (user profile, context, cross features) have
no counterpart in this data beyond `c_ij`; the tower is ReLU with the base config's widths
(the paper: LeakyReLU 1024-512-256), so that the CTR models compare on their sequence part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifeseq.models.blocks.checks import check_dropout, check_positive, check_widths
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.mlp import mlp
from lifeseq.models.blocks.recent_behaviors import RecentBehaviorInputs
from lifeseq.models.ctr_features import CtrFeatures, CtrOutput
from lifeseq.models.interfaces import CtrModel, ModelDims


@dataclass(frozen=True)
class BstConfig:
    """YAML `model.init_args.config` of `Bst`.

    Attributes:
        recent_len: n, the most recent behaviors of each window in the sequence (the paper: 20).
        model_dim: d_m, the Transformer's width (split over `heads`).
        heads: attention heads (the paper: 8).
        blocks: Transformer layers (the paper: 1).
        ffn_dim: hidden width of the feed-forward network; None: 4·d_m.
        dropout: dropout of the token inputs, the attention weights, the attention output and
            the FFN output (the paper: 0.2).
        tower_hidden: hidden widths of the tower MLP.

    Raises:
        ValueError: a value out of range, or `model_dim` not divisible by `heads`.
    """

    recent_len: int = 20
    model_dim: int = 32
    heads: int = 4
    blocks: int = 1
    ffn_dim: int | None = None
    dropout: float = 0.2
    tower_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        for name in ("recent_len", "model_dim", "heads", "blocks"):
            check_positive(f"BstConfig.{name}", getattr(self, name))
        if self.ffn_dim is not None:
            check_positive("BstConfig.ffn_dim", self.ffn_dim)
        check_dropout("BstConfig.dropout", self.dropout)
        widths = check_widths("BstConfig.tower_hidden", self.tower_hidden)
        object.__setattr__(self, "tower_hidden", widths)
        if self.model_dim % self.heads:
            raise ValueError(
                f"BstConfig.heads: model_dim = {self.model_dim} is not divisible by "
                f"heads = {self.heads}"
            )


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = BstConfig()


class BstBlock(nn.Module):
    """One post-LN Transformer layer over a dense (T, S) token block with a key mask.

    Args:
        dim: width d_m (split over `heads`).
        heads: attention heads.
        ffn_dim: hidden width of the feed-forward network.
        dropout: dropout of the attention weights, the attention output and the FFN output.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout_p = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.LeakyReLU(), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: (T, S, d_m) tokens, valid: (T, S) bool (the keys a token may attend to; every
        row needs one) → (T, S, d_m)."""
        t, s, d = x.shape
        h = self.heads
        q, k, v = (
            y.reshape(t, s, h, d // h).transpose(1, 2) for y in self.qkv(x).split(d, dim=-1)
        )  # (T, H, S, d_m / H) each
        mask = valid[:, None, None, :]  # (T, 1, 1, S)
        dropout = self.dropout_p if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(t, s, d)  # (T, S, d_m)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))  # (T, S, d_m)


class Bst(CtrModel):
    """See the module docstring.

    Args:
        dims: the data's sizes.
        config: the sequence length, the Transformer and the tower; None: `DEFAULT_CONFIG`.
            (Optional so that jsonargparse, switching `configs/ctr/base.yaml`'s `LifelongCtr`
            to this class, drops `LifelongCtr`'s `config` instead of merging its keys into
            this one: a dataclass-typed `config` of both classes would be merged.)
    """

    def __init__(self, dims: ModelDims, config: BstConfig | None = None) -> None:
        super().__init__()
        config = DEFAULT_CONFIG if config is None else config
        self.config = config
        self.dims = dims
        self.behaviors = RecentBehaviorInputs(dims, config.recent_len)
        width = self.behaviors.inherent_dim + self.behaviors.cross_dim
        self.token_proj = nn.Linear(width, config.model_dim)
        self.target_cross = nn.Parameter(torch.randn(self.behaviors.cross_dim) * 0.02)
        self.position = nn.Parameter(torch.randn(config.recent_len + 1, config.model_dim) * 0.02)
        self.input_dropout = nn.Dropout(config.dropout)
        ffn_dim = config.ffn_dim or 4 * config.model_dim
        self.blocks = nn.ModuleList(
            BstBlock(config.model_dim, config.heads, ffn_dim, config.dropout)
            for _ in range(config.blocks)
        )
        tokens = (config.recent_len + 1) * config.model_dim
        self.tower = mlp(tokens + self.behaviors.inherent_dim, config.tower_hidden)

    def tables(self) -> list[EmbeddingTableSpec]:
        """`item` and `category` (history and targets share them)."""
        return self.behaviors.tables()

    def feature_ids(self) -> dict[str, str]:
        """Each feature's id field."""
        return self.behaviors.feature_ids()

    def forward(self, features: CtrFeatures) -> CtrOutput:
        """(T,) logits."""
        _, recent = self.behaviors(features)
        target = recent.target  # (T, 2D)
        t = target.shape[0]
        events = torch.cat([recent.inherent, recent.cross.cat()], dim=-1)  # (T, n, 5D)
        target_token = torch.cat([target, self.target_cross.expand(t, -1)], dim=-1)  # (T, 5D)
        tokens = torch.cat([events, target_token.unsqueeze(1)], dim=1)  # (T, n + 1, 5D)
        x = self.input_dropout(self.token_proj(tokens) + self.position)  # (T, n + 1, d_m)
        valid = torch.cat([recent.valid, recent.valid.new_ones(t, 1)], dim=1)  # (T, n + 1)
        for block in self.blocks:
            x = block(x, valid)
        x = torch.where(valid.unsqueeze(-1), x, torch.zeros_like(x))  # (T, n + 1, d_m)
        logits = self.tower(torch.cat([x.flatten(1), target], dim=1)).squeeze(1)  # (T,)
        return CtrOutput(logits)
