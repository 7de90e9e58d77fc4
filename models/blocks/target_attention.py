"""Target attention units: TWIN-style multi-head target attention (the ESU) and DIN attention.

Behavior features are split as in TWIN (Chang et al., KDD'23):

* item-inherent `x_i` (item and category embeddings): depend only on the item, so their key
  projection `W_k x_i` can be computed once per item and cached (`keys`);
* user-item cross features `c_ij` (behavior type, log2 time gap between behavior i and target
  j's request time, whether behavior i's category is target j's): enter the attention logits
  only as a per-head scalar bias
  `beta_h(c_ij) = c_ij · w_h`, which is cheap and varies per behavior (and per target), so it
  can reorder the behaviors.

Multi-head target attention over behaviors i of target j, head h (dh = head_dim):

    logit_jih = (W_q t_j)_h · (W_k x_i)_h / sqrt(dh) + beta_h(c_ij)
    out_j     = W_o concat_h  sum_i softmax_i(logit_jih) (W_v [x_i, c_ij])_h

The softmax also runs over one "null" slot per head (a learned logit `null_logit_h` with a zero
value): when no behavior scores above it, the weights and the output shrink towards zero, so
the output tells "nothing relevant in the history" apart from "something relevant", which a
plain softmax (weights always summing to 1) cannot. Top-K selection ignores it (it is not a
behavior), so TWIN's GSU and ESU stay consistent.

The values project the full per-pair features `[x_i, c_ij]`, as the ESU of TWIN does. The same
logits rank behaviors in TWIN's consistency-preserving GSU (`models.blocks.search.TwinSearch`), which
therefore needs only the cached keys and the bias, never the value projection.
`models.blocks.two_stage.RetrievalUnit` composes a GSU with this ESU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lifeseq.models.blocks.checks import check_positive
from lifeseq.models.blocks.lifelong_inputs import LifelongInputs, PairFeatures
from lifeseq.models.blocks.windows import (
    NEG_INF,
    Chunk,
    OnlineSoftmaxPool,
    gather_rows,
    scan_chunks,
)


@dataclass(frozen=True)
class CrossBias:
    """The per-head cross bias as three lookup tables: `beta(c_ij) = behavior[i] +
    gap[bucket_ij] + match[same_category_ij]`.

    Attributes:
        behavior: (N, H) per event.
        gap: (G, H) per time-gap bucket (includes the constant).
        match: (2, H) per same-category flag.
    """

    behavior: torch.Tensor
    gap: torch.Tensor
    match: torch.Tensor

    def detach(self) -> CrossBias:
        """Copy without gradient (for a GSU that only ranks)."""
        return CrossBias(self.behavior.detach(), self.gap.detach(), self.match.detach())


@dataclass(frozen=True)
class EsuConfig:
    """The ESU's shape (YAML `esu:` of a long-term unit's config).

    Attributes:
        heads: attention heads H.
        head_dim: width per head dh.
        out_dim: output width (W_o).
    """

    heads: int = 4
    head_dim: int = 16
    out_dim: int = 64

    def __post_init__(self) -> None:
        for name in ("heads", "head_dim", "out_dim"):
            check_positive(f"EsuConfig.{name}", getattr(self, name))


class MultiHeadTargetAttention(nn.Module):
    """TWIN-style multi-head target attention (see the module docstring).

    Args:
        target_dim: width of the target vector t_j.
        inherent_dim: width of the item-inherent behavior features x_i.
        cross_dim: width of the cross features c_ij.
        heads: attention heads H.
        head_dim: width per head dh.
        out_dim: output width (W_o).
        logit_scale: every attention logit (and the null slot's) times this before the softmax
            (1: plain logits); see `FullAttentionConfig.logit_scale`.
    """

    def __init__(
        self,
        target_dim: int,
        inherent_dim: int,
        cross_dim: int,
        heads: int = 4,
        head_dim: int = 16,
        out_dim: int = 64,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("heads", heads), ("head_dim", head_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"MultiHeadTargetAttention.{name}: expected >= 1, got {value}")
        self.heads, self.head_dim, self.out_dim = heads, head_dim, out_dim
        self.logit_scale = logit_scale
        width = heads * head_dim
        self.query_proj = nn.Linear(target_dim, width, bias=False)
        self.key_proj = nn.Linear(inherent_dim, width, bias=False)
        self.bias_proj = nn.Linear(cross_dim, heads)
        self.value_proj = nn.Linear(inherent_dim + cross_dim, width)
        self.out_proj = nn.Linear(width, out_dim)
        self.null_logit = nn.Parameter(torch.zeros(heads))
        if target_dim == inherent_dim:
            # Tied start: q·k = (W t)·(W x), so before any training the logits already favour
            # behaviors that resemble the target (same item/category embeddings), which gives
            # a search over them (TWIN) useful candidates to learn from at the first step.
            with torch.no_grad():
                self.query_proj.weight.copy_(self.key_proj.weight)

    def query(self, target: torch.Tensor) -> torch.Tensor:
        """(T, H, dh) queries scaled by 1/sqrt(dh), from (T, target_dim) targets."""
        q = self.query_proj(target).view(-1, self.heads, self.head_dim)
        return q / math.sqrt(self.head_dim)

    def keys(self, inherent: torch.Tensor) -> torch.Tensor:
        """(M, H, dh) keys of (M, inherent_dim) item-inherent features: the per-item cache."""
        return self.key_proj(inherent).view(-1, self.heads, self.head_dim)

    def cross_bias(self, cross: PairFeatures) -> torch.Tensor:
        """(..., H) per-head bias of the pairs' cross features."""
        return self.bias_proj(cross.cat())

    def logits(self, query: torch.Tensor, keys: torch.Tensor, cross: PairFeatures) -> torch.Tensor:
        """(n, C, H) attention logits.

        Args:
            query: (n, H, dh) from `query`.
            keys: (n, C, H, dh) gathered from `keys`.
            cross: pair features shaped (n, C, ...).
        """
        return torch.einsum("nhd,nchd->nch", query, keys) + self.cross_bias(cross)

    def values(self, inherent: torch.Tensor, cross: PairFeatures) -> torch.Tensor:
        """(n, C, H, dh) values of the pairs' full features `[x_i, c_ij]`."""
        features = torch.cat([inherent, cross.cat()], dim=-1)
        return self.value_proj(features).view(*features.shape[:-1], self.heads, self.head_dim)

    def split_bias(self, inputs: LifelongInputs) -> CrossBias:
        """The cross bias split by feature (the same linear map as `cross_bias`, evaluated per
        event, per time-gap bucket and per match value instead of per pair)."""
        d = inputs.event_behavior.shape[-1]
        weight = self.bias_proj.weight  # (H, 3D): [behavior | gap | match]
        return CrossBias(
            behavior=inputs.event_behavior @ weight[:, :d].T,
            gap=inputs.gap_embedding.weight @ weight[:, d : 2 * d].T + self.bias_proj.bias,
            match=inputs.match_embedding.weight @ weight[:, 2 * d :].T,
        )

    def slice_logits(
        self,
        step: Chunk,
        query: torch.Tensor,
        event_keys: torch.Tensor,
        bias: CrossBias,
        gap_bucket: torch.Tensor,
        match: torch.Tensor,
    ) -> torch.Tensor:
        """(n, C, H) logits of a `scan_chunks` step: the step's rows against its event slice,
        one matrix product per head (no per-target copy of the keys).

        Args:
            step: the chunk.
            query: (T, H, dh) every target's query.
            event_keys: (N, H, dh) every event's key (the item cache).
            bias: `split_bias` of the batch.
            gap_bucket: (n, C) time-gap bucket of each (row, event) pair.
            match: (n, C) same-category flag of each pair.
        """
        keys = event_keys[step.events]  # (C, H, dh): a view
        logits = torch.einsum("nhd,chd->nch", query[step.rows], keys)
        return logits + bias.behavior[step.events] + bias.gap[gap_bucket] + bias.match[match]

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        inherent: torch.Tensor,
        cross: PairFeatures,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """Attention over a fixed set of behaviors per target (the ESU over the top-K).

        Args:
            query: (T, H, dh).
            keys: (T, K, H, dh) keys of the selected behaviors.
            inherent: (T, K, inherent_dim) their item-inherent features.
            cross: their cross features shaped (T, K, ...).
            valid: (T, K) bool; a target with no valid behavior gets a zero attention output
                (before `out_proj`).

        Returns:
            (T, out_dim).
        """
        return self._pool(self.logits(query, keys, cross), valid, self.values(inherent, cross))

    def _pool(
        self, logits: torch.Tensor, valid: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """(T, out_dim): the softmax (with the null slot) of (T, K, H) `logits` over the valid
        (T, K) slots, pooling the (T, K, H, dh) `values`, through `out_proj`."""
        logits = (logits * self.logit_scale).transpose(1, 2)  # (T, H, K)
        logits = logits.masked_fill(~valid.unsqueeze(1), NEG_INF)
        null = (self.null_logit * self.logit_scale).view(1, -1, 1).expand(logits.shape[0], -1, 1)
        weights = torch.softmax(torch.cat([null, logits], dim=2), dim=2)[:, :, 1:]  # (T, H, K)
        pooled = torch.einsum("thk,tkhd->thd", weights, values)
        return self.out_proj(pooled.reshape(pooled.shape[0], self.heads * self.head_dim))

    def attend_request(
        self,
        query: torch.Tensor,
        event_keys: torch.Tensor,
        inputs: LifelongInputs,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """`attend` over each target's selected events of a serving request (every target shares
        the request time), with the per-pair cross terms taken from small tables.

        The cross features enter both maps linearly, so the bias is `split_bias`'s per-event,
        per-bucket and per-match terms, and the values split the same way:
        `W_v [x_i, b_i, g(bucket_i), m(same_ij)] = W_xb [x_i, b_i] + G[bucket_i] + M[same_ij]`
        with `G` (buckets, H·dh) and `M` (2, H·dh) projected once per request and `W_xb [x_i, b_i]`
        once per event or once per selected pair, whichever is fewer rows
        (`_project_selected`); per pair only gathers and adds remain, and the time-gap bucket
        is computed once per event. Equal to `attend` on `pair_features` up to float rounding
        (tested ≤ 1e-5 through every family's export).

        Args:
            query: (T, H, dh).
            event_keys: (N, H, dh) every event's key.
            inputs: the request's inputs (`request_ts` set).
            index: (T, K) flat event indices of the selected events; -1 = none.

        Returns:
            (T, out_dim), as `attend`.
        """
        t, k = index.shape
        bias = self.split_bias(inputs)
        bucket = gather_rows(inputs.request_gap_bucket, index)  # (T, K)
        same = gather_rows(inputs.event_category, index) == inputs.target_category.unsqueeze(1)
        match = same.long()
        logits = torch.einsum("thd,tkhd->tkh", query, gather_rows(event_keys, index))
        logits = logits + gather_rows(bias.behavior, index) + bias.gap[bucket] + bias.match[match]
        d = inputs.event_behavior.shape[-1]
        w_event, w_gap, w_match = self.value_proj.weight.split(
            [self.value_proj.in_features - 2 * d, d, d], dim=1
        )
        event = torch.cat([inputs.event_inherent, inputs.event_behavior], dim=-1)  # (N, 3D)
        values = _project_selected(event, index, w_event, self.value_proj.bias)  # (T, K, H·dh)
        gap_values = inputs.gap_embedding.weight @ w_gap.T  # (G, H·dh)
        match_values = inputs.match_embedding.weight @ w_match.T  # (2, H·dh)
        values = values + gap_values[bucket] + match_values[match]  # (T, K, H·dh)
        return self._pool(logits, index >= 0, values.view(t, k, self.heads, self.head_dim))

    def attend_windows(
        self,
        query: torch.Tensor,
        event_keys: torch.Tensor,
        inputs: LifelongInputs,
        chunk: int,
    ) -> torch.Tensor:
        """Exact attention over every behavior of each target's window ("full attention"),
        slice by slice with an online softmax: O(T × chunk) memory, never O(T × L).

        Logits as in `attend` (bias split per feature); values project every (target, behavior)
        pair's full features, exactly as the ESU does for its top-K: this per-pair work over the
        whole window is the cost that a GSU avoids.

        Args:
            query: (T, H, dh).
            event_keys: (N, H, dh) keys of every event of the batch.
            inputs: the batch inputs (events, windows, cross features).
            chunk: events per slice.

        Returns:
            (T, out_dim); equal (up to float rounding) to `attend` over the whole window.
        """
        t, h, d = query.shape
        bias = self.split_bias(inputs)
        null_logit = self.null_logit * self.logit_scale
        pool = OnlineSoftmaxPool(t, (h,), d, query, null_logit=null_logit)
        for step in scan_chunks(inputs.windows, chunk):
            bucket, match = inputs.chunk_gap_bucket(step), inputs.chunk_match(step)  # (n, C)
            logits = self.slice_logits(step, query, event_keys, bias, bucket, match)
            logits = logits * self.logit_scale
            logits = logits.masked_fill(~step.valid.unsqueeze(-1), NEG_INF)
            cross = inputs.chunk_pair_features(step, bucket, match)
            inherent = inputs.event_inherent[step.events].expand(step.rows.shape[0], -1, -1)
            pool.add(step.rows, logits, self.values(inherent, cross))
        pooled = pool.result()  # (T, H, dh)
        return self.out_proj(pooled.reshape(t, h * d))


def _project_selected(
    event: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """(T, K, out) `linear(event, weight, bias)` at the flat event indices `index` (T, K), by
    projecting every event and gathering (N ≤ T·K) or gathering and projecting (N > T·K),
    whichever projects fewer rows: at 100 candidates × top 64, 1,000 events are 6× fewer rows
    than the 6,400 pairs and 10,000 events 1.6× more. `torch.cond` keeps both in one exported
    program with dynamic N."""

    def per_event(event: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return gather_rows(torch.nn.functional.linear(event, weight, bias), index)

    def per_pair(event: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(gather_rows(event, index), weight, bias)

    return torch.cond(event.shape[0] > index.numel(), per_pair, per_event, (event, index))


class DinAttention(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD'18): an MLP scores each behavior against
    the target from `[q, k, q - k, q * k, side]`; the output is the score-weighted *sum* of the
    behaviors' features (no softmax, so the magnitude reflects how much of the history is
    relevant).

    Args:
        key_dim: width of q and k (target and behavior item features).
        side_dim: width of extra per-pair features fed to the unit and pooled (cross features).
        hidden: hidden widths of the activation MLP.
    """

    def __init__(self, key_dim: int, side_dim: int, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 4 * key_dim + side_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.PReLU(size)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.unit = nn.Sequential(*layers)
        self.out_dim = key_dim + side_dim

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, side: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Pool each target's behaviors.

        Args:
            query: (T, key_dim) target features.
            keys: (T, n, key_dim) behavior item features.
            side: (T, n, side_dim) per-pair side features.
            valid: (T, n) bool.

        Returns:
            (T, key_dim + side_dim): sum of score × [k, side] over valid behaviors.
        """
        q = query.unsqueeze(1).expand_as(keys)
        pairs = torch.cat([q, keys, q - keys, q * keys, side], dim=-1)  # (T, n, F)
        scores = self.unit(pairs.reshape(-1, pairs.shape[-1])).view(*pairs.shape[:2], 1)
        scores = scores * valid.unsqueeze(-1)
        return (scores * torch.cat([keys, side], dim=-1)).sum(dim=1)

    def forward_shared(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        side: torch.Tensor,
        same: torch.Tensor,
        match_table: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """`forward` when every target pools the same behaviors (a serving request), with the
        side features `[per-event features, match_table[same]]`.

        The first layer of the unit is linear in `[q, k, q - k, q * k, side]`, so it splits into
        a per-target term, a per-event term, the `q * k` term and a two-value match term
        (`W [q, k, q-k, q*k, s] = (W_q + W_d) q + (W_k - W_d) k + W_p (q*k) + W_s s`): only the
        `q * k` product is computed per pair, and nothing per pair is concatenated. Equal to
        `forward` on the expanded inputs up to float rounding (tested ≤ 1e-5).

        Args:
            query: (T, key_dim) target features.
            keys: (n, key_dim) the shared behaviors' item features.
            side: (n, side_dim - M) the behaviors' per-event side features.
            same: (T, n) bool, which row of `match_table` each pair takes.
            match_table: (2, M) the per-pair side feature's two values.
            valid: (n,) bool.

        Returns:
            (T, key_dim + side_dim), as `forward`.
        """
        first = self.unit[0]
        kd, events = query.shape[1], side.shape[1]
        w_q, w_k, w_d, w_p, w_s, w_m = first.weight.split(
            [kd, kd, kd, kd, events, match_table.shape[1]], dim=1
        )
        per_target = query @ (w_q + w_d).T + first.bias  # (T, h)
        per_event = keys @ (w_k - w_d).T + side @ w_s.T  # (n, h)
        match = match_table @ w_m.T  # (2, h)
        product = (query.unsqueeze(1) * keys.unsqueeze(0)) @ w_p.T  # (T, n, h)
        hidden = product + per_target.unsqueeze(1) + per_event.unsqueeze(0)
        hidden = hidden + torch.where(same.unsqueeze(-1), match[1], match[0])
        flat = hidden.reshape(-1, hidden.shape[-1])  # PReLU's channels are dim 1
        scores = self.unit[1:](flat).view(hidden.shape[:2]) * valid  # (T, n)
        pooled = scores @ torch.cat([keys, side], dim=1)  # (T, key_dim + side_dim - M)
        matched = (scores * same).sum(dim=1, keepdim=True)  # (T, 1)
        unmatched = scores.sum(dim=1, keepdim=True) - matched
        return torch.cat([pooled, unmatched * match_table[0] + matched * match_table[1]], dim=1)
