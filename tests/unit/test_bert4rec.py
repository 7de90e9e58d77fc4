"""BERT4Rec (`models.zoo.sequence.bert4rec`): bidirectional (position 0 reads a row's last
event, never another row's), the jagged bucket-padded forward equals a per-row loop of the
paper's post-LN formula, FFN 4·d by default, and the config's checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lifeseq.models.interfaces import ModelDims
from lifeseq.models.zoo.sequence.bert4rec import Bert4Rec, Bert4RecBlock, Bert4RecConfig
from tests.unit.test_nextitnet import check_whole_row, rows_of

pytestmark = pytest.mark.unit

D = 8


def tiny_model(**config: object) -> Bert4Rec:
    torch.manual_seed(0)
    dims = ModelDims(item_rows=10, embedding_dim=D, max_len=40)
    return Bert4Rec(dims, Bert4RecConfig(**{"length_bucket": 4, **config})).eval()


def block_loop(x: torch.Tensor, block: Bert4RecBlock) -> torch.Tensor:
    """One row x (L, d) through a post-LN layer, written out: per head
    softmax(q kᵀ / √(d/H)) v over the whole row, then the residuals and LayerNorms."""
    d, h = x.shape[1], block.heads
    weights, biases = block.qkv.weight.split(d), block.qkv.bias.split(d)
    q, k, v = (x @ w.T + b for w, b in zip(weights, biases, strict=True))  # (L, d) each
    heads = []
    for i in range(h):
        part = slice(i * d // h, (i + 1) * d // h)
        scores = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(d // h), dim=-1)  # (L, L)
        heads.append(scores @ v[:, part])
    attended = torch.cat(heads, dim=1) @ block.attention_out.weight.T + block.attention_out.bias
    x = F.layer_norm(
        x + attended, (d,), block.attention_norm.weight, block.attention_norm.bias, 1e-12
    )
    first, second = block.ffn[0], block.ffn[2]
    hidden = F.gelu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    return F.layer_norm(x + hidden, (d,), block.ffn_norm.weight, block.ffn_norm.bias, 1e-12)


def reference(model: Bert4Rec, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Every row alone: embedding LayerNorm, the blocks, the GELU projection; (N, d)."""
    out, start = [], 0
    for length in lengths:
        row = model.input_norm(x[start : start + length])
        for block in model.blocks:
            row = block_loop(row, block)
        out.append(F.gelu(model.projection(row)))
        start += length
    return torch.cat(out)


def test_jagged_bucketed_forward_equals_the_per_row_formula() -> None:
    model = tiny_model()
    lengths = [1, 6, 3, 9]  # buckets 4, 8, 4, 12: padding slots in every group
    x = torch.randn(sum(lengths), D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x, rows_of(lengths))
        expected = reference(model, x, lengths)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_position_0_reads_the_last_event_of_its_row_only() -> None:
    model = tiny_model()
    lengths = [7, 5]
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(2))
    changed = x.clone()
    changed[6] = torch.randn(D)  # the first row's last event
    with torch.no_grad():
        before, after = model(x, rows_of(lengths)), model(changed, rows_of(lengths))
    assert (before[0] - after[0]).abs().max() > 1e-3, "position 0 ignored the last event"
    assert torch.equal(before[7:], after[7:]), "another row changed"


def test_a_whole_row_request_equals_the_batch_forward() -> None:
    check_whole_row(tiny_model(), D)


def test_the_ffn_is_4d_wide_unless_set() -> None:
    assert tiny_model().blocks[0].ffn[0].out_features == 4 * D
    assert tiny_model(ffn_dim=12).blocks[0].ffn[0].out_features == 12
    assert not tiny_model().causal


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"heads": 0}, "Bert4RecConfig.heads: expected a positive int"),
        ({"ffn_dim": 0}, "Bert4RecConfig.ffn_dim: expected a positive int"),
        ({"dropout": 1.0}, r"Bert4RecConfig.dropout: expected a value in \[0, 1\)"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Bert4RecConfig(**config)


def test_a_width_the_heads_do_not_divide_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match="d = 8 is not divisible by heads = 3"):
        Bert4Rec(ModelDims(item_rows=10, embedding_dim=D), Bert4RecConfig(heads=3))
