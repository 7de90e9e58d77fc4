"""Sequential models (HSTU / SASRec in `models.sequential.SequentialRecommender`): attention
references (causal and bidirectional), causality, jagged == alone, bias buckets, the next-item
task's labels, negatives and losses (`trainers.tasks.next_item`), and the masked-item task's
masks and query rows (`trainers.tasks.masked_item`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lifeseq.features.batch import GenerativeBatch, collate_generative
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.blocks.input_features import ItemAndPosition
from lifeseq.models.blocks.jagged_attention import (
    LengthGroup,
    RelativeBiasInputs,
    hstu_attention,
    length_groups,
    softmax_attention,
    time_bucket,
)
from lifeseq.models.blocks.sampled_softmax import (
    Negatives,
    SoftmaxLossConfig,
    draw_negatives,
    full_softmax_loss,
    sampled_softmax_loss,
)
from lifeseq.models.blocks.stochastic_length import stochastic_length_keep, subsequence_labels
from lifeseq.models.interfaces import ModelDims, SequenceEncoder
from lifeseq.models.sequential import SequenceOutput, SequenceStep, SequentialRecommender
from lifeseq.models.zoo.sequence.hstu import Hstu, HstuConfig
from lifeseq.models.zoo.sequence.sasrec import SasRec, SasRecConfig
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.platform_module import EmbeddingConfig
from lifeseq.trainers.tasks.masked_item import MaskedItemModule, cloze_mask, masked_query_rows
from lifeseq.trainers.tasks.next_item import NextItemModule, target_queries

V = 60


def chain_sample(user: int, items: np.ndarray, ts: np.ndarray, split: str = "valid") -> UserSample:
    """All but the last of `items`/`ts` as history; the last as the one positive target."""
    n = len(items) - 1
    history = {
        "item": items[:n],
        "category": np.full(n, 2),
        "behavior": np.full(n, 2),
        "ts": ts[:n],
    }
    targets = {
        "target_item": items[n:],
        "target_category": np.full(1, 2),
        "target_ts": ts[n:],
        "target_label": np.ones(1, dtype=np.float32),
        "target_hist_len": np.array([n]),
    }
    return UserSample(f"u{user}", split, history, targets)


def make_sample(user: int, length: int, seed: int = 0) -> UserSample:
    """`length` random history events and one positive target right after them."""
    rng = np.random.default_rng([seed, user])
    items = rng.integers(2, V, length + 1)
    return chain_sample(user, items, np.cumsum(rng.integers(1, 5000, length + 1)))


def make_batch(lengths: list[int], max_len: int = 40, seed: int = 0) -> GenerativeBatch:
    return collate_generative(
        [make_sample(u, n, seed) for u, n in enumerate(lengths)], max_len=max_len
    )


def encoder_factory(encoder: str, **config: Any) -> Callable[[ModelDims], SequenceEncoder]:
    """`ModelDims -> encoder` of `hstu`, `sasrec` or `sasrec_bidirectional` (length bucket 8
    unless `config` says otherwise)."""
    settings = {"length_bucket": 8, **config}
    if encoder == "hstu":
        return functools.partial(Hstu, config=HstuConfig(**settings))
    assert encoder in ("sasrec", "sasrec_bidirectional"), encoder
    causal = encoder == "sasrec"
    return functools.partial(SasRec, config=SasRecConfig(causal=causal, **settings))


def make_model(encoder: str, max_len: int = 40, **config: object) -> SequentialRecommender:
    """An eval-mode model over `V` items, d 16, `item · √d + position` inputs, seed 3."""
    dims = ModelDims(item_rows=V, embedding_dim=16, max_len=max_len, backend="torch", seed=3)
    return SequentialRecommender(dims, encoder_factory(encoder, **config), ItemAndPosition).eval()


def encode(model: SequentialRecommender, batch: GenerativeBatch) -> SequenceOutput:
    """The model's per-position outputs on the batch's rows (key times: the events'; query
    times: `batch.query_ts()`), no candidates."""
    return model(
        SequenceStep(
            batch.sequence["item"],
            batch.sequence["ts"].values,
            batch.query_ts().values,
            torch.zeros(0, dtype=torch.int64),
        )
    )


def sequence_schema(max_len: int, embedding_dim: int = 16) -> FeatureSchema:
    """A feature schema of `V` items (3 categories, 3 behaviors)."""
    config = FeatureConfig(embedding_dim=embedding_dim, max_len=max_len)
    return FeatureSchema.from_vocab({"item": V, "category": 3, "behavior": 3}, config)


def next_item_module(
    encoder: str,
    max_len: int,
    embedding_dim: int = 16,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    **task: Any,
) -> NextItemModule:
    """A `NextItemModule` (torch backend, encoder `config` overrides, `task` arguments) with its
    model built for `sequence_schema`."""
    module = NextItemModule(
        encoder_factory(encoder, **(config or {})),
        embedding=EmbeddingConfig("torch"),
        seed=seed,
        **task,
    )
    module.setup_model(sequence_schema(max_len, embedding_dim))
    return module


# --- bias ----------------------------------------------------------------------------------


def test_time_bucket_hand_cases() -> None:
    """⌊ln(max(|Δ|, 1)) / 0.301⌋ clamped to [0, 128]."""
    delta = torch.tensor([0, 1, -1, 2, 10, -10, 3600, 86_400, 2**62])
    expected = [0, 0, 0, 2, 7, 7, 27, 37, 128]
    # ln 2 / .301 = 2.30; ln 10 / .301 = 7.65; ln 3600 / .301 = 27.2; ln 86400 / .301 = 37.8
    assert time_bucket(delta, 128).tolist() == expected
    assert time_bucket(torch.tensor([86_400]), 30).tolist() == [30]


def test_relative_bias_on_hand_made_timestamps() -> None:
    """rab[i, j] = position[max_len − 1 + j − i] + time[bucket(query_ts[i] − key_ts[j])]."""
    max_len = 4
    position = torch.arange(2 * max_len - 1, dtype=torch.float32) * 100  # 0, 100, ..., 600
    time = torch.arange(11, dtype=torch.float32)  # bias = bucket number, buckets 0..10
    key_ts = torch.tensor([0, 1, 11, 1000])  # one row of 3 events, one of 1
    query_ts = torch.tensor([1, 11, 111, 1000])
    bias = RelativeBiasInputs(position, time, key_ts, query_ts, max_len)
    groups = length_groups(torch.tensor([0, 3, 4]), bucket=4)
    assert len(groups) == 1 and groups[0].length == 4
    rab = bias.padded(groups[0])  # (2, 4, 4)
    # row 0, query 2 (query_ts 111) vs key 0 (ts 0): Δ 111 → ⌊4.71 / .301⌋ = 15 → clamp 10;
    # relative position j − i = −2 → index 3 − 2 = 1 → 100.
    assert rab[0, 2, 0].item() == pytest.approx(100 + 10)
    # query 1 (11) vs key 1 (1): Δ 10 → 7; j − i = 0 → 300.
    assert rab[0, 1, 1].item() == pytest.approx(300 + 7)
    # query 2 (111) vs key 2 (11): Δ 100 → ⌊4.605 / .301⌋ = 15 → 10; position 300.
    assert rab[0, 2, 2].item() == pytest.approx(300 + 10)
    # query 0 (1) vs key 0 (0): Δ 1 → 0; position 300.
    assert rab[0, 0, 0].item() == pytest.approx(300)
    # second row, one event: Δ 0 → bucket 0.
    assert rab[1, 0, 0].item() == pytest.approx(300)


# --- attention references ------------------------------------------------------------------


def _random_jagged(lengths: list[int], heads: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q, k, v = (torch.randn(n, heads, dim, generator=g) for _ in range(3))
    offsets = torch.tensor([0, *np.cumsum(lengths).tolist()])
    ts = torch.cumsum(torch.randint(1, 10_000, (n,), generator=g), 0)
    return q, k, v, offsets, ts


def _hstu_row_by_row(q, k, v, offsets, bias, normalizer):
    """The formula, one row and one query at a time, no padding at all."""
    out = torch.zeros_like(v)
    for row in range(offsets.numel() - 1):
        a, b = int(offsets[row]), int(offsets[row + 1])
        for i in range(a, b):
            for j in range(a, i + 1):
                score = (q[i] * k[j]).sum(-1)  # (H,)
                if bias is not None:
                    rel = bias.max_len - 1 + (j - a) - (i - a)
                    bucket = time_bucket(bias.query_ts[i] - bias.key_ts[j], bias.num_time_buckets)
                    score = score + bias.position_weight[rel] + bias.time_weight[bucket]
                out[i] += (F.silu(score) / normalizer).unsqueeze(-1) * v[j]
    return out


@pytest.mark.parametrize("bucket", [1, 4, 32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_hstu_attention_jagged_equals_row_by_row_formula(bucket: int, with_bias: bool) -> None:
    lengths = [5, 1, 0, 9, 3]
    q, k, v, offsets, ts = _random_jagged(lengths, heads=2, dim=4)
    g = torch.Generator().manual_seed(1)
    bias = (
        RelativeBiasInputs(
            torch.randn(2 * 12 - 1, generator=g),
            torch.randn(129, generator=g),
            ts,
            ts + 7,
            max_len=12,
        )
        if with_bias
        else None
    )
    groups = length_groups(offsets, bucket=bucket, max_group_elements=100)
    out = hstu_attention(q, k, v, offsets, bias, normalizer=12, groups=groups)
    expected = _hstu_row_by_row(q, k, v, offsets, bias, normalizer=12)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_hstu_attention_gradients_match_the_formula() -> None:
    q, k, v, offsets, ts = _random_jagged([4, 6], heads=1, dim=3, seed=2)
    bias = RelativeBiasInputs(torch.randn(19), torch.randn(129), ts, ts + 1, max_len=10)
    grads = []
    for fn in (
        lambda *x: hstu_attention(*x, offsets, bias, 10),
        lambda *x: _hstu_row_by_row(*x, offsets, bias, 10),
    ):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        (fn(*inputs) ** 2).sum().backward()
        grads.append([t.grad for t in inputs])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_softmax_attention_jagged_equals_each_row_alone() -> None:
    lengths = [7, 2, 11]
    q, k, v, offsets, _ = _random_jagged(lengths, heads=2, dim=4, seed=3)
    out = softmax_attention(q, k, v, offsets, groups=length_groups(offsets, bucket=4))
    for row in range(3):
        a, b = int(offsets[row]), int(offsets[row + 1])
        scores = torch.einsum("nhd,mhd->hnm", q[a:b], k[a:b]) / 2.0  # √4
        scores = scores.masked_fill(~torch.ones(b - a, b - a, dtype=torch.bool).tril(), -1e30)
        expected = torch.einsum("hnm,mhd->nhd", scores.softmax(-1), v[a:b])
        torch.testing.assert_close(out[a:b], expected, rtol=1e-5, atol=1e-5)


def _softmax_row_by_row(q, k, v, offsets, causal):
    """Softmax attention with 1/√d, one row and one query at a time, no padding at all."""
    out = torch.zeros_like(v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    for row in range(offsets.numel() - 1):
        a, b = int(offsets[row]), int(offsets[row + 1])
        for i in range(a, b):
            keys = slice(a, i + 1) if causal else slice(a, b)
            scores = torch.einsum("hd,mhd->hm", q[i], k[keys]) * scale  # (H, m)
            out[i] = torch.einsum("hm,mhd->hd", scores.softmax(-1), v[keys])
    return out


@pytest.mark.parametrize("bucket", [1, 4, 32])
def test_bidirectional_softmax_attention_equals_row_by_row_formula(bucket: int) -> None:
    """Every position reads its whole row and nothing else: with bucket 32 most slots of each
    group are padding, and the outputs still equal the unpadded reference (gradients too)."""
    lengths = [7, 2, 0, 11, 1]
    q, k, v, offsets, _ = _random_jagged(lengths, heads=2, dim=4, seed=4)
    groups = length_groups(offsets, bucket=bucket, max_group_elements=300)
    assert bucket == 1 or any(not bool(g.valid.all()) for g in groups)  # padding slots exist
    grads = []
    for fn in (
        lambda *x: softmax_attention(*x, offsets, groups=groups, causal=False),
        lambda *x: _softmax_row_by_row(*x, offsets, causal=False),
    ):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*inputs)
        (out**2).sum().backward()
        grads.append([out.detach(), *(t.grad for t in inputs)])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the first position of a row reads later events (it would not, causally)
    causal = softmax_attention(q, k, v, offsets, groups=groups)
    torch.testing.assert_close(causal, _softmax_row_by_row(q, k, v, offsets, causal=True))
    assert not torch.allclose(grads[0][0][0], causal[0], atol=1e-4)


def test_bidirectional_softmax_attention_on_a_whole_row() -> None:
    """A serving request's single unpadded row (`LengthGroup.whole_row`) gives the same."""
    q, k, v, offsets, _ = _random_jagged([9], heads=1, dim=8, seed=5)
    out = softmax_attention(
        q, k, v, offsets, groups=[LengthGroup.whole_row(9, q.device)], causal=False
    )
    torch.testing.assert_close(out, _softmax_row_by_row(q, k, v, offsets, causal=False))


