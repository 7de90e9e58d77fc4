"""What a CTR model's dense part reads and returns, apart from the composite that builds them
(`models.ctr.CtrRecommender`), so the interfaces (`models.interfaces`) can name them without
importing the composite: `CtrFeatures` (a batch's ids, windows and looked-up rows), `CtrOutput`
(logits), and an incremental-state model's `CtrEvents` / `CtrTargets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lifeseq.models.blocks.windows import TargetWindows


@dataclass
class CtrOutput:
    """CTR model output.

    Attributes:
        logits: (T,) logits.
        aux_logits: (T,) logits of an auxiliary CTR task (SIM soft), or None.
        aux_weight: weight of the auxiliary task's BCE in the training loss.
        aux_loss: () a loss the model computes itself against labels of its own (DIEN's
            next-behavior loss), already scaled by the model's weight for it, or None; the
            task adds it to the loss (times the batch's weight, 0 on a padding batch).
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    aux_weight: float = 0.0
    aux_loss: torch.Tensor | None = None


@dataclass
class CtrFeatures:
    """A CTR batch as the dense part sees it: ids, windows and looked-up embedding rows.

    Attributes:
        windows: each target's history window over the flat events (`TargetWindows`).
        event_item, event_category, event_behavior, event_ts: (N,) int64 flat history events.
        target_item, target_category, target_ts: (T,) int64 targets and their request times.
        embedded: feature → (N, D) or (T, D) looked-up rows (history features per event,
            target features per target).
        cached: item cache → rows at the history's items, (N, ...) (serving only; empty in
            training, where units compute them).
        request_ts: (1,) the request time every target shares, or None. Given only by a
            serving request program (`CtrRequestProgram`): one user's request, where every
            target's window is the whole history.
    """

    windows: TargetWindows
    event_item: torch.Tensor
    event_category: torch.Tensor
    event_behavior: torch.Tensor
    event_ts: torch.Tensor
    target_item: torch.Tensor
    target_category: torch.Tensor
    target_ts: torch.Tensor
    embedded: dict[str, torch.Tensor]
    cached: dict[str, torch.Tensor] = field(default_factory=dict)
    request_ts: torch.Tensor | None = None

    @property
    def num_targets(self) -> int:
        """T (symbolic under `torch.export`)."""
        return self.target_item.shape[0]


@dataclass
class CtrEvents:
    """One event per user, as an incremental-state model's `update_state` reads it.

    Attributes:
        item, category, behavior, ts: (B,) int64 the event of each of B users.
        embedded: each history feature (an `event_*` id field's) → (B, D) looked-up rows.
    """

    item: torch.Tensor
    category: torch.Tensor
    behavior: torch.Tensor
    ts: torch.Tensor
    embedded: dict[str, torch.Tensor]


@dataclass
class CtrTargets:
    """Targets as an incremental-state model's `score_from_state` reads them.

    Attributes:
        item, category, ts: (T,) int64 targets and their request times.
        embedded: each target feature (a `target_*` id field's) → (T, D) looked-up rows.
    """

    item: torch.Tensor
    category: torch.Tensor
    ts: torch.Tensor
    embedded: dict[str, torch.Tensor]
