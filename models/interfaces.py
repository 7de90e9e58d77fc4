"""The small interfaces the zoo implements, and what the data fixes for every model.

A zoo model (`models/zoo/`) is one `nn.Module` with one typed config dataclass. Its constructor
takes `(dims: ModelDims, config: ...)`; YAML picks it by `class_path` (LightningCLI /
jsonargparse: a typo is refused, listing the valid choices) and the training module calls it
with the `ModelDims` of the data. It implements one of:

* `SequenceEncoder` — jagged embedded events → one vector per position; `causal` says whether
  position i reads only events up to i (next-item task) or the whole row (masked-item task).
* `InputFeatures` — the events' looked-up item rows → the encoder's input (today's
  `item · √d + position`, the item alone, ...), swappable per model in YAML.
* `LongTermUnit` — lifelong CTR: a target's whole history window → one vector (a GSU that
  retrieves the top-K behaviors for an ESU, or a unit that summarizes the window otherwise).
* `CtrModel` — a whole CTR model's dense part: an embedded batch → logits.

Composites hold the embedding tables a model declares next to its dense part, which is how
export and serving split every model with no per-model code: `SparseDenseModel` has exactly two
children, `embeddings` (sharded by TorchRec) and `dense` (everything else, data-parallel; the
part `torch.export` traces). `models.sequential.SequentialRecommender` (item table + input
features + encoder) and `models.ctr.CtrRecommender` (a `CtrModel` + its tables) are the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lifeseq.features.schema import FeatureSchema
from lifeseq.models.blocks.checks import check_positive
from lifeseq.models.blocks.embeddings import (
    BACKENDS,
    EmbeddingCollectionModule,
    EmbeddingTableSpec,
)
from lifeseq.models.blocks.jagged_attention import LengthGroup, length_groups
from lifeseq.models.blocks.sampled_softmax import FIRST_ITEM_ID

if TYPE_CHECKING:
    from lifeseq.models.ctr_features import CtrEvents, CtrTargets


@dataclass(frozen=True)
class ModelDims:
    """What the data and the platform fix for a model: table sizes and widths (from the
    run's `FeatureSchema`), the embedding backend and the initialisation seed.

    Attributes:
        item_rows: rows of the item table (ids 0 padding, 1 OOV, items from 2).
        category_rows: rows of the category table.
        behavior_rows: rows of the behavior-type table.
        embedding_dim: D, the width of every embedding table.
        gap_buckets: log2 time-gap buckets (`FeatureConfig.time_gap_buckets`).
        max_len: longest sequence row a sequence model sees (position tables, HSTU's N).
        max_history: most recent events a CTR target sees.
        backend: embedding backend, `torchrec` or `torch`.
        seed: initialisation seed (the same weights on every rank and world size).
    """

    item_rows: int
    category_rows: int = 3
    behavior_rows: int = 3
    embedding_dim: int = 16
    gap_buckets: int = 32
    max_len: int = 200
    max_history: int = 1024
    backend: str = "torch"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "item_rows", "category_rows", "behavior_rows", "embedding_dim", "gap_buckets",
            "max_len", "max_history",
        ):  # fmt: skip
            check_positive(f"ModelDims.{name}", getattr(self, name))
        if self.item_rows <= FIRST_ITEM_ID:
            raise ValueError(
                f"ModelDims.item_rows: the item table needs items (>= 3 rows), got {self.item_rows}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(
                f"embedding.backend: expected one of {list(BACKENDS)}, got {self.backend!r}"
            )

    @staticmethod
    def from_schema(
        schema: FeatureSchema, backend: str = "torch", seed: int = 0, extra_positions: int = 0
    ) -> ModelDims:
        """Sizes from the run's feature schema; `extra_positions` lengthens `max_len` (the
        masked-item task appends a mask position to a full row)."""
        return ModelDims(
            item_rows=schema.tables["item"].num_embeddings,
            category_rows=schema.tables["category"].num_embeddings,
            behavior_rows=schema.tables["behavior"].num_embeddings,
            embedding_dim=schema.config.embedding_dim,
            gap_buckets=schema.config.time_gap_buckets,
            max_len=schema.config.max_len + extra_positions,
            max_history=schema.config.max_history,
            backend=backend,
            seed=seed,
        )


# --- sequence encoders ------------------------------------------------------------------------


@dataclass
class SequenceRows:
    """The row structure of N events of B rows packed together (what an encoder needs beside
    the embedded events).

    Attributes:
        offsets: (B + 1,) int64 row offsets.
        positions: (N,) int64 position of each event in its row (0 = oldest).
        key_ts: (N,) int64 event times.
        query_ts: (N,) int64 the time each position's prediction is made for (the next event's
            time; at a row's last position the target's request time).
        whole_row: one row holding every event, unpadded (a serving request): attention
            groups are a plain view, with no data-dependent shapes, so `torch.export` traces it.
        user: (B, d_user) each row's user embedding (`models.blocks.user_embedding`), or None
            when neither the input features nor the encoder declare a user table.
    """

    offsets: torch.Tensor
    positions: torch.Tensor
    key_ts: torch.Tensor
    query_ts: torch.Tensor
    whole_row: bool = False
    user: torch.Tensor | None = None
    _groups: dict[int, list[LengthGroup]] = field(default_factory=dict, repr=False)

    @staticmethod
    def from_offsets(
        offsets: torch.Tensor,
        key_ts: torch.Tensor,
        query_ts: torch.Tensor,
        user: torch.Tensor | None = None,
    ) -> SequenceRows:
        """Rows of a jagged batch (positions counted from each row's start)."""
        lengths = offsets[1:] - offsets[:-1]
        n = key_ts.shape[0]
        positions = torch.arange(n, device=offsets.device) - torch.repeat_interleave(
            offsets[:-1], lengths
        )
        return SequenceRows(offsets, positions, key_ts, query_ts, user=user)

    @staticmethod
    def single(
        key_ts: torch.Tensor, query_ts: torch.Tensor, user: torch.Tensor | None = None
    ) -> SequenceRows:
        """One request's row of L ≥ 1 events (no padding, traceable with a dynamic L); `user`
        (1, d_user) or None."""
        n, device = key_ts.shape[0], key_ts.device
        offsets = torch.arange(2, device=device) * n  # [0, L]
        return SequenceRows(offsets, torch.arange(n, device=device), key_ts, query_ts, True, user)

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) row lengths."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def batch_size(self) -> int:
        """B."""
        return self.offsets.shape[0] - 1

    def user_per_event(self) -> torch.Tensor:
        """(N, d_user) each event's row's user embedding (a view for a whole row).

        Raises:
            ValueError: the rows carry no user embedding.
        """
        if self.user is None:
            raise ValueError(
                "SequenceRows.user is None: declare the user table "
                "(models.blocks.user_embedding.UserEmbeddingConfig.table) in the input features' "
                "or the encoder's tables()"
            )
        n = self.positions.shape[0]
        if self.whole_row:
            return self.user.expand(n, -1)  # (L, d_user)
        return torch.repeat_interleave(self.user, self.lengths, dim=0, output_size=n)

    def length_groups(self, bucket: int) -> list[LengthGroup]:
        """`models.blocks.jagged_attention.length_groups` of the rows (computed once per bucket
        size and forward: every block of an encoder reuses them)."""
        if self.whole_row:
            return [LengthGroup.whole_row(self.key_ts.shape[0], self.key_ts.device)]
        if bucket not in self._groups:
            self._groups[bucket] = length_groups(self.offsets, bucket)
        return self._groups[bucket]


