"""Full-ranking metrics of next-item recommendation from target ranks: HR@K, NDCG@K, MRR.

Input is the 0-based rank of each target among the candidate items (`models.blocks.retrieval.
target_ranks`), one relevant item per target, as in the SASRec/HSTU evaluation protocol:

- `hr@K`: hit rate, the share of targets with rank < K;
- `ndcg@K`: 1 / log2(rank + 2) if rank < K else 0 (the ideal DCG of one relevant item is 1);
- `mrr`: mean reciprocal rank 1 / (rank + 1), not cut at any K.

`ranking_metrics` computes them for one tensor of ranks; `RankingMetrics` accumulates sums over
batches and ranks (DDP) and is exact whatever the batching. Usage in a Lightning module::

    self.val_ranking = RankingMetrics(ks=(10, 50))
    self.val_ranking.update(target_ranks(queries, item_table, targets, exclude=history))
    self.log_dict({f"val/{k}": v for k, v in self.val_ranking.compute().items()})
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchmetrics
from torch import Tensor

__all__ = ["RankingMetrics", "ranking_metrics"]

#: Start of the warning torchmetrics gives when `compute` runs before any `update`.
_COMPUTE_BEFORE_UPDATE = r"The ``compute`` method of metric \w+ was called before the ``update``"


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """The cut-offs as a tuple; `ValueError` unless they are distinct positive ints."""
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct, got {ks}")
    return ks


def _check_ranks(ranks: Tensor) -> None:
    """`ValueError` unless `ranks` is a 1-D tensor of non-negative integers (syncs the device)."""
    if ranks.dim() != 1:
        raise ValueError(f"ranks must be 1-D (T,), got shape {tuple(ranks.shape)}")
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be integer 0-based ranks, got dtype {ranks.dtype}")
    if ranks.numel() and bool((ranks < 0).any()):
        raise ValueError(
            f"ranks must be >= 0 (0 = best), got {int(ranks.min())}; ranks are 0-based"
        )


def _metric_sums(ranks: Tensor, ks: tuple[int, ...]) -> dict[str, Tensor]:
    """Per-metric sums over the targets: int64 `hr@K` hit counts, float64 `ndcg@K` and `mrr`.

    Args:
        ranks: (T,) integer 0-based ranks.
        ks: cut-offs.

    Returns:
        () tensors keyed `hr@K`, `ndcg@K` for each K in order, then `mrr`.
    """
    r = ranks.detach().double()  # (T,)
    gain = 1.0 / torch.log2(r + 2.0)  # (T,)
    sums: dict[str, Tensor] = {}
    for k in ks:
        hit = ranks.detach() < k  # (T,)
        sums[f"hr@{k}"] = hit.sum()
        sums[f"ndcg@{k}"] = torch.where(hit, gain, 0.0).sum()
    sums["mrr"] = (1.0 / (r + 1.0)).sum()
    return sums


def ranking_metrics(ranks: Tensor, ks: Sequence[int] = (10, 50)) -> dict[str, Tensor]:
    """HR@K, NDCG@K and MRR averaged over targets, from 0-based target ranks.

    Args:
        ranks: (T,) integer 0-based ranks of the targets (one relevant item each).
        ks: cut-offs K, distinct positive ints.

    Returns:
        () float32 tensors keyed `hr@K`, `ndcg@K` (for each K, in the order of `ks`) and
        `mrr`, on the device of `ranks`. With no targets (T = 0) every value is 0, not NaN, so
        an empty evaluation shard can be logged without poisoning averages.

    Raises:
        ValueError: if `ranks` is not 1-D, not integer or has a negative rank, or `ks` is
            empty, holds a non-positive or non-int K, or repeats one.
    """
    ks = _check_ks(ks)
    _check_ranks(ranks)
    count = max(ranks.numel(), 1)
    return {name: (s.double() / count).float() for name, s in _metric_sums(ranks, ks).items()}


def _quiet_before_update(compute: Callable[[], Any]) -> Callable[[], Any]:
    """`compute` without torchmetrics' compute-before-update warning (other warnings pass)."""

    @functools.wraps(compute)
    def quiet() -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _COMPUTE_BEFORE_UPDATE, UserWarning)
            return compute()

    return quiet


