"""Deduplication inside the shuffle by user (`pipeline.user_events`) against the separate
dedupe it replaced, and vocab ids looked up in place against the joins."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lifeseq.pipeline.lifelong import build_lifelong
from lifeseq.pipeline.user_events import (
    explode_user_events,
    group_user_events,
    lookup_tables,
    map_user_events,
)
from lifeseq.pipeline.vocab import apply_vocabs, build_all_vocabs

pytestmark = pytest.mark.spark

COLUMNS = "user_id string, item_id string, category_id string, behavior string, ts long, value double, _file_idx int, _row long"


def _events(spark, n: int = 3000, seed: int = 0) -> DataFrame:
    """Events of 7 users over few items, times and values, so that exact duplicates, equal
    timestamps, null categories and null values are common."""
    rng = np.random.default_rng(seed)
    rows = []
    for row in range(n):
        category = None if rng.random() < 0.1 else f"c{rng.integers(0, 3)}"
        value = None if rng.random() < 0.2 else float(rng.integers(0, 2))
        rows.append((f"u{rng.integers(0, 7)}", f"i{rng.integers(0, 9)}", category,
                     ["view", "click"][rng.integers(0, 2)], int(rng.integers(0, 40)), value,
                     int(rng.integers(0, 3)), row))  # fmt: skip
    return spark.createDataFrame(rows, COLUMNS)


def _reference_dedupe(events: DataFrame) -> DataFrame:
    """The dedupe the build ran before: group by the event key, keep the first (file, row)."""
    key = ("user_id", "item_id", "category_id", "behavior", "ts", "value")
    first = F.min(F.struct("_file_idx", "_row")).alias("first")
    return events.groupBy(*key).agg(first).select(*key, "first._file_idx", "first._row")


def test_grouping_by_user_drops_the_same_duplicates_in_user_order(spark):
    events = _events(spark)
    users = group_user_events(events)

    got = explode_user_events(users).collect()
    expected = _reference_dedupe(events).collect()

    def key(r):
        return (r.user_id, r.ts, r._file_idx, r._row)

    assert sorted(map(key, got)) == sorted(map(key, expected))
    assert len(got) < 3000  # the data had duplicates
    for row in users.collect():
        order = [(e.ts, e._file_idx, e._row) for e in row.ev]
        assert order == sorted(order)  # user order: ts, then file, then row


@pytest.mark.parametrize("cap", [5, None])
def test_ids_looked_up_in_place_equal_the_joins(spark, cap):
    events = _events(spark, seed=1)
    users = group_user_events(events)
    deduped = explode_user_events(users)
    vocabs = build_all_vocabs(deduped.where(F.col("item_id") != "i8"), 1)  # i8: OOV
    tables = spark.sparkContext.broadcast(lookup_tables(vocabs))

    mapped = {r.user_id: r.asDict() for r in map_user_events(users, tables, cap, True).collect()}
    joined = build_lifelong(apply_vocabs(deduped, vocabs), cap or 10**6, True)

    for row in joined.collect():
        ours = mapped[row.user_id]
        for name in ("item", "category", "behavior", "ts", "n_events", "truncated"):
            assert ours[name] == row[name], name
        assert [v is None for v in ours["value"]] == [v is None for v in row["value"]]
    oov = sum(r["oov_item"] for r in mapped.values())
    assert oov == deduped.where(F.col("item_id") == "i8").count() > 0


def test_a_build_joining_a_large_vocab_equals_the_broadcast_one(spark, tmp_path, monkeypatch):
    """Vocabs over `BROADCAST_MAX_IDS` are joined instead of looked up: same output."""
    from tests.conftest import write_events_parquet
    from tests.spark.helpers import build, make_config

    rows = [r.asDict() for r in _events(spark, n=600, seed=2).drop("_file_idx", "_row").collect()]
    for k in range(5):
        rows[k]["item_id"] = f"rare{k}"  # seen once: under min_count
    for part in range(2):
        write_events_parquet(tmp_path / "in" / f"p{part}.parquet", rows[part::2], {"ts": "int64"})
    cfg = make_config(input={"ts_min": 0}, vocab={"min_count": 2})
    broadcast = build(spark, [tmp_path / "in"], tmp_path / "broadcast", cfg).manifest
    monkeypatch.setattr("lifeseq.pipeline.build.BROADCAST_MAX_IDS", 0)
    joined = build(spark, [tmp_path / "in"], tmp_path / "joined", cfg).manifest

    assert joined["shards"] == broadcast["shards"] and broadcast["shards"]
    assert joined["counts"] == broadcast["counts"] and broadcast["counts"]["duplicates"] > 0
    assert broadcast["counts"]["oov"]["item"] > 0  # min_count 2 leaves rare items out
