"""`SequentialRecommender`: a sequence encoder from the zoo, its input features and the item
table — the model every sequential task (next-item, masked-item) trains.

    model = SequentialRecommender(dims, encoder=Hstu, features=ItemAndPosition)
    out = model(SequenceStep(items, key_ts, query_ts, candidates))  # one embedding call
    out.user        # (N, d) user embedding after each position (L2-normalized for cosine)
    out.candidates  # (C, d) embeddings of `candidates` (the loss's items), same form

Two parts (`models.interfaces.SparseDenseModel`): `embeddings` holds the item table (one table
for the sequence's items and the candidates; TorchRec shards it) plus any table the encoder
declares; `dense` (`SequenceDense`) holds the input features, the encoder and, for cloze
training, the learned mask vector. Labels, negatives and losses belong to the tasks
(`trainers/tasks/`), not to the model.

Serving: `serving_spec()` traces `dense` on one user's row (`SequenceRequestProgram`): the item
rows of the history → the user embedding that ranks the next item against the L2-normalized
item index (`item_caches()["item_index"]`).

User table: when the input features or the encoder declare one (`models.blocks.user_embedding`,
the hashing trick), `forward` looks up each row's user (`SequenceStep.users`, the batch's
`user_ids`) in the same embedding call and passes the rows as `SequenceRows.user`; the request
program then takes `user_rows` (1, d_user), which serving reads from the table at the request's
hashed user id. Without one, nothing about the model changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec, build_embeddings
from lifeseq.models.blocks.seeding import seeded_init
from lifeseq.models.blocks.user_embedding import USER_FEATURE, USER_HASH_FIELD, hashed_rows
from lifeseq.models.interfaces import (
    InputFeatures,
    ItemCache,
    ModelDims,
    ProgramVariant,
    RequestInput,
    SequenceEncoder,
    SequenceRows,
    ServingSpec,
    SparseDenseModel,
    class_path,
    describe_module,
    rows_input,
)

L2_EPS = 1e-6
#: Embedding features of the item table: the rows' items, and the items a loss scores.
SEQUENCE_FEATURE, CANDIDATE_FEATURE = "sequence_item", "candidate_item"


@dataclass
class SequenceStep:
    """What one forward encodes.

    Attributes:
        items: Jagged item ids, B rows of at most `max_len` events.
        key_ts: (N,) int64 event times.
        query_ts: (N,) int64 each position's prediction time.
        candidates: (C,) int64 item ids to embed in the same lookup (the loss's positives and
            negatives; empty for none).
        mask: (N,) bool positions whose item is hidden behind the learned mask vector (cloze
            training and masked-item evaluation), or None.
        users: (B,) int64 `features.batch.user_hash` of each row's user (`GenerativeBatch.
            user_ids`); required by a model with a user table, ignored by the others.
    """

    items: Jagged
    key_ts: torch.Tensor
    query_ts: torch.Tensor
    candidates: torch.Tensor
    mask: torch.Tensor | None = None
    users: torch.Tensor | None = None


@dataclass
class SequenceOutput:
    """Per-position outputs of a `SequenceStep`.

    Attributes:
        user: (N, d) encoder output at each position (L2-normalized with `similarity: cosine`).
        lengths: (B,) row lengths of `user`.
        candidates: (C, d) embeddings of the step's candidate ids, in the same form.
    """

    user: torch.Tensor
    lengths: torch.Tensor
    candidates: torch.Tensor


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalize the last dimension (eps 1e-6): scores are cosines."""
    return F.normalize(x, dim=-1, eps=L2_EPS)


def unchanged(x: torch.Tensor) -> torch.Tensor:
    """The embedding as it is: scores are inner products (`similarity: dot`)."""
    return x


#: What each `similarity` does to user and item embeddings before their inner product.
SCORING = {"cosine": normalize, "dot": unchanged}


class SequenceDense(nn.Module):
    """The dense part: [mask] → input features → encoder → L2 norm (`similarity: cosine`).

    Args:
        features: the input features.
        encoder: the sequence encoder.
        mask_vector: width of a learned mask vector (cloze training), or None.
        similarity: `cosine` (L2-normalized outputs) or `dot` (outputs as they are).
    """

    def __init__(
        self,
        features: InputFeatures,
        encoder: SequenceEncoder,
        mask_vector: int | None = None,
        similarity: str = "cosine",
    ) -> None:
        super().__init__()
        self.features = features
        self.encoder = encoder
        self.similarity = similarity
        self.score_form = SCORING[similarity]
        self.mask = None
        if mask_vector is not None:
            self.mask = nn.Parameter(torch.empty(mask_vector).normal_(0.0, 0.02))

    def forward(
        self, item_rows: torch.Tensor, rows: SequenceRows, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, d) item rows of jagged `rows` → (N, d) outputs (L2-normalized for cosine)."""
        if mask is not None:
            if self.mask is None:
                raise ValueError("SequenceDense: a mask was given but the model has no mask vector")
            item_rows = torch.where(mask.unsqueeze(1), self.mask.to(item_rows.dtype), item_rows)
        x = self.features(item_rows, rows)  # (N, d)
        return self.score_form(self.encoder(x, rows))  # (N, d)


class SequentialRecommender(SparseDenseModel):
    """See the module docstring.

    Args:
        dims: the data's sizes, backend and seed.
        encoder: builds the encoder from `dims` (a zoo `SequenceEncoder` class or partial).
        features: builds the input features from `dims`.
        mask_vector: learn a mask vector (the masked-item task).
        similarity: `cosine` (default: user and item embeddings L2-normalized) or `dot` (raw
            inner products; `models.blocks.sampled_softmax.SoftmaxLossConfig.similarity`).
    """

    family = "sequential"

    def __init__(
        self,
        dims: ModelDims,
        encoder: Callable[[ModelDims], SequenceEncoder],
        features: Callable[[ModelDims], InputFeatures],
        mask_vector: bool = False,
        similarity: str = "cosine",
    ) -> None:
        super().__init__()
        if similarity not in SCORING:
            raise ValueError(f"similarity: expected one of {list(SCORING)}, got {similarity!r}")
        self.dims = dims
        # The embedding tables draw from their own seeded generator; the dense layers are
        # built under the global RNG seeded by `dims.seed` (features first, then the encoder).
        with seeded_init(dims.seed):
            built_features = features(dims)
            built_encoder = encoder(dims)
            dense = SequenceDense(
                built_features,
                built_encoder,
                dims.embedding_dim if mask_vector else None,
                similarity,
            )
        item = EmbeddingTableSpec(
            "item", dims.item_rows, dims.embedding_dim, (SEQUENCE_FEATURE, CANDIDATE_FEATURE)
        )
        tables = _merge_tables([item, *built_features.tables(), *built_encoder.tables()])
        self.embeddings = build_embeddings(tables, backend=dims.backend, seed=dims.seed)
        self.dense = dense
        #: d_user of the declared user table, or None without one.
        self.user_width: int | None = next(
            (t.embedding_dim for t in tables if USER_FEATURE in t.feature_names), None
        )

    @property
    def causal(self) -> bool:
        """Whether the encoder is causal."""
        return bool(self.dense.encoder.causal)

    def forward(self, step: SequenceStep) -> SequenceOutput:
        """Encode every row; embed the candidates in the same lookup.

        Raises:
            ValueError: a row longer than `dims.max_len`.
        """
        items = step.items
        if items.max_length > self.dims.max_len:
            raise ValueError(
                f"{type(self.dense.encoder).__name__}: a row of {items.max_length} events exceeds "
                f"max_len {self.dims.max_len}; collate with the same max_len"
            )
        ones = torch.ones_like(step.candidates)
        ids = {SEQUENCE_FEATURE: items, CANDIDATE_FEATURE: Jagged(step.candidates, ones)}
        if self.user_width is not None:
            ids[USER_FEATURE] = self._user_ids(step)
        looked_up = self.embeddings(ids)
        user_rows = looked_up[USER_FEATURE].values if USER_FEATURE in looked_up else None
        rows = SequenceRows.from_offsets(items.offsets, step.key_ts, step.query_ts, user_rows)
        user = self.dense(looked_up[SEQUENCE_FEATURE].values, rows, step.mask)
        return SequenceOutput(
            user=user,
            lengths=items.lengths,
            candidates=self.dense.score_form(looked_up[CANDIDATE_FEATURE].values),
        )

    def _user_ids(self, step: SequenceStep) -> Jagged:
        """The user table's ids of the step's rows: one hashed row per row (B,)."""
        users, rows = step.users, step.items.batch_size
        if users is None or users.shape != (rows,):
            got = "none" if users is None else f"shape {tuple(users.shape)}"
            raise ValueError(
                f"{type(self.dense.encoder).__name__} with {type(self.dense.features).__name__} "
                f"embeds users: SequenceStep.users must hold one user hash per row ({rows},), got "
                f"{got}; pass the batch's user_ids (features.batch.GenerativeBatch.user_ids)"
            )
        table_rows = self.embeddings.table_of(USER_FEATURE).num_embeddings
        ids = hashed_rows(users, table_rows)
        return Jagged(ids, torch.ones_like(ids))

    # --- items ----------------------------------------------------------------------------

    def item_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Scoring-form embeddings of item `ids` (M,) → (M, d): L2-normalized (cosine) or as
        they are (dot)."""
        out = self.embeddings({CANDIDATE_FEATURE: Jagged(ids, torch.ones_like(ids))})
        return self.dense.score_form(out[CANDIDATE_FEATURE].values)

    def item_table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Every item's scoring-form embedding, shape (V, d) (rows 0 and 1 included)."""
        return self.item_embeddings(torch.arange(self.dims.item_rows, device=device))

    # --- serving --------------------------------------------------------------------------

    def item_caches(self) -> dict[str, ItemCache]:
        """The retrieval index: every item's scoring-form embedding (L2-normalized for cosine)."""
        d = self.dims.embedding_dim
        compute = _normalize_items if self.dense.similarity == "cosine" else _items
        return {"item_index": ItemCache("item_index", (d,), compute, feeds_request=False)}

    def serving_spec(self) -> ServingSpec:
        """One user's row (1 ≤ L ≤ max_len events, oldest first) → (d,) user embedding."""
        d, max_len = self.dims.embedding_dim, self.dims.max_len
        append_mask = self.dense.mask is not None
        longest = max_len - 1 if append_mask else max_len
        d_user = self.user_width
        inputs = [
            RequestInput(
                rows_input(SEQUENCE_FEATURE),
                "float32",
                ("length", d),
                f"table:{SEQUENCE_FEATURE}@{SEQUENCE_FEATURE}",
            ),  # fmt: skip
            RequestInput("key_ts", "int64", ("length",), "ids:key_ts"),
            RequestInput("query_ts", "int64", ("length",), "ids:query_ts"),
        ]
        if d_user is not None:
            source = f"hashed:{USER_FEATURE}@{USER_HASH_FIELD}"  # the request's hashed user
            inputs.append(RequestInput(rows_input(USER_FEATURE), "float32", (1, d_user), source))

        def example(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
            n = sizes["length"]
            generator = torch.Generator().manual_seed(0)
            request = {
                rows_input(SEQUENCE_FEATURE): torch.randn(n, d, generator=generator),
                "key_ts": torch.arange(n, dtype=torch.int64),
                "query_ts": torch.arange(1, n + 1, dtype=torch.int64),
            }
            if d_user is not None:
                request[rows_input(USER_FEATURE)] = torch.randn(1, d_user, generator=generator)
            return request

        return ServingSpec(
            family=self.family,
            program=SequenceRequestProgram(self.dense, append_mask, d_user is not None),
            inputs=inputs,
            dims={"length": (1, longest)},
            variants=[ProgramVariant("model", {"length": min(8, longest)})],
            example=example,
        )

    def describe(self) -> dict[str, Any]:
        """Class paths and configs of the encoder and the input features."""
        dense = self.dense
        encoder = describe_module(dense.encoder)
        return {
            "encoder": encoder["class_path"],
            "encoder_config": encoder["config"],
            "features": class_path(dense.features),
            "causal": self.causal,
            "max_len": self.dims.max_len - (1 if dense.mask is not None else 0),
            "mask_vector": dense.mask is not None,
            "similarity": dense.similarity,
        }


def _normalize_items(item_rows: torch.Tensor, category_rows: torch.Tensor) -> torch.Tensor:
    return normalize(item_rows)


def _items(item_rows: torch.Tensor, category_rows: torch.Tensor) -> torch.Tensor:
    return item_rows


def _merge_tables(tables: list[EmbeddingTableSpec]) -> list[EmbeddingTableSpec]:
    """The tables once each: the input features and the encoder may both declare the user
    table, which they then share (it must be the same table).

    Raises:
        ValueError: two different tables of one name, naming both.
    """
    merged: dict[str, EmbeddingTableSpec] = {}
    for table in tables:
        seen = merged.setdefault(table.name, table)
        if seen != table:
            raise ValueError(
                f"two different embedding tables named {table.name!r}: {seen} and {table}; the "
                "input features and the encoder must declare the same one (e.g. the same "
                "UserEmbeddingConfig)"
            )
    return list(merged.values())


class SequenceRequestProgram(nn.Module):
    """One serving request of a sequential model, written so that `torch.export` traces it with
    a dynamic length: `{sequence_item_rows (L, d), key_ts (L,), query_ts (L,)[, user_rows (1,
    d_user)]}` → (d,) the user embedding after the last event (a masked-item model: at a mask
    position appended at the request time, the last `query_ts`).

    Args:
        dense: the trained model's dense part (shared, not copied).
        append_mask: append the mask position (masked-item models).
        with_user: the request carries the user's row of the user table (`user_rows`).
    """

    def __init__(self, dense: SequenceDense, append_mask: bool, with_user: bool = False) -> None:
        super().__init__()
        self.dense = dense
        self.append_mask = append_mask
        self.with_user = with_user

    def forward(self, request: dict[str, torch.Tensor]) -> torch.Tensor:
        """(d,) user embedding of the request."""
        item_rows = request[rows_input(SEQUENCE_FEATURE)]
        key_ts, query_ts = request["key_ts"], request["query_ts"]
        mask = None
        if self.append_mask:
            item_rows = torch.cat([item_rows, item_rows.new_zeros(1, item_rows.shape[1])])
            key_ts = torch.cat([key_ts, query_ts[-1:]])
            query_ts = torch.cat([query_ts, query_ts[-1:]])
            mask = torch.zeros(key_ts.shape[0], dtype=torch.bool, device=key_ts.device)
            mask[-1] = True
        user_rows = request[rows_input(USER_FEATURE)] if self.with_user else None
        user = self.dense(item_rows, SequenceRows.single(key_ts, query_ts, user_rows), mask)
        return user[-1]


__all__ = [
    "SequenceDense",
    "SequenceOutput",
    "SequenceRequestProgram",
    "SequenceStep",
    "SequentialRecommender",
    "normalize",
]
