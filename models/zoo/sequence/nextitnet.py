"""NextItNet (Yuan et al., "A Simple Convolutional Generative Network for Next Item
Recommendation", WSDM'19): a stack of dilated causal 1-D convolution residual blocks over each
row's item embeddings, as in the paper's block (b) and RecBole's `NextItNet`.

    lifeseq train fit --config configs/sequential/base.yaml --config configs/sequential/nextitnet.yaml \
        --data.root OUT --trainer.default_root_dir RUN

Per row, on the input features x (item rows: `ItemOnly` — the convolutions carry the order, so
no position table), each residual block with dilation r (the paper's block (b)):

    h = ReLU(LayerNorm(CausalConv(x, dilation r)))       # kernel k, d → d channels
    h = ReLU(LayerNorm(CausalConv(h, dilation 2r)))
    x = x + h
    out = W · x                                          # after the last block (RecBole)

A causal convolution left-pads its input with (k − 1) · dilation zeros, so position i reads
x_{i − (k − 1)·dilation}..x_i and nothing later; the LayerNorms are per position (over the d
channels). Rows of a batch are padded on the right to their length bucket
(`SequenceRows.length_groups`): the padding lies after every real event, so a causal stack never
reads it, and each row gets its own zero left padding, so no row reads another. A serving
request (`whole_row`) is the same group without padding; `F.pad` and `conv1d` trace with a
dynamic length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifeseq.models.blocks.checks import check_positive, check_widths
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows

LAYER_NORM_EPS = 1e-8


@dataclass(frozen=True)
class NextItNetConfig:
    """YAML `encoder.init_args.config` of `NextItNet`.

    Attributes:
        dilations: the first dilation r of each residual block (its second convolution uses
            2r), in order; the paper's ML setting stacks [1, 2, 4, 8] twice.
        kernel_size: width k of every convolution.
        length_bucket: rows are padded to a multiple of this (only to batch rows together; a
            causal stack never reads the padding).
    """

    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)
    kernel_size: int = 3
    length_bucket: int = 32

    def __post_init__(self) -> None:
        dilations = check_widths("NextItNetConfig.dilations", self.dilations)
        if not dilations:
            raise ValueError("NextItNetConfig.dilations: expected at least one block, got []")
        object.__setattr__(self, "dilations", dilations)
        for name in ("kernel_size", "length_bucket"):
            check_positive(f"NextItNetConfig.{name}", getattr(self, name))


#: The default configuration (frozen, shared).
DEFAULT_CONFIG = NextItNetConfig()


class CausalConv1d(nn.Module):
    """A 1-D convolution whose output at position i reads inputs i − (k − 1)·dilation..i: the
    input is left-padded with zeros, never right.

    Args:
        channels: input and output channels d.
        kernel_size: k.
        dilation: spacing of the kernel's taps.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, d, n) → (b, d, n)."""
        return self.conv(F.pad(x, (self.left, 0)))  # (b, d, n)


class NextItNetBlock(nn.Module):
    """The paper's residual block (b): two dilated causal convolutions (dilations r and 2r),
    each followed by a per-position LayerNorm and ReLU, plus the residual.

    Args:
        channels: width d.
        kernel_size: k.
        dilation: r, the first convolution's dilation.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(channels, kernel_size, dilation)
        self.norm1 = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.conv2 = CausalConv1d(channels, kernel_size, 2 * dilation)
        self.norm2 = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, d, n) → (b, d, n)."""
        h = F.relu(self.norm1(self.conv1(x).transpose(1, 2))).transpose(1, 2)  # (b, d, n)
        h = F.relu(self.norm2(self.conv2(h).transpose(1, 2))).transpose(1, 2)
        return x + h


class NextItNet(SequenceEncoder):
    """A stack of `NextItNetBlock`s over each row, then a linear layer (see the module
    docstring).

    Args:
        dims: the data's sizes (`embedding_dim` = d).
        config: the blocks.
    """

    causal = True

    def __init__(self, dims: ModelDims, config: NextItNetConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        d = dims.embedding_dim
        self.blocks = nn.Sequential(
            *(NextItNetBlock(d, config.kernel_size, r) for r in config.dilations)
        )
        self.output = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        """x: (N, d) embedded events of `rows` → (N, d)."""
        groups = rows.length_groups(self.config.length_bucket)
        if not groups:  # a padding batch: keep every weight on the graph (DDP)
            unused = self.blocks(x.new_zeros(1, x.shape[1], 1)).sum() + x.sum()
            return self.output(x + 0 * unused)
        out = x.new_zeros(x.shape)
        for group in groups:
            padded = group.gather(x).transpose(1, 2)  # (b, d, n), real events first
            group.scatter_(out, self.blocks(padded).transpose(1, 2))  # (b, n, d)
        return self.output(out)  # (N, d)
