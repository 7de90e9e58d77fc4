"""`ItemAndPosition(reverse=True)`: positions counted back from each row's last event (the
"Revisiting SASRec" option) — hand values, jagged == alone, and the exported request program
(a dynamic length under `torch.export`) equal to the eager model."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.input_features import ItemAndPosition, reversed_positions
from lifeseq.models.interfaces import ModelDims, SequenceRows
from lifeseq.models.sequential import SequenceStep, SequentialRecommender
from lifeseq.models.zoo.sequence.sasrec import SasRec, SasRecConfig
from lifeseq.serving.export import export_dense

pytestmark = pytest.mark.unit

DIMS = ModelDims(item_rows=30, embedding_dim=8, max_len=12, seed=5)
TOL = 1e-5


def rows_of(lengths: list[int]) -> SequenceRows:
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    n = int(offsets[-1])
    ts = torch.arange(n, dtype=torch.int64)
    return SequenceRows.from_offsets(offsets, ts, ts + 1)


def reversed_model() -> SequentialRecommender:
    encoder = functools.partial(SasRec, config=SasRecConfig(length_bucket=4))
    features = functools.partial(ItemAndPosition, reverse=True)
    return SequentialRecommender(DIMS, encoder, features).eval()


def step_of(rows: list[list[int]]) -> SequenceStep:
    items = Jagged.from_list([torch.tensor(r, dtype=torch.int64) for r in rows])
    ts = torch.arange(items.values.shape[0], dtype=torch.int64)
    return SequenceStep(items, ts, ts + 1, torch.zeros(0, dtype=torch.int64))


def test_reversed_positions_count_back_from_each_rows_last_event() -> None:
    rows = rows_of([3, 0, 2, 1])  # an empty row in between
    assert rows.positions.tolist() == [0, 1, 2, 0, 1, 0]
    assert reversed_positions(rows).tolist() == [2, 1, 0, 1, 0, 0]
    ts = torch.arange(4, dtype=torch.int64)
    assert reversed_positions(SequenceRows.single(ts, ts)).tolist() == [3, 2, 1, 0]


def test_reverse_adds_the_position_row_counted_from_the_end() -> None:
    features = ItemAndPosition(DIMS, dropout=0.0, reverse=True)
    forward = ItemAndPosition(DIMS, dropout=0.0)
    forward.load_state_dict(features.state_dict())
    item_rows = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    rows = rows_of([3, 2])
    table = features.position.weight
    expected = item_rows * math.sqrt(8) + table[torch.tensor([2, 1, 0, 1, 0])]
    torch.testing.assert_close(features(item_rows, rows), expected)
    torch.testing.assert_close(
        forward(item_rows, rows), item_rows * math.sqrt(8) + table[[0, 1, 2, 0, 1]]
    )
    # the newest event gets position row 0 whatever its row's length
    short, long = rows_of([1]), rows_of([4])
    last = item_rows[:1]
    torch.testing.assert_close(
        features(last, short)[0], features(torch.cat([item_rows[1:4], last]), long)[3]
    )


def test_a_jagged_batch_equals_each_row_alone_with_reversed_positions() -> None:
    model = reversed_model()
    rows = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18]]
    with torch.no_grad():
        together = model(step_of(rows)).user
        alone = torch.cat([model(step_of([r])).user for r in rows])
    assert (together - alone).abs().max().item() <= TOL


def test_the_exported_request_program_equals_the_eager_model(tmp_path: Path) -> None:
    model = reversed_model()
    export_dense(tmp_path, model)
    program = torch.export.load(tmp_path / "dense" / "model.pt2").module()
    table = model.embeddings.state_dict()
    item_weight = next(v for k, v in table.items() if k.endswith("item.weight"))
    for n in (1, 3, 8, DIMS.max_len):
        items = torch.arange(n, dtype=torch.int64) % 20 + 2
        ts = torch.arange(n, dtype=torch.int64)
        request = {"sequence_item_rows": item_weight[items], "key_ts": ts, "query_ts": ts + 1}
        with torch.no_grad():
            eager = model(step_of([items.tolist()])).user[-1]
            exported = program(request)
        assert (exported - eager).abs().max().item() <= TOL, n
