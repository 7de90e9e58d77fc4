"""Vocab ids assigned in parallel: equal to one global row number over (count desc, raw id),
with no single-partition step (issue 16: vocabs of 10^9 ids)."""

from __future__ import annotations

import random

import pytest
from pyspark.sql import functions as F

from lifeseq.pipeline.vocab import FIRST_ID, build_vocab, rank_in_parallel

pytestmark = pytest.mark.spark


def test_rank_in_parallel_equals_a_global_sort_over_many_partitions(spark) -> None:
    rng = random.Random(7)
    rows = [(f"k{i:05d}", rng.randrange(5)) for i in rng.sample(range(10_000), 3_000)]
    frame = spark.createDataFrame(rows, "key string, score int").repartition(7)
    coalesce = "spark.sql.adaptive.coalescePartitions.enabled"  # small data: AQE would make 1
    before = spark.conf.get(coalesce)
    spark.conf.set(coalesce, "false")
    try:
        ranked = rank_in_parallel(frame, [F.col("score").desc(), F.col("key").asc()])
        got = {r["key"]: r["rank"] for r in ranked.collect()}
    finally:
        spark.conf.set(coalesce, before)
    expected = sorted(rows, key=lambda r: (-r[1], r[0]))
    assert got == {key: i + 1 for i, (key, _) in enumerate(expected)}
    assert ranked.rdd.getNumPartitions() > 1  # the ranks came from a partitioned sort
    assert sorted(ranked.columns) == ["key", "rank", "score"]


def test_rank_in_parallel_of_an_empty_frame(spark) -> None:
    frame = spark.createDataFrame([], "key string, score int")
    assert rank_in_parallel(frame, [F.col("key").asc()]).collect() == []


def test_build_vocab_ids_by_count_then_raw_id_with_ties_and_min_count(spark) -> None:
    counts = {"b": 3, "a": 3, "c": 5, "d": 1, "e": 2, "f": 2}
    events = [(raw,) for raw, n in counts.items() for _ in range(n)] + [(None,)] * 4
    frame = spark.createDataFrame(events, "item_id string").repartition(5)
    vocab = {r["raw_id"]: (r["id"], r["count"]) for r in build_vocab(frame, "item_id", 2).collect()}
    order = ["c", "a", "b", "e", "f"]  # count desc, raw id asc; "d" below min_count
    assert vocab == {raw: (FIRST_ID + i, counts[raw]) for i, raw in enumerate(order)}
