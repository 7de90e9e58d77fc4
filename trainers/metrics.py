"""CTR evaluation metrics: grouped (per-user) AUC and log loss, as `torchmetrics.Metric`s.

- `GroupedAUC`: GAUC of the DIN paper (Zhou et al., 2018, "Deep Interest Network for
  Click-Through Rate Prediction", eq. 8): every user's (group's) AUC, averaged with the
  user's number of targets (impressions) as weight. Users whose targets are all positive or
  all negative have no AUC and are skipped; how many were counted and skipped is reported.
- `LogLoss`: binary cross-entropy (natural log) averaged over targets, computed from logits.

Both keep only sums as state (`dist_reduce_fx="sum"`), so memory is constant and a DDP sync is
an all-reduce of a few scalars. Usage in a Lightning module::

    self.val_gauc = GroupedAUC()
    self.val_gauc.update(logits, labels, user_ids)  # every user's targets in this one call
    self.log("val/gauc", self.val_gauc.compute())
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

__all__ = ["GroupedAUC", "LogLoss", "per_group_auc"]


def _check_1d(name: str, x: Tensor) -> None:
    """Raise `ValueError` unless `x` is 1-D; `name` is the argument name used in the message."""
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D (T,), got shape {tuple(x.shape)}; flatten it first")


def _check_binary_target(target: Tensor) -> None:
    """Raise `ValueError` unless every value of `target` is 0 or 1 (syncs with the device)."""
    if target.numel() and not bool(((target == 0) | (target == 1)).all()):
        bad = target[(target != 0) & (target != 1)][:5].tolist()
        raise ValueError(f"target must hold only 0/1 labels, got values such as {bad}")


def _segment_sum(values: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Sums of `values` over the contiguous segments `[starts[s], ends[s])`.

    Uses a cumulative sum instead of scatter/bincount: exact for integer input and
    deterministic on every device (no atomics).

    Args:
        values: (T,) integer tensor.
        starts: (S,) int64 segment start positions, inclusive.
        ends: (S,) int64 segment end positions, exclusive.

    Returns:
        (S,) tensor of `values.dtype`, the per-segment sums.
    """
    csum = torch.cat([values.new_zeros(1), torch.cumsum(values, dim=0)])  # (T + 1,)
    return csum[ends] - csum[starts]


