"""Tests of the smoke CTR model (`models.zoo.ctr.smoke.SmokeCtr` inside
`models.ctr.CtrRecommender`) and its window pooling (`models.blocks.windows.window_mean`):
per-target values against a brute-force loop, backend equivalence, padding batches, the CTR
loss (`trainers.tasks.ctr`), and that the model learns a planted signal."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from lifeseq.features.batch import CtrBatch, collate_ctr
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.blocks.embeddings import torchrec_available
from lifeseq.models.blocks.windows import TargetWindows, window_mean
from lifeseq.models.ctr import CtrRecommender
from lifeseq.models.ctr_features import CtrOutput
from lifeseq.models.interfaces import ModelDims
from lifeseq.models.zoo.ctr.smoke import SmokeConfig, SmokeCtr
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.tasks.ctr import bce, ctr_loss

pytestmark = pytest.mark.unit


def _sample(user: int, rng: np.random.Generator, n: int, n_targets: int = 3) -> UserSample:
    """History of `n` events of one dominant category; targets of that category are positive."""
    favourite = 2 + user % 4
    category = np.where(rng.random(n) < 0.8, favourite, rng.integers(2, 6, n)).astype(np.int64)
    item = (category * 10 + rng.integers(0, 10, n)).astype(np.int64)
    t_cat = rng.integers(2, 6, n_targets).astype(np.int64)
    return UserSample(
        user=f"u{user}",
        split="train",
        history={
            "item": item,
            "category": category,
            "behavior": np.full(n, 2, dtype=np.int64),
            "ts": np.arange(n, dtype=np.int64),
        },
        targets={
            "target_item": (t_cat * 10 + rng.integers(0, 10, n_targets)).astype(np.int64),
            "target_category": t_cat,
            "target_ts": np.full(n_targets, n, dtype=np.int64),
            "target_label": (t_cat == favourite).astype(np.float32),
            "target_hist_len": rng.integers(0, n + 1, n_targets).astype(np.int64),
        },
    )


def _batch(seed: int = 0, users: int = 4, max_history: int = 6) -> CtrBatch:
    rng = np.random.default_rng(seed)
    samples = [_sample(u, rng, int(rng.integers(1, 9))) for u in range(users)]
    return collate_ctr(samples, max_history=max_history)


def _model(backend: str = "torch", hidden: tuple[int, ...] = (8,)) -> CtrRecommender:
    """The smoke model with 60 items, 6 categories, D = 4, seed 3."""
    dims = ModelDims(item_rows=60, category_rows=6, embedding_dim=4, backend=backend, seed=3)
    return CtrRecommender(dims, partial(SmokeCtr, config=SmokeConfig(hidden=hidden)))


def _windows(
    offsets: list[int], target_user: list[int], lo: list[int], hi: list[int]
) -> TargetWindows:
    """`TargetWindows` of targets reading `[lo, hi)` of their user's row."""
    row = torch.tensor(offsets)[torch.tensor(target_user)]
    return TargetWindows(lo=row + torch.tensor(lo), hi=row + torch.tensor(hi), num_events=7)


def test_window_mean_matches_a_loop() -> None:
    values = torch.randn(7, 3)  # rows of 3, 0 and 4 events
    offsets = [0, 3, 3]
    target_user = [0, 0, 1, 2, 2, 2]
    hist_len = [3, 1, 0, 0, 2, 4]

    got = window_mean(values, _windows(offsets, target_user, [0] * 6, hist_len))

    for j, (u, n) in enumerate(zip(target_user, hist_len, strict=True)):
        rows = values[offsets[u] : offsets[u] + n]
        expected = rows.mean(0) if n else torch.zeros(3)
        torch.testing.assert_close(got[j], expected)


def test_window_mean_over_capped_windows() -> None:
    values = torch.randn(7, 3)
    offsets = [0, 3, 3]
    target_user = [0, 0, 2, 2]
    hist_len = [3, 1, 2, 4]
    hist_start = [1, 0, 2, 1]

    got = window_mean(values, _windows(offsets, target_user, hist_start, hist_len))

    for j, (u, lo, hi) in enumerate(zip(target_user, hist_start, hist_len, strict=True)):
        rows = values[offsets[u] + lo : offsets[u] + hi]
        expected = rows.mean(0) if hi > lo else torch.zeros(3)
        torch.testing.assert_close(got[j], expected)


