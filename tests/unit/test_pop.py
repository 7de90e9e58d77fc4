"""Pop (`models.zoo.sequence.pop`): trained by the next-item task's full softmax on a skewed
catalog (full batch, so the optimum is exactly the label counts), its top 10 (the item table
ranked against its one query) equal the top 10 items by how often they are a training label, in
order, and its softmax over the items equals their label frequencies within 0.002; its output
never depends on the history."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lifeseq.features.batch import GenerativeBatch, collate_generative
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.blocks.input_features import ItemOnly
from lifeseq.models.blocks.sampled_softmax import SoftmaxLossConfig
from lifeseq.models.interfaces import ModelDims, SequenceRows
from lifeseq.models.zoo.sequence.pop import Pop
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig
from lifeseq.trainers.tasks.next_item import NextItemModule
from tests.unit.test_sequential_models import chain_sample

pytestmark = pytest.mark.unit

ITEMS = 40  # ids 2..39
MAX_LEN = 20


def skewed_users(users: int, seed: int = 0) -> list[UserSample]:
    """Rows of `MAX_LEN` events and one target, items drawn with P(rank r) ∝ 0.8^r over a
    shuffled catalog (so popularity is not the id order)."""
    rng = np.random.default_rng(seed)
    catalog = rng.permutation(np.arange(2, ITEMS))
    weights = 0.8 ** np.arange(catalog.size)
    samples = []
    for user in range(users):
        items = rng.choice(catalog, MAX_LEN + 1, p=weights / weights.sum())
        ts = 1_000 * np.arange(MAX_LEN + 1, dtype=np.int64)
        samples.append(chain_sample(user, items, ts, "train"))
    return samples


def label_counts(batches: list[GenerativeBatch]) -> np.ndarray:
    """(ITEMS,) how often each item is a next-item label in `batches`."""
    labels = torch.cat([b.next_item().values for b in batches])
    return np.bincount(labels[labels > 1].numpy(), minlength=ITEMS)


def test_top_10_equals_the_top_10_by_training_count() -> None:
    batch = collate_generative(skewed_users(400), MAX_LEN)  # 8,000 labels
    counts = label_counts([batch])
    by_count = np.argsort(-counts, kind="stable")[:11]
    assert len(set(counts[by_count])) == 11, "ties would make the expected order ambiguous"

    module = NextItemModule(
        Pop,
        features=functools.partial(ItemOnly, dropout=0.0),
        loss=SoftmaxLossConfig(full_softmax=True),
        embedding=EmbeddingConfig("torch"),
        optimizer=DenseOptimizerConfig("adam", lr=0.01),
    )
    config = FeatureConfig(embedding_dim=16, max_len=MAX_LEN)
    model = module.setup_model(
        FeatureSchema.from_vocab({"item": ITEMS, "category": 3, "behavior": 3}, config)
    )
    optimizer = module.configure_optimizers()
    module.train()
    for _ in range(200):
        loss = module.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        query = torch.nn.functional.normalize(model.dense.encoder.query, dim=0)
        scores = model.item_table()[2:] @ query  # (ITEMS - 2,) cosines of items 2..ITEMS-1
    top = (torch.argsort(scores, descending=True)[:10] + 2).tolist()
    assert top == by_count[:10].tolist(), (top, by_count[:10].tolist(), counts[by_count])
    learned = torch.softmax(scores / module.loss_config.temperature, 0).numpy()
    np.testing.assert_allclose(learned, counts[2:] / counts.sum(), atol=2e-3)


def test_every_position_of_every_row_gets_the_same_query() -> None:
    torch.manual_seed(0)
    pop = Pop(ModelDims(item_rows=10, embedding_dim=8))
    x = torch.randn(7, 8)
    offsets = torch.tensor([0, 3, 7])
    ts = torch.arange(7, dtype=torch.int64)
    out = pop(x, SequenceRows.from_offsets(offsets, ts, ts + 1))
    assert torch.equal(out, pop.query.detach().expand(7, 8))
    assert torch.equal(pop(torch.randn(7, 8), SequenceRows.from_offsets(offsets, ts, ts)), out)
