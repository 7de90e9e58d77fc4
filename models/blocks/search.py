"""General Search Units: retrieve each target's top-K behaviors from its whole history window.

One interface: `unit(inputs: LifelongInputs) -> SearchResult` with (T, K) flat event indices
(-1 where the window holds fewer than K candidates), their scores (best first) and, for units
trained by an auxiliary task, auxiliary logits. Every unit scores only the target's own window
(events strictly before it), chunk by chunk (`models.blocks.windows.chunked_topk`): O(T × (K + chunk))
memory, never O(T × L) and never a copy of the history per target.

* `SimHardSearch` (SIM, Qi et al. CIKM'20): events of the target's category, most recent first.
* `SimSoftSearch` (SIM soft): inner product of separate GSU embeddings; trained by SIM's
  auxiliary CTR task on the softmax-pooled full window (`aux_logits`).
* `EtaSearch` (ETA, Chen et al. 2021): SimHash signatures (m random hyperplanes) of the item
  embeddings; smallest Hamming distance first, ties to the most recent; no gradient.
* `TwinSearch` (TWIN CP-GSU, Chang et al. KDD'23): the ESU's own attention logits (cached
  item-inherent keys + per-behavior cross-feature bias), averaged over heads.

Ties in SIM hard and ETA are broken by recency through integer-valued scores (exact in
float32 for windows up to 2^24 / (m + 1) events).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lifeseq.models.blocks.lifelong_inputs import LifelongInputs
from lifeseq.models.blocks.target_attention import MultiHeadTargetAttention
from lifeseq.models.blocks.windows import (
    NEG_INF,
    Chunk,
    OnlineSoftmaxPool,
    chunked_topk,
    whole_window_topk,
)


@dataclass(frozen=True)
class SearchResult:
    """Top-K retrieval of every target.

    Attributes:
        index: (T, K) int64 flat event indices, best first (TWIN's search of a serving
            request: in any order); -1 = no event.
        score: (T, K) float scores (-inf where index is -1).
        aux_logits: (T,) logits of an auxiliary CTR task (SIM soft), else None.
    """

    index: torch.Tensor
    score: torch.Tensor
    aux_logits: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        """(T, K) bool, slot holds an event."""
        return self.index >= 0


class _TopKSearch(nn.Module):
    """Base of the search units: `k` and `chunk`, validated."""

    def __init__(self, k: int, chunk: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"top_k: expected >= 1, got {k}")
        if chunk < 1:
            raise ValueError(f"chunk: expected >= 1, got {chunk}")
        self.k, self.chunk = k, chunk

    def _top(self, score: Callable[[Chunk], torch.Tensor], inputs: LifelongInputs) -> SearchResult:
        index, scores = chunked_topk(score, inputs.windows, self.k, self.chunk)
        return SearchResult(index, scores)


class SimHardSearch(_TopKSearch):
    """Behaviors whose category equals the target's, most recent first.

    Args:
        k: behaviors retrieved per target.
        chunk: window events scored per target per step.
    """

    def __init__(self, k: int = 64, chunk: int = 1024) -> None:
        super().__init__(k, chunk)

    def forward(self, inputs: LifelongInputs) -> SearchResult:
        """Top-K same-category events of each target's window, newest first."""

        def score(step: Chunk) -> torch.Tensor:
            categories = inputs.event_category[step.events].unsqueeze(0)  # (1, C)
            same = categories == inputs.target_category[step.rows].unsqueeze(1)  # (n, C)
            return step.position.to(torch.float32).masked_fill(~same, NEG_INF)

        return self._top(score, inputs)


