"""Loss kinds of `models.blocks.sampled_softmax` (`loss.kind`: softmax, bce, bpr, top1): values
computed by hand on 2-d embeddings whose cosines are known, negatives equal to the positive
left out, finiteness with no labelled position, and the config's refusals."""

from __future__ import annotations

import math

import pytest
import torch

from lifeseq.models.blocks.sampled_softmax import (
    KINDS,
    Negatives,
    SoftmaxLossConfig,
    sampled_logits,
    sampled_loss,
)
from lifeseq.models.sequential import SequenceOutput
from lifeseq.models.zoo.sequence.sasrec import SasRec
from lifeseq.trainers.tasks.next_item import NextItemModule

pytestmark = pytest.mark.unit

# Item rows of a 2-d table: against the query (1, 0) item 2 scores cosine 1, item 3 cosine 0,
# item 4 cosine −1, item 5 cosine 0.6.
TABLE = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
QUERY = torch.tensor([[1.0, 0.0]])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    """−log σ(−x) = log(1 + eˣ)."""
    return math.log1p(math.exp(x))


def by_hand(kind: str, s_pos: float, s_neg: list[float]) -> float:
    """The loss of one position with positive logit `s_pos` and negative logits `s_neg`."""
    r = len(s_neg)
    if kind == "softmax":
        return math.log(sum(math.exp(s) for s in [s_pos, *s_neg])) - s_pos
    if kind == "bce":  # −log σ(s⁺) − mean log(1 − σ(s⁻))
        return -math.log(sigmoid(s_pos)) - sum(math.log(1 - sigmoid(s)) for s in s_neg) / r
    if kind == "bpr":  # mean −log σ(s⁺ − s⁻)
        return sum(-math.log(sigmoid(s_pos - s)) for s in s_neg) / r
    assert kind == "top1"  # mean σ(s⁻ − s⁺) + σ(s⁻²)
    return sum(sigmoid(s - s_pos) + sigmoid(s * s) for s in s_neg) / r


def loss_of(kind: str, negatives: Negatives, positives: torch.Tensor, t: float) -> torch.Tensor:
    queries = QUERY.expand(positives.shape[0], 2)
    logits = sampled_logits(
        queries, positives, TABLE[positives], negatives, TABLE[negatives.ids], t
    )
    return sampled_loss(kind, *logits)