class SequenceEncoder(nn.Module):
    """Embedded events of jagged rows → one vector per position.

    Implementations: `forward(x (N, d), rows: SequenceRows) -> (N, d)`; set `causal` (True:
    position i depends only on events 0..i of its row — the next-item task reads position i as
    the prediction of event i + 1; False: every position reads its whole row — the masked-item
    task). A row's output never depends on other rows, nor on how rows are padded internally.
    """

    causal: bool = True

    def tables(self) -> list[EmbeddingTableSpec]:
        """Embedding tables the encoder needs beyond the item table (default: none; the user
        table's rows arrive as `rows.user`)."""
        return []


class InputFeatures(nn.Module):
    """The events' looked-up item rows → the encoder's input, `forward(item_rows (N, d), rows:
    SequenceRows) -> (N, d)`."""

    def tables(self) -> list[EmbeddingTableSpec]:
        """Embedding tables the features need beyond the item table (default: none; e.g. the
        user table, whose rows arrive as `rows.user`)."""
        return []


# --- lifelong CTR -----------------------------------------------------------------------------


@dataclass
class LongTermOutput:
    """What a long-term unit gives per target.

    Attributes:
        out: (T, out_dim) the unit's representation of each target's window.
        aux_logits: (T,) logits of an auxiliary CTR task on the targets (SIM soft), or None.
        aux_weight: weight of that auxiliary task's BCE in the loss.
    """

    out: torch.Tensor
    aux_logits: torch.Tensor | None = None
    aux_weight: float = 0.0


