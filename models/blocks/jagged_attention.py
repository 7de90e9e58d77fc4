"""Self-attention over jagged sequences: HSTU's pointwise attention and softmax attention.

Calling convention (as in generative-recommenders' ops): `q`, `k`, `v` hold the N events of B
rows packed together, shapes (N, H, d); `offsets` (B + 1,) marks the rows. Rows are grouped by
length bucket (lengths rounded up to a multiple of `bucket`), and each group is padded only to
its bucket length, so no compute is spent on padding beyond the buckets. A group too large for
`max_group_elements` attention scores is split into row slices.

* `hstu_attention` is the plain-PyTorch reference of HSTU's attention (Zhai et al., ICML'24):
  `A = SiLU(Q Kᵀ + rab) / N ⊙ causal`, no softmax and no 1/√d, with `rab` from
  `RelativeBiasInputs` (learned position bias over j − i plus a learned bias over the bucketized
  time gap between the query's time and the key's time). A fused GPU kernel can replace it under
  the equivalence tests in `tests/unit/test_sequential_models.py`.
* `softmax_attention`: scaled-dot-product attention (SASRec; causal, or bidirectional for
  cloze-trained encoders) on the same groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: `time_bucket`'s divisor: ⌊ln(max(|Δt|, 1)) / 0.301⌋ as in the HSTU reference (≈ log2 buckets).
TIME_BUCKET_DIVISOR = 0.301


@dataclass(frozen=True)
class LengthGroup:
    """Rows of one length bucket, padded to `length`.

    Attributes:
        rows: shape (b,) int64, the row indices in [0, B).
        length: padded length n of this group (multiple of the bucket, ≥ every row's length).
        index: shape (b, n) int64, flat event index of each padded slot (0 where invalid).
        valid: shape (b, n) bool, True at real events.
        whole: the group is one row holding every event, unpadded (`whole_row`: a serving
            request); scattering it back is a plain copy, with no data-dependent shapes.
    """

    rows: torch.Tensor
    length: int
    index: torch.Tensor
    valid: torch.Tensor
    whole: bool = False

    @staticmethod
    def whole_row(n: int, device: torch.device) -> LengthGroup:
        """The one group of a single row of `n` events (no padding)."""
        index = torch.arange(n, device=device).unsqueeze(0)
        return LengthGroup(
            rows=torch.zeros(1, dtype=torch.int64, device=device),
            length=n,
            index=index,
            valid=torch.ones_like(index, dtype=torch.bool),
            whole=True,
        )

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Padded copy (b, n, ...) of jagged `values` (N, ...); zeros at padding."""
        out = values[self.index]
        mask = self.valid.view(*self.valid.shape, *([1] * (values.dim() - 1)))
        return out * mask.to(out.dtype) if out.is_floating_point() else out * mask

    def scatter_(self, out: torch.Tensor, padded: torch.Tensor) -> None:
        """Write the valid slots of `padded` (b, n, ...) into jagged `out` (N, ...) in place."""
        if self.whole:
            out.copy_(padded.reshape(out.shape))
            return
        out[self.index[self.valid]] = padded[self.valid].to(out.dtype)


def length_groups(
    offsets: torch.Tensor, bucket: int = 32, max_group_elements: int = 1 << 24
) -> list[LengthGroup]:
    """Group the rows of `offsets` (B + 1,) by length rounded up to a multiple of `bucket`.

    Empty rows are left out. A group is cut into row slices of at most `max_group_elements`
    padded (n × n) attention entries each (at least one row per slice). Reads the lengths back
    to the host once; compute the groups once per forward and pass them to every block.

    Raises:
        ValueError: `bucket` or `max_group_elements` < 1, or `offsets` not 1-D non-decreasing
            from 0.
    """
    if bucket < 1 or max_group_elements < 1:
        raise ValueError(
            f"length_groups: bucket and max_group_elements must be >= 1, got {bucket} and "
            f"{max_group_elements}"
        )
    if offsets.dim() != 1 or offsets.numel() < 1 or int(offsets[0]) != 0:
        raise ValueError("length_groups: offsets must be 1-D, start at 0, shape (B + 1,)")
    lengths = offsets[1:] - offsets[:-1]
    if bool((lengths < 0).any()):
        raise ValueError("length_groups: offsets must be non-decreasing")
    padded = (lengths + bucket - 1) // bucket * bucket
    groups: list[LengthGroup] = []
    for length in sorted({int(x) for x in padded[lengths > 0].tolist()}):
        rows = torch.nonzero(padded == length).flatten()
        per_slice = max(1, max_group_elements // (length * length))
        for start in range(0, rows.numel(), per_slice):
            part = rows[start : start + per_slice]
            position = torch.arange(length, device=offsets.device)
            valid = position.unsqueeze(0) < lengths[part].unsqueeze(1)  # (b, n)
            index = (offsets[part].unsqueeze(1) + position.unsqueeze(0)) * valid
            groups.append(LengthGroup(rows=part, length=length, index=index, valid=valid))
    return groups


def time_bucket(delta: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """HSTU's time-gap bucket of `delta` seconds (any shape): ⌊ln(max(|Δ|, 1)) / 0.301⌋ in
    [0, num_buckets] (so `num_buckets + 1` bias values); int64, same shape."""
    magnitude = delta.abs().clamp(min=1).to(torch.float64)
    bucket = torch.floor(torch.log(magnitude) / TIME_BUCKET_DIVISOR)
    return bucket.clamp(0, num_buckets).to(torch.int64)


@dataclass(frozen=True)
class RelativeBiasInputs:
    """What HSTU's relative attention bias `rab` needs: two tables and the event times.

    `rab[i, j] = position_weight[max_len - 1 + j - i] + time_weight[time_bucket(query_ts[i] −
    key_ts[j])]` for query position i and key position j of a row. In the reference the query
    time of position i is the next event's timestamp; see `models.zoo.sequence.hstu` for ours.

    Attributes:
        position_weight: shape (2 * max_len - 1,), bias by relative position j − i.
        time_weight: shape (num_buckets + 1,), bias by time-gap bucket.
        key_ts: shape (N,) int64, timestamp of each event (jagged like q/k/v).
        query_ts: shape (N,) int64, the time at which each position's prediction is made.
        max_len: N of the reference (fixes the position table's centre).
    """

    position_weight: torch.Tensor
    time_weight: torch.Tensor
    key_ts: torch.Tensor
    query_ts: torch.Tensor
    max_len: int

    @property
    def num_time_buckets(self) -> int:
        """Largest time bucket (the table has one more entry)."""
        return int(self.time_weight.shape[0]) - 1

    def padded(self, group: LengthGroup) -> torch.Tensor:
        """`rab` of a group's rows, shape (b, n, n) (query position, key position); rows must
        be at most `max_len` long (the bucket's padding may exceed it)."""
        n = group.length
        position = torch.arange(n, device=self.position_weight.device)
        relative = position.unsqueeze(0) - position.unsqueeze(1) + self.max_len - 1  # (n, n)
        # Only padded slots (beyond max_len) fall outside the table; clamp them.
        relative = relative.clamp(0, 2 * self.max_len - 2)
        position_bias = self.position_weight[relative]
        query = group.gather(self.query_ts)  # (b, n)
        key = group.gather(self.key_ts)
        buckets = time_bucket(query.unsqueeze(2) - key.unsqueeze(1), self.num_time_buckets)
        return position_bias.unsqueeze(0) + self.time_weight[buckets]  # (b, n, n)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"jagged attention: expected q, k of shape (N, H, d) and v (N, H, dv); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if offsets.numel() and not torch.compiler.is_compiling() and int(offsets[-1]) != q.shape[0]:
        raise ValueError(
            f"jagged attention: offsets[-1] = {int(offsets[-1])} but q has {q.shape[0]} events"
        )


def _connected(out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """`out` plus zero times every input: the output of a batch without events still reaches
    every parameter in backward (a zero gradient), which DDP needs in every step."""
    return out + sum(0.0 * x.sum() for x in inputs)


def _causal(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    bias: RelativeBiasInputs | None,
    normalizer: int,
    groups: list[LengthGroup] | None = None,
) -> torch.Tensor:
    """HSTU pointwise causal attention, plain-PyTorch reference.

    `out_i = Σ_{j ≤ i} SiLU(q_i · k_j + rab_ij) / normalizer · v_j` per row and head.

    Args:
        q, k: shape (N, H, dqk). v: shape (N, H, dv).
        offsets: shape (B + 1,) row offsets.
        bias: the relative attention bias inputs (None: no `rab`).
        normalizer: N of the reference (the padded maximum length, a constant).
        groups: `length_groups(offsets)` computed once per forward (None: computed here).

    Returns:
        shape (N, H, dv), zeros for no event.
    """
    _check_qkv(q, k, v, offsets)
    out = v.new_zeros(v.shape)
    groups = groups if groups is not None else length_groups(offsets)
    for group in groups:
        qp, kp, vp = group.gather(q), group.gather(k), group.gather(v)  # (b, n, H, d)
        scores = torch.einsum("bnhd,bmhd->bhnm", qp, kp)  # (b, H, n, n)
        if bias is not None:
            scores = scores + bias.padded(group).unsqueeze(1).to(scores.dtype)
        weights = F.silu(scores) / normalizer
        weights = weights * _causal(group.length, q.device).to(weights.dtype)
        group.scatter_(out, torch.einsum("bhnm,bmhd->bnhd", weights, vp))
    if not groups:  # no events: keep the inputs (and the bias tables) on the graph
        extra = [] if bias is None else [bias.position_weight, bias.time_weight]
        return _connected(out, q, k, v, *extra)
    return out


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    dropout: float = 0.0,
    groups: list[LengthGroup] | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Softmax attention with 1/√d scaling (SASRec) over jagged rows, causal or bidirectional.

    Args:
        q, k: shape (N, H, d). v: shape (N, H, dv).
        offsets: shape (B + 1,) row offsets.
        dropout: dropout on the attention weights (pass 0.0 in eval).
        groups: `length_groups(offsets)` computed once per forward (None: computed here).
        causal: position i attends to 0..i of its row; False: to the whole row (padding slots
            of a group are masked out).

    Returns:
        shape (N, H, dv).
    """
    _check_qkv(q, k, v, offsets)
    out = v.new_zeros(v.shape)
    scale = 1.0 / math.sqrt(q.shape[-1])
    groups = groups if groups is not None else length_groups(offsets)
    if not groups:  # no events: keep the inputs on the graph
        return _connected(out, q, k, v)
    for group in groups:
        qp, kp, vp = (group.gather(x).transpose(1, 2) for x in (q, k, v))  # (b, H, n, d)
        if causal:
            attended = F.scaled_dot_product_attention(
                qp, kp, vp, is_causal=True, dropout_p=dropout, scale=scale
            )
        else:
            keys = None if group.whole else group.valid[:, None, None, :]  # (b, 1, 1, n)
            attended = F.scaled_dot_product_attention(
                qp, kp, vp, attn_mask=keys, dropout_p=dropout, scale=scale
            )
        group.scatter_(out, attended.transpose(1, 2))
    return out


__all__ = [
    "LengthGroup",
    "RelativeBiasInputs",
    "hstu_attention",
    "length_groups",
    "softmax_attention",
    "time_bucket",
]
