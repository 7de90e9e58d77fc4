"""Input features of sequence encoders: the events' looked-up item rows → the encoder's input.

A swappable part of every sequential model (YAML `model.init_args.features`), so a model that
does not want positions does not get them:

* `ItemAndPosition` — `item · √d + position`, then dropout (SASRec, HSTU); positions count
  from a row's oldest event, or with `reverse` back from its newest (`reversed_positions`);
* `ItemOnly` — the item rows, then dropout (recurrent and convolutional models, whose order is
  in their structure).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lifeseq.models.blocks.checks import check_dropout
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.user_embedding import UserEmbeddingConfig
from lifeseq.models.interfaces import InputFeatures, ModelDims, SequenceRows


def reversed_positions(rows: SequenceRows) -> torch.Tensor:
    """(N,) int64 position of each event counted back from its row's last event (last = 0,
    oldest = length − 1), from the row offsets (traceable with a dynamic length: serving's
    `SequenceRows.single`)."""
    index = torch.arange(rows.positions.shape[0], device=rows.offsets.device)  # (N,)
    row = torch.searchsorted(rows.offsets, index, right=True) - 1  # (N,) each event's row
    return rows.offsets[1:][row] - 1 - index


class ItemAndPosition(InputFeatures):
    """`Dropout(item · √d + position_emb[position])`, a learned absolute position table of
    `dims.max_len` rows (truncated-normal init, std √(1/d), as the HSTU reference).

    With `reverse` the position counts back from the row's newest event ("Revisiting
    Self-Attentive Sequential Recommendation"; SASRec's left-padded original behaves so): the
    most recent event has the same position embedding whatever the row's length. Position i of
    a training row of length L then reads L − 1 − i, i.e. how many events follow it in its row
    (never which); at evaluation a target that follows the whole row (leave-one-out) sees the
    positions serving gives its history.

    Args:
        dims: the data's sizes (`embedding_dim`, `max_len`).
        dropout: dropout on the sum.
        reverse: count positions back from each row's last event (last = 0).
        user: add the row's user embedding (hashed user table, width d) to every position —
            SASRec's optional explicit user modelling; None (default): no user table.
    """

    def __init__(
        self,
        dims: ModelDims,
        dropout: float = 0.2,
        reverse: bool = False,
        user: UserEmbeddingConfig | None = None,
    ) -> None:
        super().__init__()
        check_dropout("ItemAndPosition.dropout", dropout)
        self.reverse = reverse
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
        positions = reversed_positions(rows) if self.reverse else rows.positions  # (N,)
        x = x + self.position(positions)  # (N, d)
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