def test_length_groups_cover_every_event_once_with_bounded_padding() -> None:
    lengths = torch.tensor([3, 0, 17, 8, 9, 16, 1])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    groups = length_groups(offsets, bucket=8)
    seen = torch.cat([g.index[g.valid] for g in groups])
    assert sorted(seen.tolist()) == list(range(int(lengths.sum())))
    for g in groups:
        assert g.length % 8 == 0 and (lengths[g.rows] > g.length - 8).all()
    with pytest.raises(ValueError, match="bucket"):
        length_groups(offsets, bucket=0)


# --- model invariants ----------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["hstu", "sasrec"])
def test_causality_later_items_never_change_earlier_outputs(encoder: str) -> None:
    model = make_model(encoder)
    batch = make_batch([12, 7])
    base = encode(model, batch).user
    changed = make_batch([12, 7])
    items, ts = changed.sequence["item"].values, changed.sequence["ts"].values
    items[8] = (items[8] + 5) % (V - 2) + 2  # row 0, position 8
    out = encode(model, changed).user
    torch.testing.assert_close(out[:8], base[:8], rtol=0, atol=1e-6)
    assert not torch.allclose(out[8:12], base[8:12], atol=1e-4)
    # Event 8's timestamp is position 7's query time (when its prediction is requested), so
    # it may change position 7 but nothing before.
    ts[8] += 123_456
    out = encode(model, changed).user
    torch.testing.assert_close(out[:7], base[:7], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[12:], base[12:], rtol=0, atol=1e-6)  # other row untouched


