"""Readers of raw event logs into one raw string-typed Spark DataFrame.

Every reader returns the columns `raw_user_id, raw_item_id, raw_category_id, raw_behavior,
raw_ts, raw_value` (strings, null where the input has no such column), `_corrupt` (the raw line
of a record the parser could not read, CSV/JSON only), `_file` (source file URI) and `_row`
(Spark's monotonically increasing id: increasing with the row's position inside its file).
Parsing and validation happen later (`pipeline.validate`), so a malformed value is quarantined
with a reason instead of failing the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lifeseq.pipeline.config import EVENT_FIELDS, REQUIRED_EVENT_FIELDS, InputConfig
from lifeseq.pipeline.preflight import BuildInputError

RAW_COLUMNS = tuple(f"raw_{name}" for name in EVENT_FIELDS)
CORRUPT = "_corrupt"


@dataclass(frozen=True)
class _Layout:
    """Fixed layout of a headerless/known format."""

    names: tuple[str, ...] | None
    sep: str
    header: bool
    defaults: dict[str, str | None]
    default_behavior: str | None = None


#: MovieLens-style ratings: the rating is the event value, every row is a `rating` behavior.
_RATINGS_COLUMNS: dict[str, str | None] = {
    "user_id": "user_id",
    "item_id": "item_id",
    "category_id": None,
    "behavior": None,
    "ts": "timestamp",
    "value": "rating",
}

_LAYOUTS: dict[str, _Layout] = {
    "movielens_udata": _Layout(
        names=("user_id", "item_id", "rating", "timestamp"),
        sep="\t",
        header=False,
        defaults=_RATINGS_COLUMNS,
        default_behavior="rating",
    ),
    "movielens_dat": _Layout(
        names=("user_id", "item_id", "rating", "timestamp"),
        sep="::",
        header=False,
        defaults=_RATINGS_COLUMNS,
        default_behavior="rating",
    ),
    "recbole_inter": _Layout(
        names=None,
        sep="\t",
        header=True,
        defaults=_RATINGS_COLUMNS,
        default_behavior="rating",
    ),
    "taobao": _Layout(
        names=("user_id", "item_id", "category_id", "behavior", "ts"),
        sep=",",
        header=False,
        defaults={
            "user_id": "user_id",
            "item_id": "item_id",
            "category_id": "category_id",
            "behavior": "behavior",
            "ts": "ts",
            "value": None,
        },
    ),
}


def column_mapping(cfg: InputConfig) -> dict[str, str | None]:
    """Event field → source column (None: absent), format defaults overlaid by `cfg.columns`.

    An optional field (`category_id`, `behavior`, `value`) whose default column is missing from
    the input is treated as absent by `read_raw_events`; a column named explicitly in
    `cfg.columns` must exist.
    """
    layout = _LAYOUTS.get(cfg.format)
    base: dict[str, str | None] = dict(layout.defaults) if layout else {f: f for f in EVENT_FIELDS}
    base.update(cfg.columns)
    return base


def default_behavior(cfg: InputConfig) -> str | None:
    """Behavior given to rows of an input without a behavior column."""
    if cfg.default_behavior is not None:
        return cfg.default_behavior
    layout = _LAYOUTS.get(cfg.format)
    return layout.default_behavior if layout else None


def _header_line(spark: SparkSession, paths: list[str]) -> str | None:
    first = spark.read.text(paths).where(F.trim("value") != "").limit(1).collect()
    return first[0]["value"] if first else None


def _split_fields(line: str, sep: str) -> list[str]:
    return [field.strip().strip('"') for field in line.split(sep)]


def _read_delimited(
    spark: SparkSession, paths: list[str], sep: str, header_line: str | None, names: list[str]
) -> DataFrame:
    """Read delimited text lines as string columns; a line with the wrong field count is corrupt.

    Spark's CSV reader silently pads short lines and drops extra fields, so lines are read as
    text, parsed with `from_csv`, and their fields counted outside quoted sections. A corrupt
    line keeps its raw text in `_corrupt`. Blank lines are skipped; when `header_line` is given,
    lines equal to it (each file's header) are skipped.
    """
    lines = spark.read.text(paths).select("value", F.col("_metadata.file_path").alias("_file"))
    lines = lines.where(F.trim("value") != "")
    if header_line is not None:
        lines = lines.where(F.col("value") != F.lit(header_line))
    ddl = ", ".join(f"`{n}` STRING" for n in names)
    parsed = F.from_csv(F.col("value"), ddl, {"sep": sep, "mode": "PERMISSIVE"})
    unquoted = F.regexp_replace("value", r'"(?:[^"]|"")*"', "")
    field_count = F.size(F.split(unquoted, re.escape(sep), -1))
    df = lines.select(
        parsed.alias("_parsed"),
        F.when(field_count != len(names), F.col("value")).alias(CORRUPT),
        "_file",
    )
    return df.select(*[F.col(f"_parsed.`{n}`").alias(n) for n in names], CORRUPT, "_file")


class RawEvents(NamedTuple):
    """Raw events and the resolved column mapping (event field → source column or None)."""

    df: DataFrame
    columns: dict[str, str | None]


def read_raw_events(spark: SparkSession, paths: list[str], cfg: InputConfig) -> RawEvents:
    """Read raw events in `cfg.format` from `paths` (files, directories or globs).

    Raises:
        BuildInputError: a mapped source column is missing from the input, naming it and the
            columns that exist (a `ValueError`).
    """
    mapping = column_mapping(cfg)
    fmt = cfg.format
    if fmt == "parquet":
        df = spark.read.parquet(*paths)
        df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
    elif fmt == "jsonl":
        wanted = sorted({c for c in mapping.values() if c})
        schema = T.StructType(
            [T.StructField(c, T.StringType()) for c in wanted]
            + [T.StructField(CORRUPT, T.StringType())]
        )
        df = (
            spark.read.schema(schema)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .json(paths)
        )
    elif fmt == "csv":
        first = _header_line(spark, paths) or ""
        if cfg.csv_header:
            names = _split_fields(first, cfg.csv_delimiter)
        else:  # Spark's convention: _c0, _c1, ... (map them in input.columns)
            names = [f"_c{i}" for i in range(len(_split_fields(first, cfg.csv_delimiter)))]
        header = first if cfg.csv_header else None
        df = _read_delimited(spark, paths, cfg.csv_delimiter, header, names)
    else:
        layout = _LAYOUTS[fmt]
        header = _header_line(spark, paths) if layout.header else None
        if layout.names is None:
            names = [h.split(":", 1)[0] for h in _split_fields(header or "", layout.sep)]
        else:
            names = list(layout.names)
        df = _read_delimited(spark, paths, layout.sep, header, names)

    available = set(df.columns)
    absent = {f for f, c in mapping.items() if c and (c not in available or c == "_file")}
    optional_defaults = absent - set(cfg.columns) - set(REQUIRED_EVENT_FIELDS)
    mapping.update(dict.fromkeys(optional_defaults))  # optional and not asked for: no such column
    missing = {f: mapping[f] for f in sorted(absent - optional_defaults)}
    if missing:
        raise BuildInputError(
            f"input.columns: source column(s) {missing} not found in the {fmt} input "
            f"{' '.join(paths)}; available columns: {sorted(available - {CORRUPT, '_file'})}; "
            "map the event fields to them in input.columns"
        )
    selected = []
    for name in EVENT_FIELDS:
        source = mapping.get(name)
        if source is None:
            selected.append(F.lit(None).cast("string").alias(f"raw_{name}"))
            continue
        column = df[source]
        if isinstance(
            df.schema[source].dataType, T.TimestampType | T.TimestampNTZType | T.DateType
        ):
            column = F.unix_timestamp(column.cast("timestamp")).cast("string")
        selected.append(column.cast("string").alias(f"raw_{name}"))
    file_column = F.col("_file") if "_file" in available else F.col("_metadata.file_path")
    selected += [
        F.col(CORRUPT),
        file_column.alias("_file"),
        F.monotonically_increasing_id().alias("_row"),
    ]
    return RawEvents(df.select(*selected), mapping)
