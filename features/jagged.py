"""A minimal jagged tensor (values + lengths) that needs no torchrec.

Batches and models use this type so that everything runs with the plain-torch embedding backend
on machines without torchrec/fbgemm (our GPU test machine). `to_torchrec()` converts to
torchrec's `JaggedTensor` where the TorchRec backend needs it; torchrec is imported lazily.

Calling convention (as in generative-recommenders): `values` of shape (N, ...) with
`lengths` of shape (B,) and `offsets` of shape (B + 1,), `offsets[0] = 0`,
`offsets[-1] = N`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Jagged:
    """B variable-length rows packed into one `values` tensor.

    Attributes:
        values: shape (N, ...) with N = lengths.sum().
        lengths: shape (B,), int64.
    """

    values: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self) -> None:
        if self.lengths.dim() != 1:
            raise ValueError(
                f"Jagged.lengths: expected a 1-D tensor, got shape {tuple(self.lengths.shape)}"
            )
        if self.lengths.device.type != "cpu":
            return  # checking the total would force a device sync on every construction
        total = int(self.lengths.sum()) if self.lengths.numel() else 0
        if self.values.shape[0] != total:
            raise ValueError(
                f"Jagged: values has {self.values.shape[0]} rows but lengths sum to {total}"
            )

    @property
    def offsets(self) -> torch.Tensor:
        """Shape (B + 1,): row start positions, `offsets[-1] = N`."""
        return torch.cat([self.lengths.new_zeros(1), torch.cumsum(self.lengths, 0)])

    @property
    def batch_size(self) -> int:
        """Number of rows B."""
        return int(self.lengths.shape[0])

    @property
    def max_length(self) -> int:
        """Longest row (0 for an empty batch)."""
        return int(self.lengths.max()) if self.lengths.numel() else 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Jagged:
        """Move values and lengths to `device`."""
        return Jagged(
            self.values.to(device, non_blocking=non_blocking),
            self.lengths.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Jagged:
        """Page-locked copy (for asynchronous host→GPU copies)."""
        return Jagged(self.values.pin_memory(), self.lengths.pin_memory())

    def to_padded(self, max_length: int | None = None, padding_value: float = 0) -> torch.Tensor:
        """Dense (B, T, ...) copy, T = `max_length` or the longest row; rows are left-aligned."""
        length = self.max_length if max_length is None else max_length
        out = self.values.new_full((self.batch_size, length, *self.values.shape[1:]), padding_value)
        if self.values.shape[0]:
            row = torch.repeat_interleave(
                torch.arange(self.batch_size, device=self.values.device), self.lengths
            )
            col = torch.arange(
                self.values.shape[0], device=self.values.device
            ) - torch.repeat_interleave(self.offsets[:-1], self.lengths)
            keep = col < length
            out[row[keep], col[keep]] = self.values[keep]
        return out

    @staticmethod
    def from_list(rows: list[torch.Tensor]) -> Jagged:
        """Pack a list of (L_i, ...) tensors."""
        lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.int64)
        values = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64)
        return Jagged(values, lengths)

    def to_torchrec(self) -> Any:
        """torchrec `JaggedTensor` view (requires torchrec)."""
        from torchrec.sparse.jagged_tensor import JaggedTensor

        return JaggedTensor(values=self.values, lengths=self.lengths)