def test_the_hand_formulas_themselves() -> None:
    # positive cosine 1, negatives 0 and −1, temperature 0.5: s⁺ = 2, s⁻ = (0, −2)
    assert by_hand("bce", 2.0, [0.0, -2.0]) == pytest.approx(
        softplus(-2.0) + (math.log(2.0) + softplus(-2.0)) / 2
    )
    assert by_hand("bpr", 2.0, [0.0, -2.0]) == pytest.approx((softplus(-2.0) + softplus(-4.0)) / 2)
    assert by_hand("top1", 2.0, [0.0, -2.0]) == pytest.approx(
        (sigmoid(-2.0) + 0.5 + sigmoid(-4.0) + sigmoid(4.0)) / 2
    )


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_on_hand_computed_logits(kind: str) -> None:
    t = 0.5
    shared = Negatives(torch.tensor([[3, 4]]))  # cosines 0, −1: s⁻ = 0, −2
    loss = loss_of(kind, shared, torch.tensor([2, 5]), t)  # s⁺ = 2 and 1.2
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(by_hand(kind, 2.0, [0.0, -2.0]), rel=1e-5)
    assert loss[1].item() == pytest.approx(by_hand(kind, 1.2, [0.0, -2.0]), rel=1e-5)
    # one negative per position (SASRec's `uniform_negatives: 1`), drawn per position
    independent = Negatives(torch.tensor([[5], [4]]))  # position 0: s⁻ 1.2; position 1: −2
    loss = loss_of(kind, independent, torch.tensor([2, 3]), t)  # s⁺ = 2 and 0
    assert loss[0].item() == pytest.approx(by_hand(kind, 2.0, [1.2]), rel=1e-5)
    assert loss[1].item() == pytest.approx(by_hand(kind, 0.0, [-2.0]), rel=1e-5)
    if kind == "bce":
        assert loss[0].item() == pytest.approx(softplus(-2.0) + softplus(1.2), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_a_negative_equal_to_the_positive_is_left_out(kind: str) -> None:
    # pooled: position 0 (positive 2) picks 2, 3, 4; position 1 (positive 4) picks 4, 4
    pool = Negatives(torch.tensor([[2, 3, 4]]), picks=torch.tensor([[0, 1, 2], [2, 2, 2]]))
    positives = torch.tensor([2, 4])
    queries = QUERY.expand(2, 2).clone().requires_grad_(True)
    logits = sampled_logits(queries, positives, TABLE[positives], pool, TABLE[pool.ids], 1.0)
    loss = sampled_loss(kind, *logits)
    assert loss[0].item() == pytest.approx(by_hand(kind, 1.0, [0.0, -1.0]), rel=1e-5)
    # every negative of position 1 is its positive: no negative term at all
    alone = {"softmax": 0.0, "bce": softplus(1.0), "bpr": 0.0, "top1": 0.0}[kind]
    assert loss[1].item() == pytest.approx(alone, abs=1e-6)
    loss.sum().backward()
    assert torch.isfinite(queries.grad).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampling", ["pooled", "independent", "shared"])
def test_no_labelled_position_gives_an_empty_finite_loss(kind: str, sampling: str) -> None:
    queries = torch.zeros(0, 2, requires_grad=True)
    positives = torch.zeros(0, dtype=torch.int64)
    negatives = {
        "pooled": Negatives(torch.tensor([[3, 4, 5]]), picks=torch.zeros(0, 2, dtype=torch.int64)),
        "independent": Negatives(torch.zeros(0, 2, dtype=torch.int64)),
        "shared": Negatives(torch.tensor([[3, 4]])),
    }[sampling]
    embeddings = TABLE[negatives.ids]
    logits = sampled_logits(queries, positives, TABLE[positives], negatives, embeddings, 0.05)
    loss = sampled_loss(kind, *logits)
    assert loss.shape == (0,)
    total = loss.sum() / max(positives.shape[0], 1)
    assert total.item() == 0.0
    total.backward()
    assert queries.grad is not None and queries.grad.shape == (0, 2)


@pytest.mark.parametrize("kind", ["bce", "bpr", "top1"])
def test_the_task_loss_uses_the_configured_kind(kind: str) -> None:
    config = SoftmaxLossConfig(uniform_negatives=2, temperature=0.5, kind=kind, pool_size=2)
    task = NextItemModule(SasRec, loss=config)
    positives = torch.tensor([2, 5])
    negatives = Negatives(torch.tensor([[3, 4]]))
    candidates = TABLE[torch.cat([positives, negatives.ids.flatten()])]
    output = SequenceOutput(QUERY.expand(2, 2), torch.tensor([2]), candidates)
    loss = task.softmax_loss(QUERY.expand(2, 2), positives, output, negatives, weight=2.0)
    expected = (by_hand(kind, 2.0, [0.0, -2.0]) + by_hand(kind, 1.2, [0.0, -2.0])) / 2
    assert loss.item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_config_refuses_unknown_kinds_and_full_softmax_with_another_kind() -> None:
    assert SoftmaxLossConfig().kind == "softmax"
    assert SoftmaxLossConfig(full_softmax=True).kind == "softmax"
    with pytest.raises(ValueError, match=r"loss\.kind: expected one of .*'hinge'"):
        SoftmaxLossConfig(kind="hinge")
    with pytest.raises(ValueError, match=r"loss\.full_softmax.*loss\.kind.*'bpr'"):
        SoftmaxLossConfig(full_softmax=True, kind="bpr")
    with pytest.raises(ValueError, match=r"loss\.kind"):
        loss_of("hinge", Negatives(torch.tensor([[3]])), torch.tensor([2]), 1.0)
