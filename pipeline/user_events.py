"""Per-user event arrays: deduplication inside the one shuffle by user, and vocab ids mapped in
place.

A build used to shuffle every event twice: once by the event key to drop exact duplicates, once
by user to sort each history. `group_user_events` does both with one shuffle by user: sorting a
user's events by (ts, item, category, behavior, value, file, row) puts exact duplicates side by
side, the first occurrence in input order first; the others are dropped and the rest re-sorted
into user order (ts, then file, then row). `map_user_events` then turns raw ids into vocab ids
row by row with lookup tables broadcast to the executors, so the lifelong table needs no
further shuffle; vocabs too large to broadcast go through joins instead (`pipeline.build`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import Broadcast
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lifeseq.pipeline.sample_codec import VALUE_MEMBER
from lifeseq.pipeline.vocab import OOV_ID, SOURCE_COLUMN, VOCAB_NAMES

#: The event key of a duplicate (with the user, whose row it is in).
DUPLICATE_KEY = ("ts", "item_id", "category_id", "behavior", "value")
#: Fields of `ev`, in user order's sort order.
EVENT_FIELDS = ("ts", "_file_idx", "_row", "item_id", "category_id", "behavior", "value")
#: Largest vocab (all three tables' rows) mapped with broadcast lookup tables; larger ones are
#: joined (a shuffle) instead.
BROADCAST_MAX_IDS = 20_000_000


def group_user_events(events: DataFrame) -> DataFrame:
    """One row per user: `user_id` and `ev`, the user's events without exact duplicates in user
    order (`EVENT_FIELDS` structs, raw ids).

    Args:
        events: valid events with `user_id, item_id, category_id, behavior, ts, value,
            _file_idx, _row` (`pipeline.lifelong.index_files`).
    """
    by_key = F.sort_array(F.collect_list(F.struct(*DUPLICATE_KEY, "_file_idx", "_row")))
    grouped = events.groupBy("user_id").agg(by_key.alias("ev"))

    def first_of_its_key(event: F.Column, index: F.Column) -> F.Column:
        previous = F.get(F.col("ev"), index - 1)  # NULL for the first event
        same = functools.reduce(
            operator.and_, [event[k].eqNullSafe(previous[k]) for k in DUPLICATE_KEY]
        )
        return previous.isNull() | ~same

    unique = F.filter(F.col("ev"), first_of_its_key)
    ordered = F.sort_array(
        F.transform(unique, lambda e: F.struct(*[e[k].alias(k) for k in EVENT_FIELDS]))
    )
    return grouped.select("user_id", ordered.alias("ev"))


def explode_user_events(users: DataFrame) -> DataFrame:
    """`group_user_events`'s rows back as one row per event (`user_id` and `EVENT_FIELDS`)."""
    return users.select("user_id", F.explode("ev").alias("e")).select("user_id", "e.*")


def lookup_tables(vocabs: dict[str, DataFrame]) -> dict[str, tuple[pa.Array, np.ndarray]]:
    """Per vocab: (raw ids as an Arrow string array, their ids), collected for broadcasting to
    `map_user_events` (Arrow buffers, not Python strings: ~20 bytes per id on the driver)."""
    tables = {}
    for name in VOCAB_NAMES:
        rows = vocabs[name].select("raw_id", "id").toArrow()
        raw = pc.cast(rows.column("raw_id").combine_chunks(), pa.string())
        tables[name] = (raw, rows.column("id").to_numpy().astype(np.int64))
    return tables


def mapped_schema(with_value: bool) -> T.StructType:
    """Rows of `map_user_events`: the lifelong columns (`pipeline.lifelong`) plus the user's
    OOV event counts (`oov_item`, `oov_category`, `oov_behavior`)."""
    fields = [T.StructField("user_id", T.StringType())]
    fields += [T.StructField(n, T.ArrayType(T.LongType())) for n in (*VOCAB_NAMES, "ts")]
    if with_value:
        fields.append(T.StructField(VALUE_MEMBER, T.ArrayType(T.FloatType())))
    fields += [T.StructField(n, T.LongType()) for n in ("n_events", "truncated")]
    fields += [T.StructField(f"oov_{n}", T.LongType()) for n in VOCAB_NAMES]
    return T.StructType(fields)


def _ids(raw: pa.Array, table: tuple[pa.Array, np.ndarray]) -> np.ndarray:
    """Vocab ids of raw ids (OOV for unknown and null ones)."""
    raw_ids, ids = table
    if ids.size == 0:  # an empty vocab (e.g. no categories in the input)
        return np.full(len(raw), OOV_ID, dtype=np.int64)
    positions = pc.fill_null(pc.index_in(pc.cast(raw, pa.string()), value_set=raw_ids), -1)
    positions = positions.to_numpy(zero_copy_only=False)
    return np.where(positions >= 0, ids[np.maximum(positions, 0)], OOV_ID).astype(np.int64)


def _list(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def make_mapper(tables: Broadcast, max_history: int | None, with_value: bool):
    """The `mapInArrow` function of `map_user_events`."""

    def map_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        lookups = tables.value
        for batch in batches:
            if batch.num_rows == 0:
                continue
            ev = batch.column(batch.schema.get_field_index("ev"))
            offsets = ev.offsets.to_numpy().astype(np.int64)
            flat = ev.values
            lengths = np.diff(offsets)
            row_of = np.repeat(np.arange(lengths.size), lengths)
            columns: dict[str, np.ndarray] = {}
            oov: dict[str, np.ndarray] = {}
            for name in VOCAB_NAMES:
                raw = flat.field(SOURCE_COLUMN[name])
                columns[name] = _ids(raw, lookups[name])
                unknown = (columns[name] == OOV_ID) & ~np.asarray(
                    raw.is_null().to_numpy(zero_copy_only=False), dtype=bool
                )
                oov[name] = np.bincount(row_of, weights=unknown, minlength=lengths.size)
            columns["ts"] = flat.field("ts").to_numpy(zero_copy_only=False).astype(np.int64)
            kept_lengths = lengths if max_history is None else np.minimum(lengths, max_history)
            position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
            keep = position >= np.repeat(lengths - kept_lengths, lengths)
            new_offsets = np.concatenate([[0], np.cumsum(kept_lengths)])
            out = {"user_id": batch.column(batch.schema.get_field_index("user_id"))}
            for name, values in columns.items():
                out[name] = _list(new_offsets, pa.array(values[keep], pa.int64()))
            if with_value:  # nulls stay null
                value = pc.cast(flat.field(VALUE_MEMBER), pa.float32())
                out[VALUE_MEMBER] = _list(new_offsets, value.take(pa.array(np.flatnonzero(keep))))
            out["n_events"] = pa.array(lengths, pa.int64())
            out["truncated"] = pa.array(lengths - kept_lengths, pa.int64())
            for name in VOCAB_NAMES:
                out[f"oov_{name}"] = pa.array(oov[name].astype(np.int64), pa.int64())
            yield pa.RecordBatch.from_pydict(out)

    return map_partition


def map_user_events(
    users: DataFrame, tables: Broadcast, max_history: int | None, with_value: bool
) -> DataFrame:
    """Lifelong rows from `group_user_events`' rows: vocab ids looked up in the broadcast
    `lookup_tables`, the last `max_history` events kept (None: all), plus OOV counts
    (`mapped_schema`). No shuffle."""
    return users.mapInArrow(make_mapper(tables, max_history, with_value), mapped_schema(with_value))
