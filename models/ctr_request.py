"""One serving request of a lifelong CTR model: the dense part, from looked-up embeddings to
logits, written so that `torch.export` can trace it with dynamic history and candidate counts.

A request is one user: L history events (oldest first) and C candidates, all scored at one
request time, each against the user's whole history — `TargetWindows.whole_history`, so every
scan is one step without data-dependent control flow. The same `LifelongCtrUnits` code as
training scores it, so its logits equal the trained model's on the same user (tested).

Embedding tables stay outside: the caller (`serving.scorer`) looks rows up in the exported,
memory-mapped tables and passes them in. Inputs (`request_input_names`), a dict of tensors:

| key | shape | dtype | for |
|---|---|---|---|
| `event_item`, `event_category`, `event_behavior`, `event_ts` | (L,) | int64 | every model |
| `event_item_emb`, `event_category_emb` | (L, D) | float | every model |
| `target_item`, `target_category` | (C,) | int64 | every model |
| `target_item_emb`, `target_category_emb` | (C, D) | float | every model |
| `request_ts` | (1,) | int64 | every model |
| `event_keys` | (L, H, dh) | float | TWIN with the item cache (`cached_keys`) |
| `gsu_event_item_emb`, `gsu_event_category_emb` | (L, D) | float | SIM soft |
| `gsu_target_item_emb`, `gsu_target_category_emb` | (C, D) | float | SIM soft |

Output: (C,) logits.
"""

from __future__ import annotations

import torch

from models.lifelong_ctr import LifelongCtrModel, LifelongCtrUnits
from models.lifelong_inputs import LifelongInputs
from models.windows import TargetWindows

BASE_INPUTS = (
    "event_item", "event_category", "event_behavior", "event_ts", "event_item_emb",
    "event_category_emb", "target_item", "target_category", "target_item_emb",
    "target_category_emb", "request_ts",
)  # fmt: skip
GSU_INPUTS = (
    "gsu_event_item_emb", "gsu_event_category_emb", "gsu_target_item_emb",
    "gsu_target_category_emb",
)  # fmt: skip


def request_input_names(long_term: str, cached_keys: bool) -> tuple[str, ...]:
    """Keys of the request dict for a model with `long_term` unit."""
    names = BASE_INPUTS
    if cached_keys:
        names += ("event_keys",)
    if long_term == "sim_soft":
        names += GSU_INPUTS
    return names


class CtrRequestModel(LifelongCtrUnits):
    """The dense units of a trained `LifelongCtrModel` (shared parameters, not copies), scoring
    one request from looked-up embeddings (see the module docstring).

    Args:
        model: the trained model (its embedding collection is not used).
        cached_keys: take TWIN's ESU keys of the events from the input `event_keys` (the
            exported per-item cache) instead of projecting them per request.

    Raises:
        ValueError: `cached_keys` for a model without target attention.
    """

    def __init__(self, model: LifelongCtrModel, cached_keys: bool = False) -> None:
        super().__init__()
        if cached_keys and model.attention is None:
            raise ValueError("cached_keys: long_term 'none' has no ESU keys to cache")
        self.config = model.config
        self.behavior_embedding = model.behavior_embedding
        self.gap_embedding = model.gap_embedding
        self.match_embedding = model.match_embedding
        self.din = model.din
        self.attention = model.attention
        self.search = model.search
        self.tower = model.tower
        self.cached_keys = cached_keys
        self.input_names = request_input_names(model.config.arch.long_term, cached_keys)

    def inputs(self, request: dict[str, torch.Tensor]) -> LifelongInputs:
        """`LifelongInputs` of one request: every candidate's window is the whole history."""
        target_item = request["target_item"]
        windows = TargetWindows.whole_history(
            target_item.shape[0], request["event_item"].shape[0], target_item.device
        )
        request_ts = request["request_ts"]
        return LifelongInputs(
            windows=windows,
            event_item=request["event_item"],
            event_category=request["event_category"],
            event_behavior_id=request["event_behavior"],
            event_ts=request["event_ts"],
            event_inherent=torch.cat(
                [request["event_item_emb"], request["event_category_emb"]], dim=1
            ),
            event_behavior=self.behavior_embedding(request["event_behavior"]),
            target_item=target_item,
            target_category=request["target_category"],
            target_ts=request_ts.expand(target_item.shape[0]),
            target_inherent=torch.cat(
                [request["target_item_emb"], request["target_category_emb"]], dim=1
            ),
            gap_embedding=self.gap_embedding,
            match_embedding=self.match_embedding,
            request_ts=request_ts,
        )

    def forward(self, request: dict[str, torch.Tensor]) -> torch.Tensor:
        """(C,) logits of the request's candidates."""
        inputs = self.inputs(request)
        gsu = None
        if self.config.arch.long_term == "sim_soft":
            gsu = (
                torch.cat([request["gsu_event_item_emb"], request["gsu_event_category_emb"]], 1),
                torch.cat([request["gsu_target_item_emb"], request["gsu_target_category_emb"]], 1),
            )
        event_keys = request["event_keys"] if self.cached_keys else None
        return self.score(inputs, gsu, event_keys).logits
