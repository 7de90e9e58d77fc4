"""User embeddings by the hashing trick: a table any sequence model can declare.

Users are not in the vocabulary (only items, categories and behaviors are), and a catalog of
users is huge and open, so a user is embedded by its 63-bit `features.batch.user_hash` taken
modulo a fixed number of buckets:

    row(user) = 1 + user_hash(user) % buckets        # table of buckets + 1 rows; row 0 = padding

Row 0 stays the padding row every table has (it embeds to zeros and learns nothing), so the
buckets are rows 1..buckets. An unseen user at serving time is hashed like any other: there is
no out-of-vocabulary user, only (trained or untrained) buckets.

Collisions: users that fall into the same bucket share one vector. With U users spread
uniformly over K buckets, a given user shares its bucket with about U / K others, and a fraction
1 - e^(-U/K) of users is not alone (K = 100,000: 0.9 % of ML-100K's 943 users, 45 % of 60,000
users). Raise `buckets` when users are many and the user vector matters; the table costs
buckets × dim floats.

A model declares the table (`UserEmbeddingConfig.table`) from its input features' or encoder's
`tables()`; `models.sequential.SequentialRecommender` then looks the rows' users up with the
items and hands them to both as `SequenceRows.user` (B, d_user). Serving fills the request's
`user_rows` from the table at the same row (`RequestInput` source `hashed:user@user_hash`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from lifeseq.models.blocks.checks import check_positive
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec

#: Embedding feature (and table name) of the user table.
USER_FEATURE = "user"
#: Request-program id field of the request's user hash (`RequestInput` `hashed:user@user_hash`).
USER_HASH_FIELD = "user_hash"

_Ids = TypeVar("_Ids", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class UserEmbeddingConfig:
    """YAML `user:` of a model with a user embedding.

    Attributes:
        buckets: hash buckets K (the table has K + 1 rows; see the module docstring for the
            collision rate).
        dim: width of a user vector; None = the item width d (`ModelDims.embedding_dim`).
    """

    buckets: int = 100_000
    dim: int | None = None

    def __post_init__(self) -> None:
        check_positive("UserEmbeddingConfig.buckets", self.buckets)
        if self.dim is not None:
            check_positive("UserEmbeddingConfig.dim", self.dim)

    def width(self, embedding_dim: int) -> int:
        """d_user: `dim`, or the item width `embedding_dim` when unset."""
        return self.dim if self.dim is not None else embedding_dim

    def table(self, embedding_dim: int) -> EmbeddingTableSpec:
        """The user table: `buckets + 1` rows of width `width(embedding_dim)`, feature `user`."""
        return EmbeddingTableSpec(
            USER_FEATURE, self.buckets + 1, self.width(embedding_dim), (USER_FEATURE,)
        )


def hashed_rows(hashes: _Ids, rows: int) -> _Ids:
    """Table rows of 63-bit user hashes (B,) in a hashed table of `rows` rows (K = rows - 1
    buckets): `1 + hash % K`, never the padding row 0. Works on int64 tensors and arrays alike
    (training and the serving scorer share it)."""
    return hashes % (rows - 1) + 1


__all__ = ["USER_FEATURE", "USER_HASH_FIELD", "UserEmbeddingConfig", "hashed_rows"]