@pytest.mark.parametrize("encoder", ["hstu", "sasrec", "sasrec_bidirectional"])
def test_jagged_batch_equals_each_user_alone(encoder: str) -> None:
    """Padding invariance: a row's outputs do not depend on the other rows or on bucketing."""
    model = make_model(encoder)
    lengths = [12, 1, 30, 5]
    batch = make_batch(lengths)
    together = encode(model, batch).user
    offsets = np.cumsum([0, *lengths])
    for user, n in enumerate(lengths):
        alone = encode(model, collate_generative([make_sample(user, n)], max_len=40)).user
        torch.testing.assert_close(
            together[offsets[user] : offsets[user + 1]], alone, rtol=1e-5, atol=1e-6
        )


def test_hstu_uses_the_time_bias() -> None:
    model = make_model("hstu")
    with torch.no_grad():
        for bias in model.dense.encoder.biases:
            bias.time_weight.copy_(torch.linspace(-2, 2, bias.time_weight.numel()))
    batch = make_batch([10])
    base = encode(model, batch).user
    batch.sequence["ts"].values[:5] -= 10**7  # older early events: other time buckets
    assert not torch.allclose(encode(model, batch).user[5:], base[5:], atol=1e-4)


def test_query_ts_and_next_item_use_the_following_target() -> None:
    batch = make_batch([3, 2])
    ts = batch.sequence["ts"].values.tolist()
    assert batch.query_ts().values.tolist() == [
        ts[1], ts[2], int(batch.target_ts[0]), ts[4], int(batch.target_ts[1]),
    ]  # fmt: skip
    labels = batch.next_item().values.tolist()
    items = batch.sequence["item"].values.tolist()
    assert labels == [
        items[1],
        items[2],
        int(batch.target_item[0]),
        items[4],
        int(batch.target_item[1]),
    ]