class RankingMetrics(torchmetrics.Metric):
    """HR@K, NDCG@K and MRR accumulated over batches (and DDP ranks) from target ranks.

    States are sums, all reduced with `dist_reduce_fx="sum"`: `hits_at_K` (int64) and
    `ndcg_at_K` (float64) per cut-off, `reciprocal_rank` (float64) and `count` (int64). The
    means are therefore exact over all targets, whatever the batch sizes or rank split.

    `compute()` with no targets (no update, or only empty ones) returns zeros rather than NaN,
    and without torchmetrics' "compute called before update" warning: an evaluation rank with
    no data is an expected case, not a bug. torchmetrics has no setting for that warning: it is
    given by the wrapper `Metric.__init__` puts around `compute` (sync, cache), before
    `compute` runs, whenever `update_called` is False. So the instance's public `compute` is
    wrapped once more, with the warning filtered out, here and when unpickled or copied
    (torchmetrics drops and rebuilds its wrapper in `__getstate__`/`__setstate__`); overriding
    `update_called` instead would make that property lie.

    Args:
        ks: cut-offs K, distinct positive ints.
        validate_args: check the ranks on every update; the sign check syncs with the device.
        **kwargs: passed on to `torchmetrics.Metric` (e.g. `sync_on_compute`).

    Raises:
        ValueError: if `ks` is empty, holds a non-positive or non-int K, or repeats one.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    reciprocal_rank: Tensor
    count: Tensor

    def __init__(
        self, ks: Sequence[int] = (10, 50), validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ks = _check_ks(ks)
        self.validate_args = validate_args
        for k in self.ks:
            self.add_state(f"hits_at_{k}", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(
                f"ndcg_at_{k}", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.add_state(
            "reciprocal_rank", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.compute = _quiet_before_update(self.compute)

    def update(self, ranks: Tensor) -> None:
        """Add a batch of target ranks.

        Args:
            ranks: (T,) integer 0-based ranks; T = 0 (a padding batch) changes nothing.

        Raises:
            ValueError: if `ranks` is not 1-D or not integer, or (with `validate_args`) has a
                negative rank.
        """
        if self.validate_args:
            _check_ranks(ranks)
        elif ranks.dim() != 1:
            raise ValueError(f"ranks must be 1-D (T,), got shape {tuple(ranks.shape)}")
        sums = _metric_sums(ranks, self.ks)
        for k in self.ks:
            setattr(self, f"hits_at_{k}", getattr(self, f"hits_at_{k}") + sums[f"hr@{k}"])
            setattr(self, f"ndcg_at_{k}", getattr(self, f"ndcg_at_{k}") + sums[f"ndcg@{k}"])
        self.reciprocal_rank += sums["mrr"]
        self.count += ranks.numel()

    def compute(self) -> dict[str, Tensor]:
        """Means over all targets seen (and ranks, synced by torchmetrics).

        Returns:
            () float32 tensors keyed `hr@K`, `ndcg@K` for each K in order, `mrr`, and `count`
            (the number of targets, as float). All zeros when no target was seen.
        """
        denom = self.count.clamp(min=1).double()
        out: dict[str, Tensor] = {}
        for k in self.ks:
            out[f"hr@{k}"] = (getattr(self, f"hits_at_{k}").double() / denom).float()
            out[f"ndcg@{k}"] = (getattr(self, f"ndcg_at_{k}") / denom).float()
        out["mrr"] = (self.reciprocal_rank / denom).float()
        out["count"] = self.count.float()
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torchmetrics' unpickling (which rebuilds its `compute` wrapper), then ours."""
        super().__setstate__(state)
        self.compute = _quiet_before_update(self.compute)