class SimSoftSearch(_TopKSearch):
    """Inner product of separate GSU embeddings, top-K; SIM's auxiliary task trains them.

    Relevance of behavior i to target j: `r_ij = (W_b g_i) · (W_a g_j)` with `g` the GSU's own
    item + category embeddings (`inputs`-independent tables, looked up by the model and passed
    in as `gsu_events` (N, Dg) / `gsu_targets` (T, Dg)). The auxiliary task pools the whole
    window with softmax(r_ij) weights (online softmax, chunk by chunk) and predicts the label
    from `[pooled, W_a g_j]` with a small MLP, as in SIM: top-K selection itself has no gradient.

    Args:
        gsu_dim: width Dg of the GSU embeddings.
        proj_dim: width of the projected spaces.
        k: behaviors retrieved per target.
        chunk: window events scored per target per step.
    """

    def __init__(self, gsu_dim: int, proj_dim: int = 32, k: int = 64, chunk: int = 1024) -> None:
        super().__init__(k, chunk)
        self.event_proj = nn.Linear(gsu_dim, proj_dim, bias=False)
        self.target_proj = nn.Linear(gsu_dim, proj_dim, bias=False)
        self.aux_mlp = nn.Sequential(nn.Linear(2 * proj_dim, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(
        self, inputs: LifelongInputs, gsu_events: torch.Tensor, gsu_targets: torch.Tensor
    ) -> SearchResult:
        """Top-K by relevance, plus the auxiliary logits.

        Args:
            inputs: batch inputs (windows).
            gsu_events: (N, Dg) GSU embeddings of the flat events.
            gsu_targets: (T, Dg) GSU embeddings of the targets.
        """
        events = self.event_proj(gsu_events)  # (N, P)
        targets = self.target_proj(gsu_targets)  # (T, P)
        pool = OnlineSoftmaxPool(targets.shape[0], (), targets.shape[1], targets)

        def score(step: Chunk) -> torch.Tensor:
            # One pass serves both: the pooled window (with gradient, for the auxiliary task)
            # and the top-K ranking (no gradient).
            keys = events[step.events]  # (C, P): a view
            logits = targets[step.rows] @ keys.T  # (n, C)
            pool.add_shared(step.rows, logits.masked_fill(~step.valid, NEG_INF), keys)
            return logits.detach()

        # Equal scores are common (a repeated item scores the same each time) and the tied
        # events differ in behavior and time: keep the most recent, whatever the chunking.
        index, scores = chunked_topk(score, inputs.windows, self.k, self.chunk, recent_first=True)
        pooled = pool.result()  # (T, P); 0 for an empty window
        aux_logits = self.aux_mlp(torch.cat([pooled, targets], dim=1)).squeeze(1)
        return SearchResult(index, scores, aux_logits)


class EtaSearch(_TopKSearch):
    """SimHash (m random hyperplanes, fixed at construction) of the item-inherent embeddings;
    top-K by Hamming distance to the target's signature, ties to the most recent.

    Signatures are ±1 vectors, so `hamming = (m - s_j · s_i) / 2` is one small matmul per
    chunk; they are computed without gradient (the hash is not differentiable; the embeddings
    learn through the ESU).

    Args:
        input_dim: width of the item-inherent features hashed.
        bits: signature length m.
        k: behaviors retrieved per target.
        chunk: window events scored per target per step.
        seed: seed of the hyperplanes (a buffer: saved and exported with the model).
    """

    def __init__(
        self, input_dim: int, bits: int = 64, k: int = 64, chunk: int = 1024, seed: int = 0
    ) -> None:
        super().__init__(k, chunk)
        if bits < 1:
            raise ValueError(f"eta bits: expected >= 1, got {bits}")
        self.bits = bits
        generator = torch.Generator().manual_seed(seed)
        hyperplanes = torch.randn(input_dim, bits, generator=generator, device="cpu")
        self.register_buffer("hyperplanes", hyperplanes)

    def signatures(self, features: torch.Tensor) -> torch.Tensor:
        """(..., m) ±1 float signatures of (..., input_dim) features (no gradient)."""
        with torch.no_grad():
            projected = features.detach().to(self.hyperplanes.dtype) @ self.hyperplanes
            return torch.where(projected >= 0, 1.0, -1.0)

    def hamming(self, target_codes: torch.Tensor, event_codes: torch.Tensor) -> torch.Tensor:
        """(n, C) Hamming distances of (n, m) target and (C, m) event signatures."""
        return (self.bits - target_codes @ event_codes.T) / 2

    def forward(self, inputs: LifelongInputs) -> SearchResult:
        """Top-K by Hamming distance (smallest first), ties to the most recent event."""
        events = self.signatures(inputs.event_inherent)  # (N, m)
        targets = self.signatures(inputs.target_inherent)  # (T, m)
        lengths = inputs.windows.lengths
        longest = lengths.max() if lengths.numel() else lengths.new_zeros(())
        spread = (longest.clamp(min=1) + 1).to(events.dtype)  # a tensor: no device sync

        def score(step: Chunk) -> torch.Tensor:
            distance = self.hamming(targets[step.rows], events[step.events])
            return -distance * spread + step.position.to(distance.dtype)

        return self._top(score, inputs)


class TwinSearch(_TopKSearch):
    """TWIN's consistency-preserving GSU: ranks behaviors by the ESU's own attention logits
    (mean over heads of `q·k/sqrt(dh) + beta(c_ij)`), using the item-inherent key cache.

    The ESU is passed to `forward`, not held, so its parameters appear once in the model.

    Args:
        k: behaviors retrieved per target.
        chunk: window events scored per target per step.
    """

    def __init__(self, k: int = 64, chunk: int = 1024) -> None:
        super().__init__(k, chunk)

    def forward(
        self,
        inputs: LifelongInputs,
        attention: MultiHeadTargetAttention,
        event_keys: torch.Tensor,
        query: torch.Tensor,
    ) -> SearchResult:
        """Top-K by the ESU's logits (no gradient through the selection).

        Args:
            inputs: batch inputs.
            attention: the ESU whose parameters the GSU shares.
            event_keys: (N, H, dh) keys of the flat events (`attention.keys`, or the per-item
                cache at serving time).
            query: (T, H, dh) `attention.query` of the targets.
        """
        # mean_h(q_h·k_h + b_h) = (q·k over the flattened heads) / H + mean_h(b_h): one matrix
        # product per slice plus bias terms, never the (n, C, H) logits. The behavior and (for a
        # serving request, one request time) the time-gap terms are looked up per event and
        # broadcast over the candidates; the category match picks one of two values per pair.
        with torch.no_grad():
            heads = query.shape[1]
            keys = event_keys.detach().flatten(1)  # (N, H*dh)
            queries = query.detach().flatten(1) / heads  # (T, H*dh)
            bias = attention.split_bias(inputs).detach()
            behavior_bias, gap_bias, match_bias = (
                b.mean(dim=-1) for b in (bias.behavior, bias.gap, bias.match)
            )

        if inputs.windows.whole and inputs.request_ts is not None:
            return self._request(inputs, queries, keys, behavior_bias, gap_bias, match_bias)

        def score(step: Chunk) -> torch.Tensor:
            with torch.no_grad():
                bucket = inputs.chunk_gap_bucket_rows(step)  # (1, C) or (n, C)
                same = inputs.chunk_same_category(step)  # (n, C)
                logits = queries[step.rows] @ keys[step.events].T  # (n, C)
                match = torch.where(same, match_bias[1], match_bias[0])
                return logits + behavior_bias[step.events] + gap_bias[bucket] + match

        return self._top(score, inputs)

    def _request(
        self,
        inputs: LifelongInputs,
        queries: torch.Tensor,
        keys: torch.Tensor,
        behavior_bias: torch.Tensor,
        gap_bias: torch.Tensor,
        match_bias: torch.Tensor,
    ) -> SearchResult:
        """`forward` of a serving request (every target's window is the whole history, at one
        request time): the behavior and time-gap terms are summed per event into the matrix
        product's bias vector, so per pair only the product and the category match remain, and
        one `whole_window_topk` picks the top K, in no particular order (the ESU's attention
        over them does not depend on it).

        Args:
            inputs: the request's inputs.
            queries: (T, H·dh) queries divided by H.
            keys: (N, H·dh) event keys.
            behavior_bias: (N,) per event; gap_bias: (G,) per bucket; match_bias: (2,).
        """
        with torch.no_grad():
            event_bias = behavior_bias + gap_bias[inputs.request_gap_bucket]  # (N,)
            scores = torch.addmm(event_bias, queries, keys.T)  # (T, N)
            same = inputs.event_category.unsqueeze(0) == inputs.target_category.unsqueeze(1)
            scores = scores + torch.where(same, match_bias[1], match_bias[0])
        index, top = whole_window_topk(scores, self.k, best_first=False)
        return SearchResult(index, top)