def test_target_queries_read_the_position_before_each_target() -> None:
    model = make_model("hstu")
    batch = make_batch([4, 6])
    output = encode(model, batch)
    queries = target_queries(output, batch)
    torch.testing.assert_close(queries[0], output.user[3])
    torch.testing.assert_close(queries[1], output.user[9])


# --- losses --------------------------------------------------------------------------------


def _reference_loss(query, positive, negatives, table, t):
    """−log softmax of the positive among itself and the negatives that differ from it."""
    others = [n for n in negatives if n != positive]
    logits = torch.cat([query @ table[[positive]].T, query @ table[others].T]) / t
    return (logits.logsumexp(0) - logits[0]).item()


def test_sampled_softmax_masks_negatives_equal_to_the_positive() -> None:
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    table = F.normalize(torch.randn(10, 8, generator=g), dim=-1)
    positives = torch.tensor([4, 5, 6])
    shared = Negatives(torch.tensor([[4, 7, 5, 8]]))  # contains positives 4 and 5
    loss = sampled_softmax_loss(
        queries, positives, table[positives], shared, table[shared.ids], 0.1
    )
    for m, pos in enumerate(positives.tolist()):
        expected = _reference_loss(queries[m], pos, shared.ids[0].tolist(), table, 0.1)
        assert loss[m].item() == pytest.approx(expected, rel=1e-5)
    # per position: a row made only of the positive leaves the positive alone: loss 0
    own = Negatives(torch.tensor([[4, 4], [7, 8], [6, 6]]))
    loss = sampled_softmax_loss(queries, positives, table[positives], own, table[own.ids], 0.1)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[2].item() == pytest.approx(0.0, abs=1e-6) and loss[1].item() > 0
    # pooled: each position gathers its own columns of the shared pool
    pool = Negatives(torch.tensor([[4, 7, 5, 8, 6]]), picks=torch.tensor([[0, 1], [2, 3], [4, 0]]))
    loss = sampled_softmax_loss(queries, positives, table[positives], pool, table[pool.ids], 0.1)
    for m, negatives in enumerate(([4, 7], [5, 8], [6, 4])):
        expected = _reference_loss(queries[m], int(positives[m]), negatives, table, 0.1)
        assert loss[m].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("sampling", ["pooled", "independent", "shared"])
