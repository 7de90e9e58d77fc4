"""Items the model never trained on (`trainers.cold_items`): the first days of a fixed share
of the items (a fixed share of the events, for a build without `first_ts`) train the OOV row
with their real labels; every row a training batch looked up is recorded,
and evaluation scores the others exactly as the OOV id; the record survives a checkpoint and
`lifeseq export` leaves untrained ids out of the vocabularies it writes."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lifeseq.features.batch import CtrBatch, collate_ctr
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.zoo.ctr.smoke import SmokeConfig, SmokeCtr
from lifeseq.serving.export import export_vocabs
from lifeseq.trainers.cold_items import (
    OOV_ID,
    UNKNOWN_FIRST_TS,
    ColdItemConfig,
    ItemTimes,
    TrainedRows,
    held_out,
    hold_out_items,
)
from lifeseq.trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig
from lifeseq.trainers.tasks.ctr import CtrModule
from tests.unit.test_dataset import make_sample

pytestmark = pytest.mark.unit

SIZES = {"item": 3000, "category": 6, "behavior": 5}


def _batch(users: range, max_history: int = 50) -> CtrBatch:
    return collate_ctr([make_sample(u) for u in users], max_history)


def _module(share: float = 0.05, untrained_as_oov: bool = True) -> CtrModule:
    schema = FeatureSchema.from_vocab(SIZES, FeatureConfig(embedding_dim=8, max_history=50))
    module = CtrModule(
        functools.partial(SmokeCtr, config=SmokeConfig(hidden=(8,))),
        embedding=EmbeddingConfig("torch"), optimizer=DenseOptimizerConfig(), schema=schema,
        cold_items=ColdItemConfig(share=share, untrained_as_oov=untrained_as_oov),
    )  # fmt: skip
    module.configure_model()
    return module


def test_the_held_out_share_is_fixed_and_about_the_share_asked() -> None:
    items = torch.randint(2, 10**6, (200_000,))
    ts = torch.randint(1_600_000_000, 1_700_000_000, (200_000,))
    chosen = held_out(items, ts, 0.05, seed=3)
    assert abs(float(chosen.float().mean()) - 0.05) < 0.003
    assert torch.equal(chosen, held_out(items, ts, 0.05, seed=3))  # every epoch, run and rank
    assert not torch.equal(chosen, held_out(items, ts, 0.05, seed=4))
    assert not held_out(items, ts, 0.0, seed=3).any()
    with pytest.raises(ValueError, match=r"cold_items.share: expected a number in \[0, 1\)"):
        ColdItemConfig(share=1.0)


DAY = 86_400


def test_new_items_first_days_are_held_out_for_a_fixed_share_of_the_items() -> None:
    """With each item's first and last event times: the events of a `share` of the items (the
    same items at every time) within `new_item_seconds` of that item's first event, never
    before it, never an item whose first event is unknown or that has no event after its new
    days (it would lose its own row), never padding or OOV."""
    first = torch.full((10_000,), UNKNOWN_FIRST_TS, dtype=torch.int64)
    first[2:9_000] = 1_700_000_000 + torch.arange(2, 9_000) * 100
    last = first + 30 * DAY
    last[8_000:9_000] = first[8_000:9_000] + 7 * DAY - 1  # gone within their new days
    times = ItemTimes(first, last)
    items = torch.arange(10_000).repeat_interleave(4)
    age = torch.tensor([-DAY, 0, 7 * DAY - 1, 7 * DAY]).repeat(10_000)
    ts = torch.where(first[items] == UNKNOWN_FIRST_TS, 1_800_000_000, first[items] + age)
    chosen = held_out(items, ts, 0.25, seed=3, times=times, new_item_seconds=7 * DAY)
    by_item = chosen.view(10_000, 4)
    picked = by_item.any(dim=1)
    assert abs(float(picked[2:8_000].float().mean()) - 0.25) < 0.02
    assert not picked[:2].any() and not picked[8_000:].any()  # padding, OOV, short-lived, unknown
    assert torch.equal(by_item[picked], torch.tensor([[False, True, True, False]]).expand(
        int(picked.sum()), 4))  # fmt: skip
    again = held_out(items, ts, 0.25, seed=3, times=times, new_item_seconds=7 * DAY)
    assert torch.equal(chosen, again)
    assert not torch.equal(chosen, held_out(items, ts, 0.25, seed=4, times=times))
    longer = held_out(items, ts, 0.25, seed=3, times=times, new_item_seconds=8 * DAY)
    assert torch.equal(longer.view(10_000, 4)[:8_000, 3], picked[:8_000])
    cut = int(first[4_000]) + 7 * DAY + 1  # training's data ends 7 days after item 4,000's start
    ended = held_out(items, ts, 0.25, seed=3, times=ItemTimes(first, last, train_end=cut),
                     new_item_seconds=7 * DAY).view(10_000, 4).any(dim=1)  # fmt: skip
    assert torch.equal(ended[:4_001], picked[:4_001]) and not ended[4_001:].any()
    batch = _batch(range(40))
    young = ItemTimes(torch.zeros(SIZES["item"], dtype=torch.int64),
                      torch.full((SIZES["item"],), 10**13))  # every item new since time 0  # fmt: skip
    held = hold_out_items(batch, 0.5, 0, young, new_item_seconds=10**12)
    rule = {"share": 0.5, "seed": 0, "times": young, "new_item_seconds": 10**12}
    events = held_out(batch.history["item"].values, batch.history["ts"].values, **rule)
    assert 0 < int(events.sum()) < events.numel()
    assert torch.equal(held.history["item"].values,
                       torch.where(events, OOV_ID, batch.history["item"].values))  # fmt: skip
    assert torch.equal(held.target_item == OOV_ID,
                       held_out(batch.target_item, batch.target_ts, **rule))  # fmt: skip
    with pytest.raises(ValueError, match=r"cold_items.new_item_days: expected a number of days"):
        ColdItemConfig(new_item_days=0)
    assert ColdItemConfig(new_item_days=1.5).new_item_seconds == 129_600


def test_without_item_times_at_most_five_percent_of_the_events_are_held_out() -> None:
    config = ColdItemConfig(share=0.5)
    assert config.held_out_share(times_known=True) == 0.5  # of the items
    assert config.held_out_share(times_known=False) == 0.05  # of the events (the rule before)
    assert ColdItemConfig(share=0.01).held_out_share(times_known=False) == 0.01
    times = ItemTimes(torch.zeros(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64))
    assert times.to(torch.device("cpu")) is times


def test_first_and_last_event_times_are_read_from_the_item_vocab(tmp_path: Path) -> None:
    vocab = tmp_path / "out" / "vocab" / "item"
    vocab.mkdir(parents=True)
    rows = {"raw_id": ["a", "b", "c"], "id": [2, 3, 4], "count": [3, 2, 1],
            "category_id": [2, 2, 3], "first_ts": [500, None, 70],
            "last_ts": [900, None, 70]}  # fmt: skip
    pq.write_table(pa.table(rows), vocab / "part-0.parquet")
    times = ItemTimes.read(str(tmp_path / "out"), 6)
    assert times.train_end is None  # no manifest
    (tmp_path / "out" / "manifest.json").write_text(
        json.dumps({"config": {"targets": {"split": "time", "valid_start": 800}}})
    )
    assert ItemTimes.read(str(tmp_path / "out"), 6).train_end == 800
    unknown = UNKNOWN_FIRST_TS
    assert times.first.tolist() == [unknown, unknown, 500, unknown, 70, unknown]
    assert times.last.tolist() == [unknown, unknown, 900, unknown, 70, unknown]
    with pytest.raises(ValueError, match=r"item id 4 outside the item table's 4 rows"):
        ItemTimes.read(str(tmp_path / "out"), 4)
    pq.write_table(pa.table(rows).drop(["first_ts", "last_ts"]), vocab / "part-0.parquet")
    assert ItemTimes.read(str(tmp_path / "out"), 6) is None  # built before the times: hash rule
    assert ItemTimes.read(str(tmp_path / "none"), 6) is None  # no vocab (hand-written shards)


def test_held_out_events_keep_labels_but_lose_item_and_category_as_target_and_in_history() -> None:
    """As serving looks up an item it does not know: item and category unknown, wherever the
    held-out (item, time) appears."""
    batch = _batch(range(40))
    held = hold_out_items(batch, 0.3, seed=0)
    chosen = held.target_item != batch.target_item
    assert torch.equal(chosen, held_out(batch.target_item, batch.target_ts, 0.3, seed=0))
    assert 0 < int(chosen.sum()) < batch.num_targets
    assert (held.target_item[chosen] == OOV_ID).all()
    assert (held.target_category[chosen] == OOV_ID).all()
    assert torch.equal(held.target_category[~chosen], batch.target_category[~chosen])
    assert torch.equal(held.label, batch.label)
    items, ts = batch.history["item"].values, batch.history["ts"].values
    events = held_out(items, ts, 0.3, seed=0)
    assert 0 < int(events.sum()) < items.numel()
    assert torch.equal(held.history["item"].values, torch.where(events, OOV_ID, items))
    assert torch.equal(
        held.history["category"].values,
        torch.where(events, OOV_ID, batch.history["category"].values),
    )
    assert torch.equal(held.history["item"].lengths, batch.history["item"].lengths)
    assert torch.equal(held.history["behavior"].values, batch.history["behavior"].values)
    assert hold_out_items(batch, 0.0, seed=0) is batch


def test_untrained_ids_are_remapped_to_oov_and_trained_ones_kept() -> None:
    rows = TrainedRows(SIZES)
    seen = _batch(range(4))
    rows.mark(seen)
    other = _batch(range(100, 103))  # items 1100..1102 / 2100..2102, history items 2..
    mapped = rows.remap(other)
    trained, categories = rows.masks["item"], rows.masks["category"]
    for items, new_items, cats, new_cats in (
        (other.target_item, mapped.target_item, other.target_category, mapped.target_category),
        (other.history["item"].values, mapped.history["item"].values,
         other.history["category"].values, mapped.history["category"].values),
    ):  # fmt: skip
        known = trained[items]
        assert torch.equal(new_items, torch.where(known, items, OOV_ID))
        assert torch.equal(new_cats, torch.where(known & categories[cats], cats, OOV_ID))
    assert (mapped.target_item == OOV_ID).all()  # their targets were never seen
    assert (mapped.target_category == OOV_ID).all()  # an unknown item's category is unknown
    assert rows.remap(seen) is seen  # nothing untrained: the same batch


def test_the_oov_id_is_the_pipelines() -> None:
    from lifeseq.pipeline.vocab import OOV_ID as PIPELINE_OOV_ID

    assert OOV_ID == PIPELINE_OOV_ID


def test_training_records_rows_and_evaluation_scores_untrained_items_as_oov() -> None:
    module = _module(share=0.0)
    train = _batch(range(8))
    module.training_loss(train).backward()
    rows = module.trained_rows
    assert rows is not None and rows.any()
    assert bool(rows.masks["item"][train.target_item].all())
    new = _batch(range(500, 502))
    as_oov = dataclasses.replace(new, target_item=torch.full_like(new.target_item, OOV_ID),
                                 target_category=torch.full_like(new.target_item, OOV_ID))  # fmt: skip
    module.eval()
    with torch.no_grad():
        remapped = module(module.prepare(new, "val")).logits
        oov = module(module.prepare(as_oov, "val")).logits
    assert torch.equal(remapped, oov)
    off = _module(share=0.0, untrained_as_oov=False)
    off.training_loss(train)
    assert off.prepare(new, "val") is new


def test_the_oov_row_trains_on_the_held_out_share() -> None:
    module = _module(share=0.5)
    table = module.core.embeddings
    before = {n: p.detach().clone() for n, p in table.named_parameters()}
    loss = module.training_loss(_batch(range(16)))
    loss.backward()
    grads = {n: p.grad for n, p in table.named_parameters() if p.grad is not None}
    item_grad = next(g for n, g in grads.items() if "item" in n)
    assert float(item_grad[OOV_ID].abs().sum()) > 0  # row 1 learns from real labels
    assert before  # the tables exist
    assert _module(share=0.0).training_loss(_batch(range(16))) is not None


def test_the_record_round_trips_and_refuses_another_size() -> None:
    rows = TrainedRows(SIZES)
    assert not rows.any()
    rows.mark(_batch(range(3)))
    assert rows.any()
    restored = TrainedRows(SIZES)
    restored.load_state(rows.state())
    assert all(torch.equal(restored.masks[t], rows.masks[t]) for t in rows.masks)
    assert restored.any()
    empty = TrainedRows(SIZES)
    empty.load_state(TrainedRows(SIZES).state())
    assert not empty.any()
    with pytest.raises(ValueError, match=r"trained_rows.item: 3000 rows in the checkpoint, 10 in"):
        TrainedRows({"item": 10, "category": 6}).load_state(rows.state())


def test_export_leaves_untrained_ids_out_of_the_vocabularies(tmp_path: Path) -> None:
    out = tmp_path / "out" / "vocab"
    for name, rows in (("item", [("a", 2, 2), ("b", 3, 3), ("c", 4, 4)]),
                       ("category", [("x", 2, None), ("y", 3, None), ("z", 4, None)]),
                       ("behavior", [("view", 2, None)])):  # fmt: skip
        (out / name).mkdir(parents=True)
        columns = {"raw_id": [r[0] for r in rows], "id": [r[1] for r in rows],
                   "count": [1] * len(rows)}  # fmt: skip
        if name == "item":
            columns["category_id"] = [r[2] for r in rows]
        pq.write_table(pa.table(columns), out / name / "part-0.parquet")
    trained = {"item": np.array([0, 1, 1, 1, 0], bool), "category": np.array([0, 1, 1, 0, 1], bool)}
    section = export_vocabs(tmp_path / "out", tmp_path / "export", trained)
    item = pq.read_table(tmp_path / "export" / "vocab" / "item.parquet").to_pydict()
    assert item == {"raw_id": ["a", "b"], "id": [2, 3], "category_id": [2, OOV_ID]}
    category = pq.read_table(tmp_path / "export" / "vocab" / "category.parquet").to_pydict()
    assert category["raw_id"] == ["x", "z"]
    assert section["item"]["untrained_left_out"] == 1 and section["item"]["entries"] == 2
    untouched = export_vocabs(tmp_path / "out", tmp_path / "all")
    assert untouched["item"]["entries"] == 3 and "untrained_left_out" not in untouched["item"]
