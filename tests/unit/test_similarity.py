"""`loss.similarity`: cosine (L2-normalized user and item embeddings) vs dot (raw inner
products, RecBole's scoring) — what the model outputs, the item index it exports, the exported
program, and the config check."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.input_features import ItemAndPosition
from lifeseq.models.blocks.sampled_softmax import SoftmaxLossConfig
from lifeseq.models.interfaces import ModelDims
from lifeseq.models.sequential import SequenceStep, SequentialRecommender
from lifeseq.models.zoo.sequence.sasrec import SasRec, SasRecConfig
from lifeseq.serving.export import export_dense

pytestmark = pytest.mark.unit

DIMS = ModelDims(item_rows=30, embedding_dim=8, max_len=12, seed=5)


def model_of(similarity: str) -> SequentialRecommender:
    encoder = functools.partial(SasRec, config=SasRecConfig(length_bucket=4))
    return SequentialRecommender(DIMS, encoder, ItemAndPosition, similarity=similarity).eval()


def step_of(rows: list[list[int]], candidates: list[int]) -> SequenceStep:
    items = Jagged.from_list([torch.tensor(r, dtype=torch.int64) for r in rows])
    ts = torch.arange(items.values.shape[0], dtype=torch.int64)
    return SequenceStep(items, ts, ts + 1, torch.tensor(candidates, dtype=torch.int64))


def item_weight(model: SequentialRecommender) -> torch.Tensor:
    return next(v for k, v in model.embeddings.state_dict().items() if k.endswith("item.weight"))


def test_dot_keeps_norms_and_cosine_normalizes() -> None:
    cosine, dot = model_of("cosine"), model_of("dot")
    assert torch.equal(item_weight(cosine), item_weight(dot))  # same seed, same weights
    step = step_of([[3, 4, 5], [6, 7]], [2, 9, 11])
    with torch.no_grad():
        out_cos, out_dot = cosine(step), dot(step)
        table_cos, table_dot = cosine.item_table(), dot.item_table()
    torch.testing.assert_close(out_cos.user, torch.nn.functional.normalize(out_dot.user, dim=-1))
    assert not torch.allclose(out_dot.user.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(out_dot.candidates, item_weight(dot)[[2, 9, 11]])
    torch.testing.assert_close(table_dot, item_weight(dot))
    torch.testing.assert_close(table_cos.norm(dim=-1)[2:], torch.ones(DIMS.item_rows - 2))
    index = dot.item_caches()["item_index"].compute(item_weight(dot), item_weight(dot))
    torch.testing.assert_close(index, item_weight(dot))
    assert dot.describe()["similarity"] == "dot"


def test_the_exported_dot_program_equals_the_eager_model(tmp_path: Path) -> None:
    model = model_of("dot")
    export_dense(tmp_path, model)
    program = torch.export.load(tmp_path / "dense" / "model.pt2").module()
    weight = item_weight(model)
    for n in (1, 5, DIMS.max_len):
        items = torch.arange(n, dtype=torch.int64) % 20 + 2
        ts = torch.arange(n, dtype=torch.int64)
        request = {"sequence_item_rows": weight[items], "key_ts": ts, "query_ts": ts + 1}
        with torch.no_grad():
            eager = model(step_of([items.tolist()], [])).user[-1]
            exported = program(request)
        assert (exported - eager).abs().max().item() <= 1e-5, n


def test_an_unknown_similarity_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="loss.similarity: expected one of"):
        SoftmaxLossConfig(similarity="euclid")
    with pytest.raises(ValueError, match="similarity: expected one of"):
        model_of("euclid")
