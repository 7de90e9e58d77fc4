"""Tests of the recent-behavior CTR models of the zoo, BST (`models.zoo.ctr.bst`) and DIEN
(`models.zoo.ctr.dien`), and of the task's model-computed auxiliary loss (`CtrOutput.aux_loss`
in `trainers.tasks.ctr.ctr_loss`).

Values: BST's behavior tokens read the target token; AUGRU with attention 0 keeps its state and
with attention 1 is a GRU; DIEN's loss is the CTR loss plus its weighted auxiliary loss, whose
network learns to score the true next behavior above another; a target with an empty window
gets finite logits and gradients; both models learn a planted rule that lies in the most recent
behaviors. The structural checks (causality, jagged batches, padding batches, export) are the
conformance suite's (`tests/conformance`).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from lifeseq.features.batch import CtrBatch, collate_ctr
from lifeseq.models.ctr import CtrRecommender
from lifeseq.models.ctr_features import CtrOutput
from lifeseq.models.interfaces import ModelDims
from lifeseq.models.zoo.ctr.bst import Bst, BstConfig
from lifeseq.models.zoo.ctr.dien import AuGruCell, Dien, DienConfig
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.tasks.ctr import bce, ctr_loss

pytestmark = pytest.mark.unit

ITEMS, CATEGORIES, BEHAVIORS = 200, 12, 5
HISTORY = 30
#: Target categories, and the noise categories every other event has.
TARGET_CATEGORIES, NOISE_CATEGORIES = np.arange(2, 7), np.arange(7, 12)
#: A positive target's category occurs among the last RECENT events of its history.
RECENT = 8


def recent_rule_sample(user: int) -> UserSample:
    """`HISTORY` noise events; 4 targets at the end: 2 positive, whose category occurs twice in
    the last `RECENT` events, and 2 negative, whose category never occurs."""
    rng = np.random.default_rng([21, user])
    present, absent = np.split(rng.permutation(TARGET_CATEGORIES)[:4], 2)
    category = rng.choice(NOISE_CATEGORIES, HISTORY)
    category[HISTORY - RECENT + rng.choice(RECENT, 2, replace=False)] = present
    history = {
        "item": rng.integers(2, ITEMS, HISTORY),
        "category": category.astype(np.int64),
        "behavior": rng.integers(2, BEHAVIORS, HISTORY),
        "ts": 1_700_000_000 + np.cumsum(rng.integers(60, 3_600, HISTORY)),
    }
    targets = {
        "target_item": rng.integers(2, ITEMS, 4),
        "target_category": np.concatenate([present, absent]).astype(np.int64),
        "target_ts": np.full(4, history["ts"][-1] + 60, dtype=np.int64),
        "target_label": np.array([1, 1, 0, 0], dtype=np.float32),
        "target_hist_len": np.full(4, HISTORY, dtype=np.int64),
    }
    return UserSample(f"user{user}", "train", history, targets)


def batch_of(users: range) -> CtrBatch:
    return collate_ctr([recent_rule_sample(u) for u in users], max_history=HISTORY)


def model(cls: type, seed: int = 0, **config: object) -> CtrRecommender:
    config_cls = BstConfig if cls is Bst else DienConfig
    dims = ModelDims(
        item_rows=ITEMS, category_rows=CATEGORIES, behavior_rows=BEHAVIORS, embedding_dim=8,
        seed=seed,
    )  # fmt: skip
    return CtrRecommender(dims, partial(cls, config=config_cls(**config)))


# --- the task's auxiliary loss ------------------------------------------------------------------


def test_ctr_loss_adds_a_models_own_aux_loss_times_the_batch_weight() -> None:
    batch = batch_of(range(3))
    logits = torch.randn(batch.num_targets)
    aux = torch.tensor(0.7)
    plain = ctr_loss(CtrOutput(logits), batch)
    assert torch.equal(plain, bce(logits, batch))
    torch.testing.assert_close(ctr_loss(CtrOutput(logits, aux_loss=aux), batch), plain + aux)
    assert torch.equal(ctr_loss(CtrOutput(logits, aux_loss=0 * aux), batch), plain)
    empty = CtrBatch.empty()
    padding = ctr_loss(CtrOutput(torch.zeros(0), aux_loss=aux), empty)
    assert torch.isfinite(padding) and float(padding) == 0.0


def test_dien_loss_is_the_ctr_loss_plus_its_weighted_aux_loss() -> None:
    batch = batch_of(range(4))
    outputs = {}
    for weight in (1.0, 2.5):
        torch.manual_seed(5)  # the same negative draws
        outputs[weight] = model(Dien, recent_len=12, aux_weight=weight)(batch)
    one, other = outputs[1.0], outputs[2.5]
    assert one.aux_loss is not None and other.aux_loss is not None and float(one.aux_loss) > 0
    assert torch.equal(one.logits, other.logits)
    torch.testing.assert_close(other.aux_loss, 2.5 * one.aux_loss)
    torch.testing.assert_close(ctr_loss(one, batch), bce(one.logits, batch) + one.aux_loss)
    # aux_weight 0: no auxiliary network, no auxiliary loss.
    off = model(Dien, recent_len=12, aux_weight=0.0)
    assert off.dense.aux_net is None and off(batch).aux_loss is None


def test_dien_evaluation_has_no_aux_loss_and_leaves_the_global_rng_alone() -> None:
    recommender = model(Dien, recent_len=12).eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        assert recommender(batch_of(range(4))).aux_loss is None
    assert torch.equal(torch.get_rng_state(), state)


def test_dien_aux_loss_learns_to_score_the_true_next_behavior_above_another() -> None:
    """Histories follow a successor rule (item k is followed by item k + 1), so the extractor
    state after event i tells event i + 1; 100 steps on the auxiliary loss alone teach the
    auxiliary network to score it above a shuffled event of the batch (passes from 60)."""
    rng = np.random.default_rng(3)
    samples = []
    for user in range(16):
        sample = recent_rule_sample(user)
        start = int(rng.integers(2, ITEMS - HISTORY))
        sample.history["item"] = np.arange(start, start + HISTORY, dtype=np.int64)
        samples.append(sample)
    batch = collate_ctr(samples, max_history=HISTORY)
    recommender = model(Dien, recent_len=12)
    dense = recommender.dense

    def margin() -> float:
        """Fraction of (target, step) pairs whose true next behavior outscores a shuffled one."""
        with torch.no_grad():
            inputs, recent = dense.behaviors(recommender.features(batch))
            states = dense.extract(inputs, recent)[:, :-1]  # (T, n - 1, H)
            true = recent.inherent[:, 1:]
            shuffled = true.flatten(0, 1)[torch.randperm(true.shape[0] * true.shape[1])]
            score = dense.aux_net(torch.cat([states, true], -1))
            other = dense.aux_net(torch.cat([states, shuffled.view_as(true)], -1))
            return float((score > other).float().mean())

    torch.manual_seed(0)
    before = margin()
    optimizer = torch.optim.Adam(recommender.parameters(), lr=0.01)
    for _ in range(100):
        aux = recommender(batch).aux_loss
        optimizer.zero_grad()
        aux.backward()
        optimizer.step()
    after = margin()
    assert before < 0.7 and after > 0.9, (before, after)


# --- AUGRU ------------------------------------------------------------------------------------


def test_augru_keeps_its_state_at_attention_zero_and_is_a_gru_at_attention_one() -> None:
    torch.manual_seed(0)
    cell = AuGruCell(6, 4)
    x, h = torch.randn(5, 6), torch.randn(5, 4)
    assert torch.equal(cell(x, h, torch.zeros(5)), h)
    # nn.GRUCell keeps z of the old state, AUGRU moves u towards the new one: u = 1 - z, i.e.
    # the update gate's weights negated (sigmoid(-v) = 1 - sigmoid(v)).
    gru = torch.nn.GRUCell(6, 4)
    with torch.no_grad():
        sign = torch.ones(12, 1)
        sign[4:8] = -1
        gru.weight_ih.copy_(cell.input_proj.weight * sign)
        gru.bias_ih.copy_(cell.input_proj.bias * sign[:, 0])
        gru.weight_hh.copy_(cell.hidden_proj.weight * sign)
        gru.bias_hh.copy_(cell.hidden_proj.bias * sign[:, 0])
    torch.testing.assert_close(cell(x, h, torch.ones(5)), gru(x, h))
    half = cell(x, h, torch.full((5,), 0.5))
    assert not torch.allclose(half, h) and not torch.allclose(half, gru(x, h))


# --- BST --------------------------------------------------------------------------------------


def test_bst_behavior_tokens_read_the_target_token() -> None:
    """Changing only the target item changes the Transformer's outputs at the behavior tokens
    (they attend to the target token), not only the tower's direct target input."""
    recommender = model(Bst, recent_len=10).eval()
    batch = batch_of(range(2))
    seen: list[torch.Tensor] = []
    hook = recommender.dense.blocks[-1].register_forward_hook(lambda m, i, out: seen.append(out))
    item = batch.target_item
    other = dataclasses.replace(batch, target_item=torch.where(item + 1 < ITEMS, item + 1, 2))
    with torch.no_grad():
        first, second = recommender(batch).logits, recommender(other).logits
    hook.remove()
    behaviors = (seen[0][:, :-1] - seen[1][:, :-1]).abs().amax(dim=(1, 2))  # (T,)
    assert bool((behaviors > 1e-4).all()), behaviors
    assert not torch.allclose(first, second)


