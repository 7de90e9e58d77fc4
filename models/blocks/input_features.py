"""Input features of sequence encoders: the events' looked-up item rows → the encoder's input.

A swappable part of every sequential model (YAML `model.init_args.features`), so a model that
does not want positions does not get them:

* `ItemAndPosition` — `item · √d + position`, then dropout (SASRec, HSTU);
* `ItemOnly` — the item rows, then dropout (recurrent and convolutional models, whose order is
  in their structure).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.blocks.checks import check_dropout
from models.blocks.embeddings import EmbeddingTableSpec
from models.blocks.user_embedding import UserEmbeddingConfig
from models.interfaces import InputFeatures, ModelDims, SequenceRows


class ItemAndPosition(InputFeatures):
    """`Dropout(item · √d + position_emb[position])`, a learned absolute position table of
    `dims.max_len` rows (truncated-normal init, std √(1/d), as the HSTU reference).

    Args:
        dims: the data's sizes (`embedding_dim`, `max_len`).
        dropout: dropout on the sum.
        user: add the row's user embedding (hashed user table, width d) to every position —
            SASRec's optional explicit user modelling; None (default): no user table.
    """

    def __init__(
        self, dims: ModelDims, dropout: float = 0.2, user: UserEmbeddingConfig | None = None
    ) -> None:
        super().__init__()
        check_dropout("ItemAndPosition.dropout", dropout)
        d = dims.embedding_dim
        if user is not None and user.width(d) != d:
            raise ValueError(
                f"ItemAndPosition.user.dim: the user vector is added to the items, so it must be "
                f"the item width {d} (or null), got {user.dim}"
            )
        self.user = user
        self._user_table = user.table(d) if user is not None else None
        self.scale = math.sqrt(d)
        self.position = nn.Embedding(dims.max_len, d)
        nn.init.trunc_normal_(self.position.weight, std=math.sqrt(1.0 / d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, item_rows: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """(N, d) item rows → (N, d) encoder input."""
        x = item_rows * self.scale  # (N, d)
        x = x + self.position(rows.positions)  # (N, d)
        if self.user is not None:
            x = x + rows.user_per_event()  # (N, d) the row's user at every position
        return self.dropout(x)  # (N, d)

    def tables(self) -> list[EmbeddingTableSpec]:
        """The user table when `user` is set."""
        return [self._user_table] if self._user_table is not None else []


class ItemOnly(InputFeatures):
    """`Dropout(item)`: no position signal.

    Args:
        dims: the data's sizes (unused; the common constructor signature).
        dropout: dropout on the item rows.
    """

    def __init__(self, dims: ModelDims, dropout: float = 0.0) -> None:
        super().__init__()
        check_dropout("ItemOnly.dropout", dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, item_rows: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """(N, d) item rows → (N, d) encoder input."""
        return self.dropout(item_rows)