def test_logits_equal_a_per_target_loop() -> None:
    batch = _batch()
    model = _model()
    item = model.embeddings.collections["d4"].embeddings["item"].weight.detach()
    cat = model.embeddings.collections["d4"].embeddings["category"].weight.detach()

    with torch.no_grad():
        output = model(batch)
    logits = output.logits

    assert logits.shape == (batch.num_targets,)
    assert output.aux_logits is None
    offsets = batch.history["item"].offsets
    for j in range(batch.num_targets):
        u, n = int(batch.target_user[j]), int(batch.target_hist_len[j])
        lo = int(batch.target_hist_start[j])  # the max_history window of this target
        ids = slice(int(offsets[u]) + lo, int(offsets[u]) + n)
        n -= lo
        hist_items, hist_cats = (
            batch.history["item"].values[ids],
            batch.history["category"].values[ids],
        )
        events = item[hist_items] * (hist_items != 0)[:, None] + cat[hist_cats]
        pooled = events.mean(0) if n else torch.zeros(4)
        target = item[batch.target_item[j]] + cat[batch.target_category[j]]
        with torch.no_grad():
            expected = model.dense.mlp(torch.cat([pooled, target, pooled * target]))[0]
        torch.testing.assert_close(logits[j], expected, rtol=1e-5, atol=1e-6)


def test_history_is_embedded_once_per_user() -> None:
    batch = _batch()
    model = _model()
    seen: list[dict[str, int]] = []
    model.embeddings.register_forward_hook(
        lambda _m, args, _out: seen.append({k: v.values.shape[0] for k, v in args[0].items()})
    )

    model(batch)

    assert seen == [
        {
            "history_item": batch.history["item"].values.shape[0],  # N events, not sum of prefixes
            "history_category": batch.history["item"].values.shape[0],
            "target_item": batch.num_targets,
            "target_category": batch.num_targets,
        }
    ]


@pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable")
def test_torchrec_and_torch_backends_give_the_same_logits() -> None:
    batch = _batch(seed=5)
    torch_model = _model("torch")
    rec_model = _model("torchrec")

    with torch.no_grad():
        torch.testing.assert_close(
            rec_model(batch).logits, torch_model(batch).logits, rtol=1e-6, atol=1e-7
        )
        torch.testing.assert_close(
            rec_model(CtrBatch.empty()).logits, torch_model(CtrBatch.empty()).logits
        )


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param(
            "torchrec",
            marks=pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable"),
        ),
    ],
)
def test_padding_batch_gives_zero_loss_and_zero_gradients(backend: str) -> None:
    model = _model(backend)
    batch = CtrBatch.empty()

    output = model(batch)
    loss = ctr_loss(output, batch)
    loss.backward()

    assert output.logits.shape == (0,)
    assert loss.item() == 0.0
    for name, param in model.dense.mlp.named_parameters():
        assert param.grad is not None and float(param.grad.abs().sum()) == 0.0, name


def test_loss_is_weighted_mean_bce() -> None:
    batch = _batch()
    logits = torch.linspace(-2, 2, batch.num_targets)
    aux_logits = torch.linspace(1, -1, batch.num_targets)

    loss = ctr_loss(CtrOutput(logits), batch)
    with_aux = ctr_loss(CtrOutput(logits, aux_logits, aux_weight=0.25), batch)

    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.label)
    aux = torch.nn.functional.binary_cross_entropy_with_logits(aux_logits, batch.label)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(bce(logits, batch), expected)
    torch.testing.assert_close(with_aux, expected + 0.25 * aux)


def test_model_learns_the_planted_category_signal() -> None:
    """Positives are targets of the user's favourite category (1 in 4): a base-rate predictor
    scores BCE 0.56; reading the pooled history must do much better on held-out users."""
    torch.manual_seed(0)
    model = _model("torch", hidden=(16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    batches = [_batch(seed=s, users=32) for s in range(40)]
    held_out = _batch(seed=1000, users=256)

    with torch.no_grad():
        before = ctr_loss(model(held_out), held_out).item()
    for _ in range(4):
        for batch in batches:
            optimizer.zero_grad()
            ctr_loss(model(batch), batch).backward()
            optimizer.step()
    with torch.no_grad():
        after = ctr_loss(model(held_out), held_out).item()

    assert before == pytest.approx(np.log(2), abs=0.05)  # untrained: p ≈ 0.5
    assert after < 0.4, (before, after)  # measured 0.30


def test_dims_from_schema_and_config_errors() -> None:
    vocab = {"item": 60, "category": 6, "behavior": 5}
    schema = FeatureSchema.from_vocab(vocab, FeatureConfig(embedding_dim=8))

    dims = ModelDims.from_schema(schema, backend="torch")
    config = SmokeConfig(hidden=[4])  # type: ignore[arg-type]  # YAML gives lists

    assert (dims.item_rows, dims.category_rows, dims.embedding_dim) == (60, 6, 8)
    assert (dims.behavior_rows, dims.backend) == (5, "torch")
    assert config.hidden == (4,)
    model = CtrRecommender(dims, partial(SmokeCtr, config=config))
    assert [t.num_embeddings for t in model.embeddings.tables] == [60, 6]
    with pytest.raises(ValueError, match="embedding.backend"):
        ModelDims(item_rows=3, category_rows=3, backend="jax")
    with pytest.raises(ValueError, match="SmokeConfig.hidden"):
        SmokeConfig(hidden=(0,))