def test_draw_negatives_counts_and_ranges(sampling: str) -> None:
    torch.manual_seed(0)
    positives = torch.tensor([9, 9, 3])
    config = SoftmaxLossConfig(
        uniform_negatives=50, in_batch_negatives=7, sampling=sampling, pool_size=64
    )
    negatives = draw_negatives(positives, 12, config)
    per_position = negatives.ids[0][negatives.picks] if negatives.picks is not None else None
    if sampling == "pooled":
        assert negatives.ids.shape == (1, 64 + 3) and per_position.shape == (3, 57)
    else:
        assert negatives.ids.shape == ((1, 57) if sampling == "shared" else (3, 57))
        per_position = negatives.ids.expand(3, 57)
    uniform, in_batch = per_position[:, :50], per_position[:, 50:]
    assert ((uniform >= 2) & (uniform < 12)).all()
    assert set(in_batch.flatten().tolist()) <= {9, 3}
    with pytest.raises(ValueError, match="uniform_negatives"):
        SoftmaxLossConfig(uniform_negatives=0, in_batch_negatives=0)
    with pytest.raises(ValueError, match="loss.pool_size"):
        SoftmaxLossConfig(uniform_negatives=128, pool_size=64)
    with pytest.raises(ValueError, match="loss.sampling"):
        SoftmaxLossConfig(sampling="stratified")


