"""Incremental builds: extend an earlier complete build (`--base BASE_OUT`) with a new period of
events, so a daily job costs what the new events cost rather than a rebuild of every history.

    lifeseq build --config C --base BASE_OUT --input NEW_EVENTS --output OUT

What OUT holds (see README, "Incremental builds"):

* `vocab/`: the base's vocab with counts updated; raw ids first seen in the new period get ids
  after the base's largest one (by descending new count, ties by raw id). Existing ids never
  change, so embeddings trained on the base stay valid.
* `lifelong/`: every user of the base or the new events, each history the base's events plus
  the new ones in user order (ties: base events first, as in a full build whose new files sort
  after the base's), capped at `lifelong.max_history`; new events equal to one of the user's
  base events are dropped as duplicates.
* `shards/`: the targets of the new period only (targets whose event is new), each user with
  its whole history up to them; negatives, splits and caps follow the same rules over the whole
  history, so they equal a full build's targets of those events.
* `manifest.json`: with `base` (the base's path, its manifest's sha256 and its own chain).

Only the new events are validated, deduplicated, counted and sorted; the base's histories are
joined with the new events per user (one row per user, no per-event shuffle of the base).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lifeseq.pipeline.sample_codec import VALUE_MEMBER
from lifeseq.pipeline.vocab import OOV_ID, attach_item_category, rank_in_parallel

_HISTORY = ("item", "category", "behavior", "ts")
_DUPLICATE_IDS = ("item", "category", "behavior")


def base_record(base: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `base` entry: the base's path, `manifest_sha256` (of its manifest as
    canonical JSON: sorted keys) and its chain (the bases it was built on, oldest first), so an
    increment names every build it extends."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest()
    earlier = (manifest.get("base") or {}).get("chain", [])
    return {"path": base, "manifest_sha256": digest, "chain": [*earlier, base]}


# --- vocab ----------------------------------------------------------------------------------------


def extend_vocab(base: DataFrame, events: DataFrame, column: str, min_count: int) -> DataFrame:
    """`raw_id, id, count`: the base's rows with the new events' counts added, plus the raw ids
    first seen in `events` (seen `min_count` times there) with ids after the base's largest.

    A raw id the base left out (fewer than `min_count` events then) is judged on its new count
    alone: the base does not keep counts of ids it dropped.
    """
    new_counts = (
        events.where(F.col(column).isNotNull())
        .groupBy(F.col(column).alias("raw_id"))
        .agg(F.count(F.lit(1)).alias("new"))
    )
    joined = base.select("raw_id", "id", "count").join(new_counts, on="raw_id", how="full_outer")
    kept = joined.where(F.col("id").isNotNull()).select(
        "raw_id", "id", (F.col("count") + F.coalesce("new", F.lit(0))).cast("long").alias("count")
    )
    fresh = joined.where(F.col("id").isNull() & (F.col("new") >= min_count)).select(
        "raw_id", F.col("new").cast("long").alias("count")
    )
    largest = base.agg(F.max("id")).first()[0]
    start = int(largest if largest is not None else OOV_ID)
    ranked = rank_in_parallel(fresh, [F.col("count").desc(), F.col("raw_id").asc()])
    appended = ranked.select("raw_id", (F.col("rank") + start).cast("long").alias("id"), "count")
    return kept.unionByName(appended)


def extend_all_vocabs(
    base: dict[str, DataFrame], events: DataFrame, min_count: int
) -> dict[str, DataFrame]:
    """The three vocabs extended by `events` (deduplicated valid events with raw id columns).

    Items keep the base's `category_id`; a new item gets its most frequent category in the new
    events (as a full build gives every item). `first_ts` / `last_ts` are the earlier / later of
    the base's and the new events' (a full build's); null for the base's items when the base
    was built before they were recorded (their first event is not known).
    """
    category = extend_vocab(base["category"], events, "category_id", min_count)
    behavior = extend_vocab(base["behavior"], events, "behavior", 1)
    item = extend_vocab(base["item"], events, "item_id", min_count)
    recorded = "first_ts" in base["item"].columns
    known = base["item"].select(
        "raw_id",
        "category_id",
        *(
            (F.col(c) if recorded else F.lit(None).cast("long")).alias(f"base_{c}")
            for c in ("first_ts", "last_ts")
        ),
    )
    times = events.groupBy(F.col("item_id").alias("raw_id")).agg(
        F.min("ts").alias("new_first_ts"), F.max("ts").alias("new_last_ts")
    )
    old = item.join(known, on="raw_id", how="inner").join(times, on="raw_id", how="left")
    for column, merge in (("first_ts", F.least), ("last_ts", F.greatest)):
        base_value = F.col(f"base_{column}")
        merged = merge(base_value, F.col(f"new_{column}"))
        old = old.withColumn(
            column, F.when(base_value.isNull(), F.lit(None)).otherwise(merged).cast("long")
        )
    new = attach_item_category(item.join(known, on="raw_id", how="left_anti"), events, category)
    columns = ("raw_id", "id", "count", "category_id", "first_ts", "last_ts")
    return {
        "item": old.select(*columns).unionByName(new.select(*columns)),
        "category": category,
        "behavior": behavior,
    }


# --- lifelong table -------------------------------------------------------------------------------


def merged_schema(with_value: bool) -> pa.Schema:
    """Arrow schema of `extend_lifelong`'s rows: the lifelong columns plus `is_new` (per event:
    added by this increment), `duplicates` (new events dropped as equal to a base event) and
    their ids (`dup_item`, `dup_category`, `dup_behavior`: what the vocab counted twice)."""
    fields = [("user_id", pa.string())]
    fields += [(name, pa.list_(pa.int64())) for name in _HISTORY]
    if with_value:
        fields.append((VALUE_MEMBER, pa.list_(pa.float32())))
    fields += [
        ("n_events", pa.int64()),
        ("truncated", pa.int64()),
        ("is_new", pa.list_(pa.bool_())),
        ("duplicates", pa.int64()),
    ]
    fields += [(f"dup_{name}", pa.list_(pa.int64())) for name in _DUPLICATE_IDS]
    return pa.schema(fields)


def merge_user(
    base: dict[str, np.ndarray] | None,
    base_events: int,
    new: dict[str, np.ndarray] | None,
    max_history: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, int, int]:
    """One user's extended history.

    Args:
        base: the base's kept history (`item`, `category`, `behavior`, `ts`, maybe `value`), in
            user order; None for a user new in this period.
        base_events: the base's `n_events` (its events before the `max_history` cap).
        new: the user's new events in user order (same keys); None when there are none.
        max_history: the cap.

    Returns:
        (history arrays, is_new mask, n_events, dropped): the last `max_history` events of base
        then new in user order (equal `ts`: base first), and the new events dropped as equal to
        a base event (same keys).
    """
    if new is None or new["ts"].size == 0:
        assert base is not None
        dropped = {k: v[:0] for k, v in base.items()}
        return base, np.zeros(base["ts"].shape[0], dtype=bool), base_events, dropped
    keep_new = np.ones(new["ts"].shape[0], dtype=bool)
    if base is not None and base["ts"].size:
        first = int(np.searchsorted(base["ts"], new["ts"].min(), side="left"))
        keys = list(base)
        seen = set(zip(*(base[k][first:].tolist() for k in keys), strict=True))
        if seen:
            candidates = zip(*(new[k].tolist() for k in keys), strict=True)
            keep_new = np.fromiter((key not in seen for key in candidates), bool, keep_new.size)
    added = {k: v[keep_new] for k, v in new.items()}
    dropped = {k: v[~keep_new] for k, v in new.items()}
    if base is None:
        base = {k: v[:0] for k, v in added.items()}
    merged = {k: np.concatenate([base[k], added[k]]) for k in base}
    origin = np.concatenate([np.zeros(base["ts"].shape[0]), np.ones(added["ts"].shape[0])])
    order = np.lexsort((np.arange(origin.size), origin, merged["ts"]))[-max_history:]
    n_events = base_events + int(added["ts"].shape[0])
    return {k: v[order] for k, v in merged.items()}, origin[order] == 1, n_events, dropped


def _lists(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets, valid) of a list column; null rows have empty ranges."""
    column = batch.column(batch.schema.get_field_index(name))
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = column.offsets.to_numpy().astype(np.int64)
    return column.values.to_numpy(zero_copy_only=False), offsets, valid