def per_group_auc(preds: Tensor, target: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Per-group AUC (Mann-Whitney U with average ranks) and per-group target counts.

    All groups at once, no Python loop: sort by (group, pred), find runs of tied predictions
    within a group, give each run its average rank, sum the positives' ranks per group. A tied
    positive/negative pair thus counts 1/2. Ranks are kept doubled (integers), so the rank sums
    are exact in int64 whatever the batch size.

    Args:
        preds: (T,) float scores; any strictly monotone transform (logit or probability) gives
            the same AUC, apart from ties that the transform creates or removes.
        target: (T,) int64 labels in {0, 1}.
        groups: (T,) integer group (user) ids; equal ids form one group.

    Returns:
        `(auc, n)`: (G,) float64 AUC of each distinct group, NaN for a group with a single
        label class; and (G,) int64 number of targets of each group. Groups are in increasing
        id order.
    """
    num = preds.numel()
    device = preds.device
    # Lexicographic sort by (group, pred): stable sort by pred, then stable sort by group.
    by_pred = torch.sort(preds, stable=True).indices  # (T,)
    by_group = torch.sort(groups[by_pred], stable=True).indices  # (T,)
    order = by_pred[by_group]  # (T,)
    g_sorted, p_sorted, y_sorted = groups[order], preds[order], target[order]  # (T,) each

    first = torch.ones(1, dtype=torch.bool, device=device)
    new_group = torch.cat([first, g_sorted[1:] != g_sorted[:-1]])  # (T,)
    new_run = new_group | torch.cat([first, p_sorted[1:] != p_sorted[:-1]])  # (T,)

    positions = torch.arange(num, device=device)  # (T,)
    group_starts = positions[new_group]  # (G,)
    group_ends = torch.cat([group_starts[1:], group_starts.new_tensor([num])])  # (G,)
    run_starts = positions[new_run]  # (R,)
    run_ends = torch.cat([run_starts[1:], run_starts.new_tensor([num])])  # (R,)
    group_id = torch.cumsum(new_group.long(), dim=0) - 1  # (T,) in [0, G)
    run_id = torch.cumsum(new_run.long(), dim=0) - 1  # (T,) in [0, R)

    # 1-based rank within the group, averaged over the tie run, times two:
    # 2 * ((run_start + run_end - 1) / 2 - group_start + 1).
    rank2 = run_starts[run_id] + run_ends[run_id] + 1 - 2 * group_starts[group_id]  # (T,)

    n = group_ends - group_starts  # (G,)
    n_pos = _segment_sum(y_sorted, group_starts, group_ends)  # (G,)
    n_neg = n - n_pos  # (G,)
    rank2_pos = _segment_sum(rank2 * y_sorted, group_starts, group_ends)  # (G,)
    u2 = rank2_pos - n_pos * (n_pos + 1)  # (G,) twice the Mann-Whitney U of the positives
    auc = u2.double() / (2 * n_pos * n_neg).double()  # (G,) NaN where 0 / 0
    return auc, n


class GroupedAUC(torchmetrics.Metric):
    """Group (user) AUC, GAUC, as in the DIN paper: sum_u n_u * AUC_u / sum_u n_u.

    `n_u` is user u's number of targets (impressions) in the evaluation set. A user whose
    targets are all positive or all negative has no AUC: it is skipped, adding to neither sum,
    and counted in `skipped_groups`.

    Assumption (not checked): every group's targets arrive in ONE `update` call; a user is
    never split across batches or ranks (our loaders batch whole users). This lets `update`
    finish each group's AUC and keep only four sums, so memory is constant and summing the
    states over ranks is exact under DDP. A group id seen in two calls is treated as two
    groups, which silently gives a different number; do not feed split users.

    States (all summed over ranks): `sum_weighted_auc` (float64), `sum_weight`, `groups` and
    `skipped` (int64).

    Args:
        validate_args: check shapes, dtypes, 0/1 labels and NaN scores on every update; the
            value checks synchronize with the device, so turn them off in a hot loop.
        **kwargs: passed on to `torchmetrics.Metric` (e.g. `sync_on_compute`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    sum_weighted_auc: Tensor
    sum_weight: Tensor
    groups: Tensor
    skipped: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state(
            "sum_weighted_auc", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("sum_weight", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("groups", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Add the AUCs of the groups in this batch.

        Args:
            preds: (T,) float probabilities or logits (only their order matters).
            target: (T,) labels in {0, 1}, any dtype.
            groups: (T,) integer group (user) ids; each group complete in this call.
                T = 0 (a padding batch) is allowed and changes nothing.

        Raises:
            ValueError: if an argument is not 1-D, lengths differ, `preds` is not floating
                point, `groups` is not integer, or (with `validate_args`) a label is not 0/1
                or a score is NaN.
        """
        if self.validate_args:
            self._validate(preds, target, groups)
        if preds.numel() == 0:
            return
        auc, n = per_group_auc(preds.detach(), target.detach().long(), groups.detach())
        counted = ~torch.isnan(auc)  # (G,)
        self.sum_weighted_auc += (n[counted].double() * auc[counted]).sum()
        self.sum_weight += n[counted].sum()
        num_counted = counted.sum()
        self.groups += num_counted
        self.skipped += counted.numel() - num_counted

    @staticmethod
    def _validate(preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Check the `update` arguments; see `update` for what raises."""
        for name, x in (("preds", preds), ("target", target), ("groups", groups)):
            _check_1d(name, x)
        if not (preds.numel() == target.numel() == groups.numel()):
            raise ValueError(
                "preds, target and groups must have the same length, got "
                f"{preds.numel()}, {target.numel()}, {groups.numel()}"
            )
        if not preds.is_floating_point():
            raise ValueError(f"preds must be floating point scores, got dtype {preds.dtype}")
        if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
            raise ValueError(f"groups must hold integer group ids, got dtype {groups.dtype}")
        _check_binary_target(target)
        if preds.numel() and bool(torch.isnan(preds).any()):
            raise ValueError("preds contains NaN scores; check the model output for this batch")

    def _details(self) -> dict[str, Tensor]:
        """The result dict of the current (possibly synced) states; see `compute_details`."""
        gauc = self.sum_weighted_auc / self.sum_weight.double()  # NaN when 0 / 0
        return {
            "gauc": gauc.float(),
            "groups": self.groups.clone(),
            "skipped_groups": self.skipped.clone(),
            "weight": self.sum_weight.clone(),
        }

    def compute(self) -> Tensor:
        """GAUC over all updates (and ranks, synced by torchmetrics).

        Returns:
            () float32 GAUC in [0, 1]; NaN when no group was counted (no updates, or every
            group had a single label class).
        """
        return self._details()["gauc"]

    def compute_details(self) -> dict[str, Tensor]:
        """GAUC with its bookkeeping, synced over ranks like `compute`.

        Returns:
            `gauc`: () float32, as `compute()` (NaN when no group was counted);
            `groups`: () int64 number of groups counted;
            `skipped_groups`: () int64 number of single-class groups skipped;
            `weight`: () int64 number of targets in the counted groups.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            return self._details()


class LogLoss(torchmetrics.Metric):
    """Log loss: binary cross-entropy in nats, averaged over all targets, from logits.

    Uses `binary_cross_entropy_with_logits`, which is stable for any finite logit (no
    `log(0)` from a saturated sigmoid). States `sum_loss` (float64) and `count` (int64) are
    summed over ranks, so the mean is exact under DDP.

    Args:
        validate_args: check shapes and 0/1 labels on every update (syncs with the device).
        **kwargs: passed on to `torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    sum_loss: Tensor
    count: Tensor

    def __init__(self, validate_args: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("sum_loss", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add the losses of a batch.

        Args:
            logits: (T,) float logits (NOT probabilities).
            target: (T,) labels in {0, 1}, any dtype. T = 0 changes nothing.

        Raises:
            ValueError: if an argument is not 1-D, the lengths differ, `logits` is not floating
                point, or (with `validate_args`) a label is not 0/1.
        """
        if self.validate_args:
            _check_1d("logits", logits)
            _check_1d("target", target)
            if logits.numel() != target.numel():
                raise ValueError(
                    f"logits and target must have the same length, got {logits.numel()} "
                    f"and {target.numel()}"
                )
            if not logits.is_floating_point():
                raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
            _check_binary_target(target)
        logits = logits.detach().double()
        loss = F.binary_cross_entropy_with_logits(
            logits, target.detach().to(logits.dtype), reduction="sum"
        )
        self.sum_loss += loss
        self.count += logits.numel()

    def compute(self) -> Tensor:
        """Mean log loss over all targets seen (and ranks).

        Returns:
            () float32 mean binary cross-entropy in nats; NaN when no target was seen.
        """
        return (self.sum_loss / self.count.double()).float()