def test_pooled_negatives_differ_between_positions() -> None:
    torch.manual_seed(1)
    negatives = draw_negatives(torch.arange(2, 402), 5000, SoftmaxLossConfig())
    per_position = negatives.ids[0][negatives.picks]  # (400, 128)
    assert per_position.shape == (400, 128)
    assert len({tuple(row) for row in per_position.tolist()}) == 400
    assert 1500 < per_position.unique().numel() <= 2048  # draws spread over the whole pool


def test_full_softmax_ignores_padding_and_oov_rows() -> None:
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(2, 4, generator=g), dim=-1)
    table = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    loss = full_softmax_loss(queries, torch.tensor([2, 5]), table, 0.5)
    logits = queries @ table[2:].T / 0.5
    expected = F.cross_entropy(logits, torch.tensor([0, 3]), reduction="none")
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("full", [False, True])
def test_task_loss_is_finite_on_a_padding_batch(full: bool) -> None:
    module = next_item_module(
        "hstu", max_len=10, embedding_dim=8, loss=SoftmaxLossConfig(full_softmax=full)
    ).train()
    loss = module.training_loss(GenerativeBatch.empty())
    assert loss.item() == 0.0
    loss.backward()


# --- stochastic length ---------------------------------------------------------------------


def test_stochastic_length_keeps_last_event_and_relabels_with_next_kept() -> None:
    offsets = torch.tensor([0, 3, 103])  # rows of 3 and 100 events, max_len 100, α 1 → s = 10
    g = torch.Generator().manual_seed(0)
    keep = stochastic_length_keep(offsets, alpha=1.0, max_len=100, generator=g)
    assert keep[:3].all()  # short row untouched
    long_row = keep[3:]
    # kept whole with probability 100 / 100² = 1 %; this seed subsamples
    assert int(long_row.sum()) == 10 and bool(long_row[-1])
    values = torch.arange(103) * 10
    last = torch.full((103,), -1)
    last[2], last[102] = 777, 999
    labels = subsequence_labels(keep, offsets, values, last)
    kept = torch.nonzero(keep).flatten()
    assert labels[:3].tolist() == [10, 20, 777]
    assert labels[3:-1].tolist() == (kept[4:] * 10).tolist() and labels[-1].item() == 999


def test_stochastic_length_trains_only_on_kept_events() -> None:
    module = next_item_module("hstu", max_len=40, seed=3, stochastic_length_alpha=1.0).train()
    batch = make_batch([35, 3])
    torch.manual_seed(5)
    loss, output, labelled = module.step(batch)
    assert output.lengths.tolist()[1] == 3 and output.lengths.tolist()[0] in (6, 35)
    assert labelled == int(output.lengths.sum())  # every kept position has a next item
    assert math.isfinite(loss.item())
    items, _, _, labels = module.rows(batch)
    assert items.lengths.tolist()[1] == 3 and labels[-3:].tolist() == [
        *batch.sequence["item"].values[-2:].tolist(), int(batch.target_item[1])
    ]  # fmt: skip
    module.eval()
    assert module.step(batch)[1].lengths.tolist() == [35, 3]


# --- learning ------------------------------------------------------------------------------