def make_merger(max_history: int, with_value: bool):
    """The `mapInArrow` function of `extend_lifelong` (rows: a base lifelong row and/or the
    user's `new_*` arrays, joined on `user_id`)."""
    names = [*_HISTORY, *([VALUE_MEMBER] if with_value else [])]
    schema = merged_schema(with_value)

    def merge(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            users = batch.column(batch.schema.get_field_index("user_id")).to_pylist()
            base_n = batch.column(batch.schema.get_field_index("n_events")).to_pylist()
            base = {name: _lists(batch, name) for name in names}
            new = {name: _lists(batch, f"new_{name}") for name in names}
            out: dict[str, list] = {field.name: [] for field in schema}
            for row, user in enumerate(users):
                mine = None
                if base["ts"][2][row]:
                    mine = {n: v[o[row] : o[row + 1]] for n, (v, o, _) in base.items()}
                theirs = None
                if new["ts"][2][row]:
                    theirs = {n: v[o[row] : o[row + 1]] for n, (v, o, _) in new.items()}
                history, is_new, n_events, dropped = merge_user(
                    mine, int(base_n[row] or 0), theirs, max_history
                )
                out["user_id"].append(user)
                for name in names:
                    out[name].append(history[name])
                out["n_events"].append(n_events)
                out["truncated"].append(n_events - int(history["ts"].shape[0]))
                out["is_new"].append(is_new)
                out["duplicates"].append(int(dropped["ts"].shape[0]))
                for name in _DUPLICATE_IDS:
                    out[f"dup_{name}"].append(dropped[name])
            yield pa.RecordBatch.from_pydict(out, schema=schema)

    return merge


def extend_lifelong(
    base: DataFrame, rows: DataFrame, max_history: int, with_value: bool
) -> DataFrame:
    """Every user's extended history (`merged_schema` columns).

    Args:
        base: the base's lifelong table.
        rows: the new events as uncapped lifelong rows (one per user, events in user order,
            deduplicated among themselves).
        max_history: most recent events kept per user.
        with_value: the tables have a `value` column.
    """
    names = [*_HISTORY, *([VALUE_MEMBER] if with_value else [])]
    new = rows.select("user_id", *[F.col(n).alias(f"new_{n}") for n in names])
    joined = base.select("user_id", *names, "n_events").join(new, on="user_id", how="full_outer")
    return joined.mapInArrow(make_merger(max_history, with_value), _spark_schema(with_value))


def _spark_schema(with_value: bool):
    from pyspark.sql import types as T

    fields = [T.StructField("user_id", T.StringType())]
    fields += [T.StructField(name, T.ArrayType(T.LongType())) for name in _HISTORY]
    if with_value:
        fields.append(T.StructField(VALUE_MEMBER, T.ArrayType(T.FloatType())))
    fields += [
        T.StructField("n_events", T.LongType()),
        T.StructField("truncated", T.LongType()),
        T.StructField("is_new", T.ArrayType(T.BooleanType())),
        T.StructField("duplicates", T.LongType()),
    ]
    fields += [T.StructField(f"dup_{name}", T.ArrayType(T.LongType())) for name in _DUPLICATE_IDS]
    return T.StructType(fields)


def uncount_duplicates(vocab: DataFrame, merged: DataFrame, name: str) -> DataFrame:
    """`vocab` (`raw_id, id, count, ...`) with the `name` ids of the new events dropped as
    duplicates of base events taken off the counts (`extend_vocab` counted them once more)."""
    dropped = (
        merged.select(F.explode(f"dup_{name}").alias("id"))
        .groupBy("id")
        .agg(F.count(F.lit(1)).alias("_dropped"))
    )
    columns = [F.col(c) for c in vocab.columns if c != "count"]
    recount = (F.col("count") - F.coalesce("_dropped", F.lit(0))).cast("long").alias("count")
    return vocab.join(dropped, on="id", how="left").select(*columns, recount).select(*vocab.columns)
