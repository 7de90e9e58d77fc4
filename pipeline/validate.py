"""Validation of raw events: parse, tag each bad row with one `reason`, never drop silently.

Reasons, checked in this order (a row gets the first that applies):

| reason | rule |
|---|---|
| `malformed_record` | the CSV/JSON parser could not read the line |
| `null_user_id` | user id missing or blank |
| `null_item_id` | item id missing or blank |
| `bad_ts` | timestamp missing or neither a number nor an ISO date-time |
| `ts_out_of_range` | timestamp outside `[input.ts_min, input.ts_max)` |
| `unknown_behavior` | behavior (after `behaviors.mapping`) not in `behaviors.known`, or missing |
| `bad_value` | value present but not a finite number |

A missing category is not an error: it becomes the unknown category (id 1).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lifeseq.pipeline.config import BehaviorConfig, InputConfig
from lifeseq.pipeline.readers import CORRUPT, default_behavior

REASONS = (
    "malformed_record",
    "null_user_id",
    "null_item_id",
    "bad_ts",
    "ts_out_of_range",
    "unknown_behavior",
    "bad_value",
)
_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"


def _blank_to_null(column: Column) -> Column:
    trimmed = F.trim(column)
    return F.when(trimmed == "", F.lit(None)).otherwise(trimmed)


def _parse_ts(raw: Column) -> Column:
    """Epoch seconds from a numeric string (floored) or an ISO date-time string; null if neither."""
    numeric = F.expr("try_cast(floor(try_cast(ts_text AS DOUBLE)) AS BIGINT)")
    iso = F.unix_timestamp(F.expr("try_to_timestamp(ts_text)")).cast("long")
    return F.when(raw.rlike(_NUMBER), numeric).otherwise(iso)


def _map_behavior(raw: Column, cfg: BehaviorConfig) -> Column:
    if not cfg.mapping:
        return raw
    pairs = []
    for key, value in sorted(cfg.mapping.items()):
        pairs += [F.lit(key), F.lit(value)]
    return F.coalesce(F.try_element_at(F.create_map(*pairs), raw), raw)


def tag_reasons(raw: DataFrame, input_cfg: InputConfig, behavior_cfg: BehaviorConfig) -> DataFrame:
    """Parse raw events and add a `reason` column (null for valid rows).

    Returns:
        `raw` plus parsed columns `user_id, item_id, category_id, behavior` (strings),
        `ts` (long), `value` (double) and `reason`.
    """
    fallback = default_behavior(input_cfg)
    behavior_raw = _blank_to_null(F.col("raw_behavior"))
    if fallback is not None:
        behavior_raw = F.coalesce(behavior_raw, F.lit(fallback))
    value_text = _blank_to_null(F.col("raw_value"))
    df = (
        raw.withColumn("user_id", _blank_to_null(F.col("raw_user_id")))
        .withColumn("item_id", _blank_to_null(F.col("raw_item_id")))
        .withColumn("category_id", _blank_to_null(F.col("raw_category_id")))
        .withColumn("behavior", _map_behavior(behavior_raw, behavior_cfg))
        .withColumn("ts_text", F.trim(F.col("raw_ts")))
        .withColumn("ts", _parse_ts(F.col("ts_text")))
        .withColumn("value_text", value_text)
        .withColumn("value", F.expr("try_cast(value_text AS DOUBLE)"))
    )
    known = list(behavior_cfg.known)
    value_bad = F.col("value_text").isNotNull() & (
        F.col("value").isNull() | F.isnan("value") | (F.abs(F.col("value")) == float("inf"))
    )
    reason = (
        F.when(F.col(CORRUPT).isNotNull(), F.lit("malformed_record"))
        .when(F.col("user_id").isNull(), F.lit("null_user_id"))
        .when(F.col("item_id").isNull(), F.lit("null_item_id"))
        .when(F.col("ts").isNull(), F.lit("bad_ts"))
        .when(
            (F.col("ts") < F.lit(input_cfg.ts_min)) | (F.col("ts") >= F.lit(input_cfg.ts_max)),
            F.lit("ts_out_of_range"),
        )
        .when(
            F.col("behavior").isNull() | ~F.col("behavior").isin(known),
            F.lit("unknown_behavior"),
        )
        .when(value_bad, F.lit("bad_value"))
    )
    return df.withColumn("reason", reason).drop("ts_text", "value_text")


def quarantine_view(tagged: DataFrame) -> DataFrame:
    """Bad rows with their original (raw, string) columns, the source file and the reason."""
    raw_cols = [
        F.col(f"raw_{n}").alias(n)
        for n in ("user_id", "item_id", "category_id", "behavior", "ts", "value")
    ]
    return tagged.where(F.col("reason").isNotNull()).select(
        *raw_cols,
        F.col(CORRUPT).alias("raw_record"),
        F.col("_file").alias("source_file"),
        "reason",
    )


def valid_events(tagged: DataFrame) -> DataFrame:
    """Valid rows, parsed: `user_id, item_id, category_id, behavior, ts, value, _file, _row`."""
    return tagged.where(F.col("reason").isNull()).select(
        "user_id", "item_id", "category_id", "behavior", "ts", "value", "_file", "_row"
    )
