"""Next-T targets of `NextItemModule(targets_per_position=T)` (Caser): which positives each
position gets (`next_targets`), that training pairs each query with them and evaluation does
not, and the refusal of T < 1."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lifeseq.features.batch import collate_generative
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.blocks.input_features import ItemAndPosition
from lifeseq.models.blocks.sampled_softmax import SoftmaxLossConfig, full_softmax_loss
from lifeseq.models.zoo.sequence.sasrec import SasRec, SasRecConfig
from lifeseq.trainers.platform_module import EmbeddingConfig
from lifeseq.trainers.tasks.next_item import NextItemModule, next_targets
from tests.unit.test_sequential_models import chain_sample

pytestmark = pytest.mark.unit

# Three packed rows: A (positions 0-3) with a follower 99 after its last event; B (4-6)
# without one (last label 0); C (7-9) whose first position is context only (label 0).
LABELS = torch.tensor([11, 12, 13, 99, 21, 22, 0, 0, 31, 32])
LENGTHS = torch.tensor([4, 3, 3])


def pairs(count: int) -> list[tuple[int, int]]:
    positions, positives = next_targets(LABELS, LENGTHS, count)
    return list(zip(positions.tolist(), positives.tolist(), strict=True))


def test_one_target_per_position_is_the_labelled_positions() -> None:
    assert pairs(1) == [(0, 11), (1, 12), (2, 13), (3, 99), (4, 21), (5, 22), (8, 31), (9, 32)]


def test_next_two_and_three_targets_stay_inside_the_row() -> None:
    assert pairs(2) == [
        (0, 11), (0, 12), (1, 12), (1, 13), (2, 13), (2, 99), (3, 99),  # A: the follower too
        (4, 21), (4, 22), (5, 22),  # B: no follower, position 6 unsupervised
        (8, 31), (8, 32), (9, 32),  # C: position 7 stays unsupervised
    ]  # fmt: skip
    assert pairs(3)[:6] == [(0, 11), (0, 12), (0, 13), (1, 12), (1, 13), (1, 99)]
    assert len(pairs(3)) == 3 + 3 + 2 + 1 + 2 + 1 + 2 + 1
    assert len(pairs(50)) == 4 + 3 + 2 + 1 + 2 + 1 + 2 + 1


def test_no_positions_give_no_pairs() -> None:
    empty = torch.zeros(0, dtype=torch.int64)
    positions, positives = next_targets(empty, empty, 3)
    assert positions.shape == (0,) and positives.shape == (0,)


def test_training_pairs_each_query_with_its_next_items_and_evaluation_does_not() -> None:
    schema = FeatureSchema.from_vocab(
        {"item": 20, "category": 3, "behavior": 3}, FeatureConfig(embedding_dim=8, max_len=6)
    )
    module = NextItemModule(
        functools.partial(SasRec, config=SasRecConfig(dropout=0.0, length_bucket=4)),
        features=functools.partial(ItemAndPosition, dropout=0.0),
        loss=SoftmaxLossConfig(full_softmax=True, temperature=0.5),
        targets_per_position=3,
        embedding=EmbeddingConfig("torch"),
    )
    module.setup_model(schema)
    rows = [np.array([2, 3, 4, 5, 6]), np.array([7, 8, 9])]  # the last item: the target
    batch = collate_generative(
        [chain_sample(u, items, np.arange(items.size)) for u, items in enumerate(rows)], max_len=6
    )
    # labels: row 1 → 3, 4, 5, 6 (follower); row 2 → 8, 9
    with torch.no_grad():
        loss, output, count = module.train().step(batch)
        table = module.sequential.item_table()
        positions = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 4, 5])
        positives = torch.tensor([3, 4, 5, 4, 5, 6, 5, 6, 6, 8, 9, 9])
        expected = full_softmax_loss(output.user[positions], positives, table, 0.5).mean()
        assert count == 12
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        loss, output, count = module.eval().step(batch)
        one = full_softmax_loss(output.user, torch.tensor([3, 4, 5, 6, 8, 9]), table, 0.5)
        assert count == 6
        assert loss.item() == pytest.approx(one.mean().item(), rel=1e-6)


def test_targets_per_position_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="targets_per_position: expected a positive int, got 0"):
        NextItemModule(SasRec, targets_per_position=0)
