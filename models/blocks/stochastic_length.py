"""Stochastic length (HSTU paper, section 3.4): train on random subsequences of long histories.

A row of length L > s = ⌊N^(α/2)⌋ (N = `max_len`) is kept whole with probability N^α / L²;
otherwise s of its events are kept (order preserved). The row's last event is always kept, so
the row's next-item label after it (the target that follows the row) stays valid; every other
kept event is labelled with the next *kept* event, as if the dropped events had never happened.
"""

from __future__ import annotations

import math

import torch


def stochastic_length_keep(
    offsets: torch.Tensor, alpha: float, max_len: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Which events to keep, shape (N,) bool, for rows given by `offsets` (B + 1,).

    Raises:
        ValueError: `alpha` outside (0, 2].
    """
    if not 0 < alpha <= 2:
        raise ValueError(f"stochastic_length_alpha: expected a value in (0, 2], got {alpha}")
    lengths = (offsets[1:] - offsets[:-1]).tolist()
    keep = torch.ones(int(offsets[-1]), dtype=torch.bool)
    kept_len = max(1, math.floor(max_len ** (alpha / 2)))
    for row, length in enumerate(lengths):
        if length <= kept_len:
            continue
        if float(torch.rand((), generator=generator)) < max_len**alpha / length**2:
            continue
        start = int(offsets[row])
        chosen = torch.randperm(length - 1, generator=generator)[: kept_len - 1]
        keep[start : start + length - 1] = False
        keep[start + chosen] = True
    return keep.to(offsets.device)


def subsequence_labels(
    keep: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, last_values: torch.Tensor
) -> torch.Tensor:
    """Next-event values of the kept events, shape (K,) with K = keep.sum().

    Args:
        keep: shape (N,) bool, from `stochastic_length_keep` (each row's last event kept).
        offsets: shape (B + 1,) of the full rows.
        values: shape (N,), the per-event values to shift (item ids or timestamps).
        last_values: shape (N,), what each row's last event is labelled with (the shifted
            values of the full rows, e.g. `GenerativeBatch.next_item().values`).
    """
    index = torch.nonzero(keep).flatten()  # (K,)
    row = torch.bucketize(index, offsets[1:], right=True)
    following = torch.cat([index[1:], index.new_zeros(1)])
    same_row = torch.cat([row[1:] == row[:-1], row.new_zeros(1, dtype=torch.bool)])
    return torch.where(same_row, values[following], last_values[index])
