"""NextItNet (`models.zoo.sequence.nextitnet`): the jagged, bucket-padded encoder equals a
direct per-row loop of the paper's formula (explicit sums over the kernel taps, no `conv1d`), on
a batch whose rows fall in different length buckets; causality; the config's checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows
from lifeseq.models.zoo.sequence.nextitnet import NextItNet, NextItNetBlock, NextItNetConfig

pytestmark = pytest.mark.unit

D = 6


def causal_conv_loop(x: torch.Tensor, conv: torch.nn.Conv1d, dilation: int) -> torch.Tensor:
    """One row x (L, d) → (L, d): out_t = b + Σ_j W[:, :, j] x_{t − (k − 1 − j)·dilation},
    taps before the row's start read zero."""
    k = conv.weight.shape[2]
    out = []
    for t in range(x.shape[0]):
        acc = conv.bias.clone()
        for j in range(k):
            source = t - (k - 1 - j) * dilation
            if source >= 0:
                acc = acc + conv.weight[:, :, j] @ x[source]
        out.append(acc)
    return torch.stack(out)


def layer_norm_rows(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm of each position over its channels, written out."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def block_loop(x: torch.Tensor, block: NextItNetBlock, dilation: int) -> torch.Tensor:
    """The paper's residual block (b) on one row (L, d)."""
    h = F.relu(layer_norm_rows(causal_conv_loop(x, block.conv1.conv, dilation), block.norm1))
    h = F.relu(layer_norm_rows(causal_conv_loop(h, block.conv2.conv, 2 * dilation), block.norm2))
    return x + h


def reference(model: NextItNet, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Every row run alone through the blocks and the output layer, concatenated (N, d)."""
    out, start = [], 0
    for length in lengths:
        row = x[start : start + length]
        for block, dilation in zip(model.blocks, model.config.dilations, strict=True):
            row = block_loop(row, block, dilation)
        out.append(model.output(row))
        start += length
    return torch.cat(out)


def rows_of(lengths: list[int]) -> SequenceRows:
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    n = int(offsets[-1])
    ts = torch.arange(n, dtype=torch.int64)
    return SequenceRows.from_offsets(offsets, ts, ts + 1)


def tiny_model(**config: object) -> NextItNet:
    torch.manual_seed(0)
    model = NextItNet(
        ModelDims(item_rows=10, embedding_dim=D, max_len=40), NextItNetConfig(**config)
    )
    with torch.no_grad():  # non-trivial norms, so the reference checks their use
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_jagged_bucketed_forward_equals_the_per_row_formula() -> None:
    model = tiny_model(dilations=(1, 2, 4), kernel_size=3, length_bucket=4)
    lengths = [1, 7, 3, 12, 4]  # buckets 4, 8, 4, 12, 4; row 3 reaches the dilation-8 taps
    x = torch.randn(sum(lengths), D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x, rows_of(lengths))
        expected = reference(model, x, lengths)
    assert got.shape == (sum(lengths), D)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def check_whole_row(encoder: SequenceEncoder, width: int) -> None:
    """A serving request's row (`SequenceRows.single`, unpadded) encodes like the same row in
    a batch."""
    x = torch.randn(9, width, generator=torch.Generator().manual_seed(2))
    ts = torch.arange(9, dtype=torch.int64)
    with torch.no_grad():
        whole = encoder(x, SequenceRows.single(ts, ts + 1))
        batched = encoder(x, rows_of([9]))
    torch.testing.assert_close(whole, batched, atol=1e-6, rtol=1e-6)


def test_a_whole_row_request_equals_the_batch_forward() -> None:
    check_whole_row(tiny_model(dilations=(1, 2), kernel_size=2), D)


def test_later_events_never_change_earlier_positions() -> None:
    model = tiny_model()
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(3))
    changed = x.clone()
    changed[6:] = torch.randn(4, D)
    with torch.no_grad():
        before, after = model(x, rows_of([10])), model(changed, rows_of([10]))
    assert torch.equal(before[:6], after[:6])
    assert (before[6:] - after[6:]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dilations": ()}, "NextItNetConfig.dilations: expected at least one block"),
        ({"dilations": (1, 0)}, "NextItNetConfig.dilations: expected positive ints"),
        ({"kernel_size": 0}, "NextItNetConfig.kernel_size: expected a positive int"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NextItNetConfig(**config)


def test_a_yaml_list_of_dilations_becomes_a_tuple() -> None:
    assert NextItNetConfig(dilations=[1, 2]).dilations == (1, 2)  # type: ignore[arg-type]