class LongTermUnit(nn.Module):
    """A long-term unit of lifelong CTR: every target's whole history window → one vector.

    Implementations set `out_dim` and define `forward(inputs: LifelongInputs) ->
    LongTermOutput`; a unit that needs embedding tables of its own declares them in `tables()`
    and reads their rows from `inputs.embedded[feature]` (`feature_ids` says which id field each
    feature looks up), and a unit whose per-item work can be done once per item for serving
    declares it in `item_caches()` and reads it from `inputs.cached[name]` when present.
    """

    out_dim: int

    def tables(self) -> list[EmbeddingTableSpec]:
        """Embedding tables beyond the shared `item` and `category` tables (default: none)."""
        return []

    def feature_ids(self) -> dict[str, str]:
        """Embedding feature → id field (`models.ctr.CTR_ID_FIELDS`) of `tables()`' features."""
        return {}

    def item_caches(self) -> dict[str, ItemCache]:
        """Per-item tensors serving reads instead of recomputing them (default: none)."""
        return {}


@dataclass(frozen=True)
class ItemCache:
    """A tensor that depends on an item alone (e.g. TWIN's ESU keys), exported once per item so
    that a serving request gathers rows instead of recomputing them.

    Attributes:
        name: cache name; also its input name in the request program.
        row_shape: shape of one item's entry, e.g. `(heads, head_dim)`.
        compute: `(item_rows (M, D), category_rows (M, D)) -> (M, *row_shape)`: the entries of
            M items from their item-table rows and their category's rows.
        feeds_request: the request program reads it, gathered at the history's items; False: a
            catalog index the scorer scans (the sequential models' L2-normalized items).
    """

    name: str
    row_shape: tuple[int, ...]
    compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    feeds_request: bool = True


class CtrModel(nn.Module):
    """The dense part of a CTR model, `forward(features: models.ctr.CtrFeatures) ->
    models.ctr.CtrOutput`, with the embedding tables it reads (`tables`, `feature_ids`) and
    optional per-item caches. `models.ctr.CtrRecommender` pairs it with its tables."""

    def tables(self) -> list[EmbeddingTableSpec]:
        """Every embedding table the model reads (history and target features share a table)."""
        raise NotImplementedError(f"{type(self).__name__}.tables")

    def feature_ids(self) -> dict[str, str]:
        """Embedding feature → the id field it looks up (`models.ctr.CTR_ID_FIELDS`)."""
        raise NotImplementedError(f"{type(self).__name__}.feature_ids")

    def item_caches(self) -> dict[str, ItemCache]:
        """Per-item tensors serving reads instead of recomputing them (default: none)."""
        return {}

    #: Whether the model reads events beyond a window's most recent ones by design (MIMN's
    #: memory): the conformance suite then asks it to learn a far-history signal, as it asks a
    #: `LifelongCtr` with a long-term unit.
    reads_far_history: ClassVar[bool] = False

    #: Whether the model keeps an incremental per-user state (MIMN's memory): `initial_state`,
    #: `update_state` (one event per user) and `score_from_state`, which its forward is made
    #: of. Serving then exports the last two as programs of their own and updates a user's
    #: state per event instead of re-reading the history.
    incremental: ClassVar[bool] = False

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The state of `batch_size` users with no events, name → (batch_size, ...)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no incremental state")

    def update_state(
        self, state: dict[str, torch.Tensor], event: CtrEvents
    ) -> dict[str, torch.Tensor]:
        """Each user's state after one more event (`event`: one event per user)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no incremental state")

    def score_from_state(self, state: dict[str, torch.Tensor], targets: CtrTargets) -> torch.Tensor:
        """(T,) logits of targets from their users' states (name → (T, ...), one per target)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no incremental state")


# --- sparse + dense ---------------------------------------------------------------------------


class ExportUnsupported(ValueError):
    """A model that cannot be exported for serving (the message names it and the reason)."""