def test_bst_config_refuses_heads_that_do_not_divide_the_width() -> None:
    with pytest.raises(ValueError, match="BstConfig.heads: model_dim = 30"):
        BstConfig(model_dim=30, heads=4)
    with pytest.raises(ValueError, match="DienConfig.aux_weight"):
        DienConfig(aux_weight=-1.0)
    with pytest.raises(ValueError, match="DienConfig.din_hidden"):
        DienConfig(din_hidden=(0,))


# --- both -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Bst, Dien], ids=["bst", "dien"])
def test_an_empty_window_gives_finite_logits_and_gradients(cls: type) -> None:
    recommender = model(cls, recent_len=6).train()
    batch = batch_of(range(2))
    batch.target_hist_len[::2] = 0  # every other target: no history at all
    batch.target_hist_start[::2] = 0
    output = recommender(batch)
    assert torch.isfinite(output.logits).all()
    ctr_loss(output, batch).backward()
    bad = [n for n, p in recommender.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, bad


@pytest.mark.parametrize(
    "cls, config",
    [
        (Bst, {"recent_len": 10}),
        (Dien, {"recent_len": 10}),
        (Dien, {"recent_len": 10, "din_hidden": (16,)}),
    ],
    ids=["bst", "dien", "dien+din"],
)
def test_a_short_run_learns_a_rule_in_the_recent_behaviors(cls: type, config: dict) -> None:
    torch.manual_seed(0)
    recommender = model(cls, **config).train()
    train = [batch_of(range(i, i + 8)) for i in range(0, 160, 8)]
    test = batch_of(range(10_000, 10_064))
    optimizer = torch.optim.Adam(recommender.parameters(), lr=0.01)
    for step in range(120):
        batch = train[step % len(train)]
        loss = ctr_loss(recommender(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recommender.eval()
    with torch.no_grad():
        logits = recommender(test).logits
    auc = float(binary_auroc(torch.sigmoid(logits), test.label.long()))
    assert auc > 0.9, auc