def rule_samples(users: int, length: int, seed: int, split: str = "valid") -> list[UserSample]:
    """Chains that follow a planted next-item rule `next = RULE[item]` (a random permutation of
    the items), each of `length` events plus the held-out next item as the target."""
    rule = np.random.default_rng(99).permutation(np.arange(2, V))
    successor = np.zeros(V, dtype=np.int64)
    successor[np.arange(2, V)] = rule
    rng = np.random.default_rng(seed)
    samples = []
    for user in range(users):
        chain = [int(rng.integers(2, V))]
        for _ in range(length):
            chain.append(int(successor[chain[-1]]))
        items = np.asarray(chain, dtype=np.int64)
        ts = 1_000 * np.arange(length + 1, dtype=np.int64)
        samples.append(chain_sample(user, items, ts, split))
    return samples


@pytest.mark.parametrize("encoder", ["hstu", "sasrec"])
def test_short_training_learns_a_planted_next_item_rule(encoder: str) -> None:
    from lifeseq.models.blocks.retrieval import target_ranks
    from lifeseq.trainers.ranking_metrics import ranking_metrics

    module = next_item_module(
        encoder, max_len=16, config={"dropout": 0.0},
        features=functools.partial(ItemAndPosition, dropout=0.0),
        loss=SoftmaxLossConfig(uniform_negatives=16, temperature=0.1),
    )  # fmt: skip
    model = module.sequential
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.01)
    module.train()
    torch.manual_seed(0)
    for step in range(60):
        batch = collate_generative(rule_samples(16, 8, seed=step, split="train"), max_len=16)
        loss = module.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    batch = collate_generative(rule_samples(64, 8, seed=10_000), max_len=16)
    with torch.no_grad():
        queries = target_queries(encode(model, batch), batch)
        ranks = target_ranks(queries, model.item_table(), batch.target_item)
    metrics = ranking_metrics(ranks, ks=(10,))
    assert metrics["hr@10"].item() > 0.9, metrics


# --- masked-item task ----------------------------------------------------------------------


def test_cloze_mask_hides_at_least_one_event_of_every_non_empty_row() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([0, 1, 3, 0, 2, 5])
    # a ratio so small that nothing is drawn: exactly each non-empty row's last event
    mask = cloze_mask(lengths, 1e-12)
    assert mask.shape == (11,) and torch.nonzero(mask).flatten().tolist() == [0, 3, 5, 10]
    for _ in range(20):
        mask = cloze_mask(lengths, 0.3)
        assert mask.shape == (11,)
        hidden = torch.zeros(6, dtype=torch.int64).index_add_(
            0, torch.repeat_interleave(torch.arange(6), lengths), mask.long()
        )
        assert ((hidden >= 1) == (lengths > 0)).all(), hidden


def test_cloze_mask_respects_the_ratio_on_average() -> None:
    torch.manual_seed(1)
    lengths = torch.full((400,), 50)  # 20 000 events; a row with nothing drawn: 0.8^50 ≈ 1e-5
    mask = cloze_mask(lengths, 0.2)
    assert mask.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert cloze_mask(torch.zeros(3, dtype=torch.int64), 0.2).numel() == 0


def test_cloze_mask_rows_marked_last_only_hide_their_last_event_alone() -> None:
    """The same draw with rows 1 and 4 marked: those rows hide exactly their last event (an
    empty row nothing), the other rows are as unmarked."""
    lengths = torch.tensor([4, 3, 0, 5, 2])
    torch.manual_seed(3)
    plain = cloze_mask(lengths, 0.5)
    torch.manual_seed(3)
    marked = cloze_mask(lengths, 0.5, last_only=torch.tensor([False, True, True, False, True]))
    rows = torch.repeat_interleave(torch.arange(5), lengths)
    assert torch.equal(marked[rows == 1], torch.tensor([False, False, True]))
    assert torch.equal(marked[rows == 4], torch.tensor([False, True]))
    for row in (0, 3):
        assert torch.equal(marked[rows == row], plain[rows == row])


