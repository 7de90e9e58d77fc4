"""Deterministic vocabularies (raw id → int id) and their application to events.

Ids: 0 = padding, 1 = out-of-vocabulary/rare/unknown, then 2, 3, ... by descending count, ties
by raw id (compared as strings), so re-runs give identical ids. Stored as Parquet under
`OUT/vocab/{item,category,behavior}/` with columns `raw_id` (string), `id` (long), `count`
(long); the item vocab also has `category_id`, the item's most frequent category id (ties by
smaller id), used to give sampled negatives a category, and `first_ts` / `last_ts`, the times
of the item's first and last valid events (epoch seconds; null in an increment of a build made
before they were recorded), from which training tells an item's first days
(`trainers.cold_items`).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

PAD_ID = 0
OOV_ID = 1
FIRST_ID = 2
VOCAB_NAMES = ("item", "category", "behavior")
#: The raw event column each vocab is built from.
SOURCE_COLUMN = {"item": "item_id", "category": "category_id", "behavior": "behavior"}


def build_vocab(events: DataFrame, column: str, min_count: int) -> DataFrame:
    """Vocab of the non-null values of `column`: `raw_id, id, count`.

    Values seen fewer than `min_count` times get no entry (they map to the OOV id). Ids are
    assigned in parallel (`rank_in_parallel`): no single-partition window, so the vocab scales
    with the cluster (10^9 distinct ids), and ids equal one global `row_number` over the order.
    """
    counts = (
        events.where(F.col(column).isNotNull())
        .groupBy(F.col(column).alias("raw_id"))
        .agg(F.count(F.lit(1)).alias("count"))
        .where(F.col("count") >= min_count)
    )
    ranked = rank_in_parallel(counts, [F.col("count").desc(), F.col("raw_id").asc()])
    return ranked.select(
        "raw_id", (F.col("rank") + (FIRST_ID - 1)).cast("long").alias("id"), "count"
    )


def rank_in_parallel(frame: DataFrame, order: list[Column]) -> DataFrame:
    """`frame` plus `rank` (long, 1, 2, ...): each row's position in `order`, which must be a
    total order (ties broken by a unique column).

    One range-partitioned sort, then every row's rank is its partition's offset plus its
    position within the partition (`monotonically_increasing_id` keeps that position in its
    low 33 bits). The sorted rows are pinned with a local checkpoint first, so the partition
    sizes and the positions come from one evaluation of the sort.
    """
    sorted_rows = frame.orderBy(*order).select(
        "*",
        F.spark_partition_id().alias("_partition"),
        F.monotonically_increasing_id().alias("_row_key"),
    )
    sorted_rows = sorted_rows.localCheckpoint(eager=True)
    sizes = {
        row["_partition"]: row["count"]
        for row in sorted_rows.groupBy("_partition").count().collect()
    }
    offsets, total = [], 0
    for partition in range(max(sizes, default=-1) + 1):
        offsets.append(total)
        total += sizes.get(partition, 0)
    offset = (
        F.element_at(
            F.array(*[F.lit(o) for o in offsets]).cast("array<long>"), F.col("_partition") + 1
        )
        if offsets
        else F.lit(0)
    )
    position = F.col("_row_key") - F.shiftleft(F.col("_partition").cast("long"), 33)
    return sorted_rows.withColumn("rank", (offset + position + 1).cast("long")).drop(
        "_partition", "_row_key"
    )


def attach_item_category(
    item_vocab: DataFrame, events: DataFrame, category_vocab: DataFrame
) -> DataFrame:
    """Add `category_id` (the item's most frequent category id) and `first_ts` / `last_ts` (the
    times of its first and last events in `events`) to the item vocab."""
    with_cat = events.join(
        category_vocab.select(F.col("raw_id").alias("category_id"), F.col("id").alias("cat_id")),
        on="category_id",
        how="left",
    ).withColumn("cat_id", F.coalesce("cat_id", F.lit(OOV_ID)).cast("long"))
    per_pair = with_cat.groupBy("item_id", "cat_id").agg(
        F.count(F.lit(1)).alias("n"), F.min("ts").alias("first"), F.max("ts").alias("last")
    )
    best = per_pair.groupBy("item_id").agg(
        F.max(F.struct(F.col("n"), (-F.col("cat_id")).alias("neg_cat"))).alias("best"),
        F.min("first").alias("first_ts"),
        F.max("last").alias("last_ts"),
    )
    best = best.select(
        F.col("item_id").alias("raw_id"),
        (-F.col("best.neg_cat")).cast("long").alias("category_id"),
        F.col("first_ts").cast("long").alias("first_ts"),
        F.col("last_ts").cast("long").alias("last_ts"),
    )
    return item_vocab.join(best, on="raw_id", how="left").select(
        "raw_id",
        "id",
        "count",
        F.coalesce("category_id", F.lit(OOV_ID)).cast("long").alias("category_id"),
        "first_ts",
        "last_ts",
    )


def build_all_vocabs(events: DataFrame, min_count: int) -> dict[str, DataFrame]:
    """Item (with category), category and behavior vocabs from deduplicated valid events."""
    category = build_vocab(events, "category_id", min_count)
    item = build_vocab(events, "item_id", min_count)
    item = attach_item_category(item, events, category)
    behavior = build_vocab(events, "behavior", 1)
    return {"item": item, "category": category, "behavior": behavior}


def read_vocabs(spark: SparkSession, vocab_dir: str) -> dict[str, DataFrame]:
    """Read the vocabs of an earlier run (`--vocab-from OLD_OUT` passes `OLD_OUT/vocab`).

    Raises:
        FileNotFoundError: a vocab table is missing, naming it.
    """
    from lifeseq.pipeline import storage

    vocabs = {}
    for name in VOCAB_NAMES:
        path = storage.join(vocab_dir, name)
        if not storage.exists(path):
            raise FileNotFoundError(
                f"--vocab-from: no {name} vocab at {path}; pass the OUT directory of an earlier build"
            )
        vocabs[name] = spark.read.parquet(path)
    return vocabs


def apply_vocabs(events: DataFrame, vocabs: dict[str, DataFrame]) -> DataFrame:
    """Add id columns `item`, `category`, `behavior` (long) for the raw `item_id`,
    `category_id` and `behavior` (renamed `raw_item`, `raw_category`, `raw_behavior`).

    Unknown and rare values get `OOV_ID`; a missing category gets `OOV_ID` too.
    """
    out = events
    for name in VOCAB_NAMES:
        out = out.withColumnRenamed(SOURCE_COLUMN[name], f"raw_{name}")
    for name in VOCAB_NAMES:
        table = vocabs[name].select(F.col("raw_id").alias(f"raw_{name}"), F.col("id").alias(name))
        out = out.join(table, on=f"raw_{name}", how="left").withColumn(
            name, F.coalesce(F.col(name), F.lit(OOV_ID)).cast("long")
        )
    return out
