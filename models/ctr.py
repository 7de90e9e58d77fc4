"""`CtrRecommender`: a CTR model from the zoo and the embedding tables it declares — what the
CTR task trains and export splits.

    model = CtrRecommender(dims, LifelongCtr)       # or any `models.interfaces.CtrModel`
    output = model(batch)                           # CtrBatch → CtrOutput, (T,) logits

Two parts (`models.interfaces.SparseDenseModel`): `embeddings` (the tables the model declares;
TorchRec shards them) and `dense` (the zoo model itself). A forward looks up every feature the
model declares at its id field (`CTR_ID_FIELDS`) in one embedding call and hands the dense part
a `CtrFeatures`: the batch's ids, each target's history window and the looked-up rows.

Serving (`serving_spec`): one request — a user's L history events and C candidates at one
request time, every candidate's window the whole history — goes through `CtrRequestProgram`
around the same dense part, so the exported program scores like the trained model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lifeseq.features.batch import CtrBatch
from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec, build_embeddings
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.seeding import seeded_init
from lifeseq.models.blocks.windows import TargetWindows
from lifeseq.models.ctr_features import CtrEvents, CtrFeatures, CtrOutput, CtrTargets
from lifeseq.models.interfaces import (
    CtrModel,
    ExportUnsupported,
    ItemCache,
    ModelDims,
    ProgramVariant,
    RequestInput,
    ServingProgram,
    ServingSpec,
    SparseDenseModel,
    describe_module,
    rows_input,
)

#: Id fields a CTR feature can look up, and the vocabulary each indexes.
CTR_ID_FIELDS = {
    "event_item": "item",
    "event_category": "category",
    "event_behavior": "behavior",
    "target_item": "item",
    "target_category": "category",
}
#: Largest history and candidate counts an exported CTR program accepts.
MAX_EVENTS = 1 << 22
MAX_CANDIDATES = 1 << 20
#: Largest number of users one exported state update accepts.
MAX_USERS = 1 << 16


def batch_ids(batch: CtrBatch) -> dict[str, Jagged]:
    """Every `CTR_ID_FIELDS` id of a batch as a Jagged (history: one row per user; targets:
    one id per row)."""
    history = batch.history
    ones = torch.ones_like(batch.target_item)
    return {
        "event_item": history["item"],
        "event_category": history["category"],
        "event_behavior": history["behavior"],
        "target_item": Jagged(batch.target_item, ones),
        "target_category": Jagged(batch.target_category, ones),
    }


class CtrRecommender(SparseDenseModel):
    """See the module docstring.

    Args:
        dims: the data's sizes, backend and seed.
        model: builds the zoo model from `dims` (a `CtrModel` class or partial).

    Raises:
        ValueError: the model declares a feature with an unknown id field.
    """

    family = "ctr"

    def __init__(self, dims: ModelDims, model: Callable[[ModelDims], CtrModel]) -> None:
        super().__init__()
        self.dims = dims
        with seeded_init(dims.seed):
            dense = model(dims)
        feature_ids = dense.feature_ids()
        unknown = {f: src for f, src in feature_ids.items() if src not in CTR_ID_FIELDS}
        if unknown:
            raise ValueError(
                f"{type(dense).__name__}.feature_ids: unknown id fields {unknown}; expected "
                f"{list(CTR_ID_FIELDS)}"
            )
        self.embeddings = build_embeddings(dense.tables(), backend=dims.backend, seed=dims.seed)
        self.dense = dense
        self._feature_ids = feature_ids

    def features(self, batch: CtrBatch) -> CtrFeatures:
        """Look up every declared feature of `batch` (one embedding call)."""
        ids = batch_ids(batch)
        looked_up = self.embeddings({f: ids[src] for f, src in self._feature_ids.items()})
        history = batch.history
        return CtrFeatures(
            windows=TargetWindows.from_batch(batch),
            event_item=history["item"].values,
            event_category=history["category"].values,
            event_behavior=history["behavior"].values,
            event_ts=history["ts"].values,
            target_item=batch.target_item,
            target_category=batch.target_category,
            target_ts=batch.target_ts,
            embedded={f: jagged.values for f, jagged in looked_up.items()},
        )

    def forward(self, batch: CtrBatch) -> CtrOutput:
        """Logits of every target of `batch` (B users, N events, T targets; T = 0 for a padding
        batch)."""
        return self.dense(self.features(batch))

    # --- serving --------------------------------------------------------------------------

    def item_caches(self) -> dict[str, ItemCache]:
        """The zoo model's per-item caches."""
        return self.dense.item_caches()

    def serving_spec(self) -> ServingSpec:
        """A request: L ≥ 0 history events and C ≥ 1 candidates at one request time."""
        inputs = [
            RequestInput(name, "int64", ("events",), f"ids:{name}")
            for name in ("event_item", "event_category", "event_behavior", "event_ts")
        ] + [
            RequestInput(name, "int64", ("candidates",), f"ids:{name}")
            for name in ("target_item", "target_category")
        ]
        inputs.append(RequestInput("request_ts", "int64", (1,), "ids:request_ts"))
        for feature, source in self._feature_ids.items():
            size = "events" if source.startswith("event_") else "candidates"
            width = self.embeddings.embedding_dim(feature)
            inputs.append(
                RequestInput(
                    rows_input(feature), "float32", (size, width), f"table:{feature}@{source}"
                )
            )
        caches = {name: c for name, c in self.item_caches().items() if c.feeds_request}
        for name, cache in caches.items():
            shape = ("events", *cache.row_shape)
            inputs.append(RequestInput(name, "float32", shape, f"cache:{name}@event_item"))
        dims, widths = self.dims, {i.name: i.shape for i in inputs}

        def example(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
            generator = torch.Generator().manual_seed(0)
            rows = {"item": dims.item_rows, "category": dims.category_rows,
                    "behavior": dims.behavior_rows}  # fmt: skip
            out: dict[str, torch.Tensor] = {}
            for spec in inputs:
                shape = [sizes[s] if isinstance(s, str) else s for s in widths[spec.name]]
                field_name = spec.source.removeprefix("ids:")
                if field_name in CTR_ID_FIELDS:
                    high = max(rows[CTR_ID_FIELDS[field_name]], 2)
                    out[spec.name] = torch.randint(1, high, shape, generator=generator)
                elif field_name == "event_ts":
                    out[spec.name] = torch.arange(shape[0], dtype=torch.int64) * 100 + 1_700_000_000
                elif field_name == "request_ts":
                    out[spec.name] = torch.tensor([1_700_000_000 + 100 * sizes["events"]])
                else:
                    out[spec.name] = torch.randn(*shape, generator=generator)
            return out

        return ServingSpec(
            family=self.family,
            program=CtrRequestProgram(self.dense, tuple(self._feature_ids), tuple(caches)),
            inputs=inputs,
            dims={"events": (1, MAX_EVENTS), "candidates": (1, MAX_CANDIDATES)},
            variants=[
                ProgramVariant("model", {"events": 8, "candidates": 4}),
                ProgramVariant("model_no_history", {"events": 0, "candidates": 4}, ("events",)),
            ],
            example=example,
            **self._state_programs(inputs, example),
        )

    def _state_programs(
        self, inputs: list[RequestInput], example: Callable[[dict[str, int]], dict[str, Any]]
    ) -> dict[str, Any]:
        """`programs` and `state` of an incremental-state model (`CtrModel.incremental`):
        `update` (B users' states and one event each → their states, B dynamic) and
        `score_state` (one user's state and C candidates → (C,) logits); none otherwise.

        Raises:
            ExportUnsupported: an incremental model that declares item caches.
        """
        if not self.dense.incremental:
            return {}
        if self.item_caches():
            raise ExportUnsupported(
                f"{type(self.dense).__name__}: an incremental-state model with item caches is "
                "not supported by serving's state programs"
            )
        state = {k: v[0].detach().clone() for k, v in self.dense.initial_state(1).items()}
        state_inputs = {
            "update": [
                RequestInput(k, "float32", ("users", *v.shape), f"state:{k}")
                for k, v in state.items()
            ],
            "score_state": [
                RequestInput(k, "float32", (1, *v.shape), f"state:{k}") for k, v in state.items()
            ],
        }
        update_inputs = [
            dataclasses.replace(i, shape=("users", *i.shape[1:]))
            for i in inputs
            if i.shape[0] == "events"
        ]
        score_inputs = [i for i in inputs if i.shape[0] != "events"]
        features = tuple(self._feature_ids)

        def update_example(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
            out = example({"events": sizes["users"], "candidates": 1})
            out = {i.name: out[i.name] for i in update_inputs}
            generator = torch.Generator().manual_seed(1)
            for k, v in state.items():
                out[k] = v + 0.1 * torch.randn(sizes["users"], *v.shape, generator=generator)
            return out

        def score_example(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
            out = example({"events": 1, "candidates": sizes["candidates"]})
            out = {i.name: out[i.name] for i in score_inputs}
            return {**out, **{k: v.unsqueeze(0).clone() for k, v in state.items()}}  # no views

        return {
            "programs": [
                ServingProgram(
                    "update",
                    CtrStateUpdateProgram(self.dense, features, tuple(state)),
                    update_inputs + state_inputs["update"],
                    {"users": (1, MAX_USERS)},
                    {"users": 4},
                    update_example,
                ),
                ServingProgram(
                    "score_state",
                    CtrStateScoreProgram(self.dense, features, tuple(state)),
                    score_inputs + state_inputs["score_state"],
                    {"candidates": (1, MAX_CANDIDATES)},
                    {"candidates": 4},
                    score_example,
                ),
            ],  # fmt: skip
            "state": state,
        }

    def describe(self) -> dict[str, Any]:
        """Class path and config of the zoo model (and of its long-term unit, if any)."""
        return describe_module(self.dense)


class CtrRequestProgram(nn.Module):
    """One serving request of a CTR model, written so that `torch.export` traces it with
    dynamic history and candidate counts: the request's ids, looked-up rows (one input per
    embedding feature, `FEATURE_rows`) and cache rows → (C,) logits, through the trained dense part (shared,
    not copied). Every candidate's window is the whole history
    (`TargetWindows.whole_history`), so no scan has data-dependent control flow.

    Args:
        dense: the zoo model.
        features: the embedding features it reads (request inputs of the same names).
        caches: the item caches it reads (request inputs of the same names).
    """

    def __init__(self, dense: CtrModel, features: tuple[str, ...], caches: tuple[str, ...]) -> None:
        super().__init__()
        self.dense = dense
        self.feature_names = features
        self.cache_names = caches

    def forward(self, request: dict[str, torch.Tensor]) -> torch.Tensor:
        """(C,) logits of the request's candidates."""
        target_item = request["target_item"]
        request_ts = request["request_ts"]
        windows = TargetWindows.whole_history(
            target_item.shape[0], request["event_item"].shape[0], target_item.device
        )
        features = CtrFeatures(
            windows=windows,
            event_item=request["event_item"],
            event_category=request["event_category"],
            event_behavior=request["event_behavior"],
            event_ts=request["event_ts"],
            target_item=target_item,
            target_category=request["target_category"],
            target_ts=request_ts.expand(target_item.shape[0]),
            embedded={name: request[rows_input(name)] for name in self.feature_names},
            cached={name: request[name] for name in self.cache_names},
            request_ts=request_ts,
        )
        return self.dense(features).logits


class _CtrStateProgram(nn.Module):
    """What both incremental-state serving programs share: the dense part, the embedding
    features whose looked-up rows may come as inputs, and the state's tensor names.

    Args:
        dense: the zoo model (`CtrModel.incremental`).
        features: the embedding features it reads.
        state: the state's tensor names.
    """

    def __init__(self, dense: CtrModel, features: tuple[str, ...], state: tuple[str, ...]) -> None:
        super().__init__()
        self.dense = dense
        self.feature_names = features
        self.state_names = state

    def embedded_rows(self, request: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """feature → looked-up rows, for the features whose rows the request carries."""
        return {f: request[rows_input(f)] for f in self.feature_names if rows_input(f) in request}


class CtrStateUpdateProgram(_CtrStateProgram):
    """An incremental-state model's `update_state` as a serving program: B users' states and
    one event each (ids and looked-up history rows, inputs named as `CtrRequestProgram`'s with
    `users` for `events`) → their states after it (a dict of the same names)."""

    def forward(self, request: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The users' new states, name → (B, ...)."""
        event = CtrEvents(
            item=request["event_item"],
            category=request["event_category"],
            behavior=request["event_behavior"],
            ts=request["event_ts"],
            embedded=self.embedded_rows(request),
        )
        return self.dense.update_state({k: request[k] for k in self.state_names}, event)


class CtrStateScoreProgram(_CtrStateProgram):
    """An incremental-state model's `score_from_state` as a serving program: one user's state
    (name → (1, ...)) and C candidates (as `CtrRequestProgram`'s target inputs, and the
    request time) → (C,) logits."""

    def forward(self, request: dict[str, torch.Tensor]) -> torch.Tensor:
        """(C,) logits of the candidates."""
        target_item = request["target_item"]
        c = target_item.shape[0]
        targets = CtrTargets(
            item=target_item,
            category=request["target_category"],
            ts=request["request_ts"].expand(c),
            embedded=self.embedded_rows(request),
        )
        state = {k: request[k].expand(c, *request[k].shape[1:]) for k in self.state_names}
        return self.dense.score_from_state(state, targets)


def item_category_tables(dims: ModelDims) -> list[EmbeddingTableSpec]:
    """The `item` and `category` tables every CTR model of the zoo declares, each serving the
    history and the targets (`history_item` + `target_item`, `history_category` +
    `target_category`)."""
    d = dims.embedding_dim
    return [
        EmbeddingTableSpec("item", dims.item_rows, d, ("history_item", "target_item")),
        EmbeddingTableSpec(
            "category", dims.category_rows, d, ("history_category", "target_category")
        ),
    ]


def lifelong_inputs(
    features: CtrFeatures,
    behavior_embedding: nn.Embedding,
    gap_embedding: nn.Embedding,
    match_embedding: nn.Embedding,
) -> LifelongInputs:
    """A batch as the long-term units see it (`LifelongInputs`): item-inherent features
    `[item_emb, category_emb]` of events (N, 2D) and targets (T, 2D), the behavior embedding
    (N, D) and the cross-feature tables."""
    e = features.embedded
    return LifelongInputs(
        windows=features.windows,
        event_item=features.event_item,
        event_category=features.event_category,
        event_behavior_id=features.event_behavior,
        event_ts=features.event_ts,
        event_inherent=torch.cat([e["history_item"], e["history_category"]], dim=1),  # (N, 2D)
        event_behavior=behavior_embedding(features.event_behavior),  # (N, D)
        target_item=features.target_item,
        target_category=features.target_category,
        target_ts=features.target_ts,
        target_inherent=torch.cat([e["target_item"], e["target_category"]], dim=1),  # (T, 2D)
        gap_embedding=gap_embedding,
        match_embedding=match_embedding,
        request_ts=features.request_ts,
        embedded=e,
        cached=features.cached,
    )