@dataclass(frozen=True)
class RequestInput:
    """One input of a request program (`dense/*.pt2`) and where serving gets it.

    Attributes:
        name: key in the program's input dict.
        dtype: `int64` or `float32`.
        shape: sizes; strings name a dynamic dimension (`events`, `candidates`, `length`).
        source: where serving gets it: `ids:FIELD` (the request's ids or times of `FIELD`),
            `table:FEATURE@FIELD` (rows of the table serving `FEATURE` at the ids of `FIELD`),
            `hashed:FEATURE@FIELD` (rows of a hashed table at
            `models.blocks.user_embedding.hashed_rows` of the 63-bit hashes in `FIELD`: the
            user table at `user_hash`), `cache:NAME@FIELD` (rows of item cache `NAME` at the
            ids of `FIELD`) or `state:NAME` (tensor `NAME` of the per-user state the caller
            holds, `ServingSpec.state`).
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    source: str


@dataclass(frozen=True)
class ProgramVariant:
    """One exported program of a model: the sizes of its example and which dims are static.

    Attributes:
        name: file stem under `dense/` (`model`, `model_no_history`).
        sizes: example size of every dynamic dimension.
        static: dimensions fixed at their example size (e.g. `events` = 0).
    """

    name: str
    sizes: dict[str, int]
    static: tuple[str, ...] = ()


@dataclass
class ServingProgram:
    """A program a model exports beside its request program (`dense/{name}.pt2`), e.g. the
    incremental-state models' `update` (state + one event → state) and `score_state` (state +
    candidates → logits).

    Attributes:
        name: file stem under `dense/`; the name serving calls it by.
        program: the module `torch.export` traces: `forward(request: dict[str, Tensor])`.
        inputs: its inputs (sources as in `RequestInput`).
        dims: `(min, max)` of each dynamic dimension its inputs name.
        sizes: example size of each of them.
        example: `sizes -> input dict` of valid example inputs.
    """

    name: str
    program: nn.Module
    inputs: list[RequestInput]
    dims: dict[str, tuple[int, int]]
    sizes: dict[str, int]
    example: Callable[[dict[str, int]], dict[str, torch.Tensor]]


@dataclass
class ServingSpec:
    """How a model is served: its request program and inputs (built by the composite, from the
    dense part alone).

    Attributes:
        family: `ctr` (score candidates) or `sequential` (recommend the next items).
        program: the module `torch.export` traces: `forward(request: dict[str, Tensor])`.
        inputs: the program's inputs.
        dims: `(min, max)` of every dynamic dimension.
        variants: the programs to export.
        example: `sizes -> request dict` of valid example inputs.
        programs: further programs to export beside the request program (default: none).
        state: a user's initial per-user state, name → tensor with no batch dimension (the
            inputs `state:NAME` of `programs`; default: none).
    """

    family: str
    program: nn.Module
    inputs: list[RequestInput]
    dims: dict[str, tuple[int, int]]
    variants: list[ProgramVariant]
    example: Callable[[dict[str, int]], dict[str, torch.Tensor]]
    programs: list[ServingProgram] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)


def rows_input(feature: str) -> str:
    """Request-program input name of an embedding feature's looked-up rows (`FEATURE_rows`: an
    id field may share the feature's name, e.g. `target_item`)."""
    return f"{feature}_rows"


class SparseDenseModel(nn.Module):
    """A model as its two parts: `embeddings` (the tables it declares; TorchRec shards them)
    and `dense` (every other parameter; DDP replicates it, `torch.export` traces it for
    serving). Subclasses assign exactly these two children — a submodule anywhere else would
    silently miss serving, so `check_split` refuses it.
    """

    embeddings: EmbeddingCollectionModule
    dense: nn.Module
    #: Serving family of the composite (`ctr`, `sequential`).
    family: ClassVar[str] = ""

    def check_split(self) -> None:
        """Raise `ExportUnsupported` when a child other than `embeddings` and `dense` exists."""
        extra = sorted(
            name for name, _ in self.named_children() if name not in ("embeddings", "dense")
        )
        if extra:
            raise ExportUnsupported(
                f"{type(self).__name__} has submodules outside `embeddings` and `dense`: {extra}; "
                "move them into the dense part (serving exports `dense` only)"
            )

    def item_caches(self) -> dict[str, ItemCache]:
        """Per-item tensors serving reads instead of recomputing them."""
        return {}

    def serving_spec(self) -> ServingSpec:
        """How serving runs the dense part (see `ServingSpec`)."""
        raise NotImplementedError(f"{type(self).__name__}.serving_spec")

    def describe(self) -> dict[str, Any]:
        """The model's class paths and configs, for manifests and reports."""
        raise NotImplementedError(f"{type(self).__name__}.describe")


def class_path(obj: object) -> str:
    """`module.Class` of an object (what YAML's `class_path` names)."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_module(module: nn.Module) -> dict[str, Any]:
    """`{"class_path", "config"}` of a zoo module, and the same for each child that has a config
    dataclass (e.g. a long-term unit, under its attribute name)."""
    config = getattr(module, "config", None)
    out: dict[str, Any] = {
        "class_path": class_path(module),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {},
    }
    for name, child in module.named_children():
        if dataclasses.is_dataclass(getattr(child, "config", None)):
            out[name] = describe_module(child)
    return out