def test_masked_item_module_with_last_item_ratio_one_trains_each_rows_last_event() -> None:
    module = MaskedItemModule(
        encoder_factory("sasrec_bidirectional"), embedding=EmbeddingConfig("torch"),
        last_item_ratio=1.0,
    )  # fmt: skip
    module.setup_model(sequence_schema(max_len=12))
    module.train()
    batch = make_batch([12, 3, 7], max_len=12)
    _, queries, positives = module.step(batch, train=True)
    items = batch.sequence["item"]
    last = torch.cumsum(items.lengths, 0) - 1
    assert queries.shape[0] == 3 and torch.equal(positives, items.values[last])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"last_item_ratio: expected a value in \[0, 1\]"):
            MaskedItemModule(encoder_factory("sasrec_bidirectional"), last_item_ratio=bad)


def _two_target_sample() -> UserSample:
    """6 events (items 10..15, times 100..600); positive targets after 6 and after 4 events,
    and a negative one after 5."""
    history = {
        "item": np.arange(10, 16),
        "category": np.full(6, 2),
        "behavior": np.full(6, 2),
        "ts": np.arange(1, 7) * 100,
    }
    targets = {
        "target_item": np.array([40, 41, 42]),
        "target_category": np.full(3, 2),
        "target_ts": np.array([650, 450, 550]),
        "target_label": np.array([1.0, 1.0, 0.0], dtype=np.float32),
        "target_hist_len": np.array([6, 4, 5]),
    }
    return UserSample("a", "test", history, targets)


def test_masked_query_rows_are_the_history_prefix_then_a_mask_at_the_target_time() -> None:
    other = chain_sample(1, np.array([20, 21, 22]), np.array([7, 8, 9]))  # 2 events, target 22
    batch = collate_generative([_two_target_sample(), other], max_len=4)  # drops items 10, 11
    assert batch.target_hist_len.tolist() == [4, 2, 3, 2]  # row-relative prefixes
    targets = batch.target_label == 1
    items, key_ts, mask = masked_query_rows(batch, targets)
    offsets = items.offsets.tolist()
    rows = [items.values[offsets[i] : offsets[i + 1]].tolist() for i in range(3)]
    times = [key_ts[offsets[i] : offsets[i + 1]].tolist() for i in range(3)]
    masks = [mask[offsets[i] : offsets[i + 1]].tolist() for i in range(3)]
    assert rows == [[12, 13, 14, 15, 0], [12, 13, 0], [20, 21, 0]]
    assert times == [[300, 400, 500, 600, 650], [300, 400, 450], [7, 8, 9]]
    assert masks == [[False] * 4 + [True], [False, False, True], [False, False, True]]
    # a single selected target; a target with no prefix gets the mask alone
    batch.target_hist_len[1] = 0
    items, key_ts, mask = masked_query_rows(batch, torch.tensor([False, True, False, False]))
    assert items.values.tolist() == [0] and key_ts.tolist() == [450] and mask.tolist() == [True]


def test_masked_item_module_trains_a_bidirectional_encoder_only() -> None:
    schema = sequence_schema(max_len=12)
    module = MaskedItemModule(
        encoder_factory("sasrec_bidirectional"), embedding=EmbeddingConfig("torch")
    )
    model = module.setup_model(schema)
    assert model.dims.max_len == 13 and model.dense.mask is not None  # room for the mask slot
    torch.manual_seed(0)
    module.train()
    loss = module.training_loss(make_batch([12, 3, 7], max_len=12))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert model.dense.mask.grad is not None and model.dense.mask.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="bidirectional"):
        MaskedItemModule(encoder_factory("hstu"), embedding=EmbeddingConfig("torch")).setup_model(
            schema
        )


def test_bidirectional_encoder_reads_later_events_but_not_other_rows() -> None:
    model = make_model("sasrec_bidirectional")
    base = encode(model, make_batch([12, 7])).user
    changed = make_batch([12, 7])
    items = changed.sequence["item"].values
    items[8] = (items[8] + 5) % (V - 2) + 2  # row 0, position 8
    out = encode(model, changed).user
    assert not torch.allclose(out[:8], base[:8], atol=1e-4)
    torch.testing.assert_close(out[12:], base[12:], rtol=0, atol=1e-6)
