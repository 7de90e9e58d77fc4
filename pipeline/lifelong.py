"""The lifelong behavior table (one row per user, events in user order), by joins and a shuffle:
the path for vocabs too large to broadcast (`pipeline.user_events` maps ids in place otherwise).

User order: by `ts`, ties by input order (source file path, then row position in that file),
which is deterministic across re-runs. The table keeps at most `max_history` most recent events
per user; `truncated` says how many older ones were dropped.

Columns: `user_id` (string), `item`, `category`, `behavior`, `ts` (array<long>), `value`
(array<float>, present when the input has values), `n_events` (events before truncation) and
`truncated` (long).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def index_files(events: DataFrame, files: list[str]) -> DataFrame:
    """Replace the `_file` URI by its index in the sorted list `files` (`_file_idx`, int).

    Keeps the tie-break compact in shuffles (an int instead of a path per event).
    """
    pairs = []
    for idx, name in enumerate(sorted(files)):
        pairs += [F.lit(name), F.lit(idx)]
    mapping = F.create_map(*pairs) if pairs else F.create_map()
    return events.withColumn(
        "_file_idx", F.try_element_at(mapping, F.col("_file")).cast("int")
    ).drop("_file")


def build_lifelong(events: DataFrame, max_history: int, with_value: bool) -> DataFrame:
    """Group id-mapped events by user into time-ordered arrays, keeping the last `max_history`.

    Args:
        events: rows with `user_id, item, category, behavior, ts, value, _file_idx, _row`.
        max_history: most recent events kept per user.
        with_value: include the `value` array.
    """
    fields = ["ts", "_file_idx", "_row", "item", "category", "behavior"]
    if with_value:
        fields.append(F.col("value").cast("float").alias("value"))
    grouped = events.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct(*fields))).alias("ev")
    )
    n = F.size("ev")
    start = F.greatest(n - F.lit(max_history), F.lit(0))
    kept = grouped.select(
        "user_id",
        n.cast("long").alias("n_events"),
        start.cast("long").alias("truncated"),
        F.slice("ev", start + 1, F.lit(max_history)).alias("ev"),
    )
    columns = [F.col(f"ev.{name}").alias(name) for name in ("item", "category", "behavior", "ts")]
    if with_value:
        columns.append(F.col("ev.value").alias("value"))
    return kept.select("user_id", *columns, "n_events", "truncated")
