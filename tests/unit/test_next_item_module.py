"""The next-item task: what full-ranking evaluation excludes per target
(`trainers.tasks.sequential`), and which encoders `NextItemModule` trains."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from lifeseq.features.batch import collate_generative
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.zoo.sequence.sasrec import SasRec, SasRecConfig
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.platform_module import EmbeddingConfig
from lifeseq.trainers.tasks.next_item import NextItemModule
from lifeseq.trainers.tasks.sequential import RankingEvalConfig, target_histories


def _sample(user: str, items: list[int], hist_len: list[int]) -> UserSample:
    n, t = len(items), len(hist_len)
    history = {
        "item": np.asarray(items, dtype=np.int64),
        "category": np.full(n, 2),
        "behavior": np.full(n, 2),
        "ts": np.arange(n, dtype=np.int64),
    }
    targets = {
        "target_item": np.full(t, 99),
        "target_category": np.full(t, 2),
        "target_ts": np.asarray(hist_len, dtype=np.int64),
        "target_label": np.ones(t, dtype=np.float32),
        "target_hist_len": np.asarray(hist_len, dtype=np.int64),
    }
    return UserSample(user, "test", history, targets)


def test_target_histories_hold_dropped_items_then_the_row_prefix() -> None:
    # user a: 6 events, max_len 3 drops items 10, 11, 11 (distinct: 10, 11); two targets
    a = _sample("a", [10, 11, 11, 12, 13, 14], [6, 4])
    b = _sample("b", [20, 21], [2])
    batch = collate_generative([a, b], max_len=3)
    histories = target_histories(batch)
    offsets = histories.offsets.tolist()
    rows = [histories.values[offsets[i] : offsets[i + 1]].tolist() for i in range(3)]
    assert rows == [[10, 11, 12, 13, 14], [10, 11, 12], [20, 21]]


def test_target_histories_of_an_empty_batch_are_empty() -> None:
    histories = target_histories(collate_generative([], max_len=3))
    assert histories.values.numel() == 0 and histories.lengths.numel() == 0


def test_eval_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="eval.ks"):
        RankingEvalConfig(ks=(0,))
    with pytest.raises(ValueError, match="eval.chunk"):
        RankingEvalConfig(chunk=0)


def test_next_item_module_refuses_a_bidirectional_encoder_and_a_bad_alpha() -> None:
    vocab = {"item": 20, "category": 3, "behavior": 3}
    schema = FeatureSchema.from_vocab(vocab, FeatureConfig(embedding_dim=8, max_len=6))
    torch_backend = EmbeddingConfig("torch")
    causal = NextItemModule(SasRec, embedding=torch_backend).setup_model(schema)
    assert causal.causal and causal.dims.max_len == 6 and causal.dense.mask is None
    bidirectional = functools.partial(SasRec, config=SasRecConfig(causal=False))
    with pytest.raises(ValueError, match="MaskedItemModule"):
        NextItemModule(bidirectional, embedding=torch_backend).setup_model(schema)
    with pytest.raises(ValueError, match="stochastic_length_alpha"):
        NextItemModule(SasRec, stochastic_length_alpha=2.5)
