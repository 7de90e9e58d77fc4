"""Readers of raw event logs into one raw string-typed Spark DataFrame.

Every reader returns the columns `raw_user_id, raw_item_id, raw_category_id, raw_behavior,
raw_ts, raw_value` (strings, null where the input has no such column), `_corrupt` (the raw line
of a record the parser could not read, CSV/JSON only), `_file` (source file URI) and `_row`
(Spark's monotonically increasing id: increasing with the row's position inside its file).
Parsing and validation happen later (`pipeline.validate`), so a malformed value is quarantined
with a reason instead of failing the job.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import EVENT_FIELDS, InputConfig

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


_LAYOUTS: dict[str, _Layout] = {
    "movielens_udata": _Layout(
        names=("user_id", "item_id", "rating", "timestamp"),
        sep="\t",
        header=False,
        defaults={"user_id": "user_id", "item_id": "item_id", "category_id": None,
                  "behavior": None, "ts": "timestamp", "value": "rating"},
        default_behavior="rating",
    ),
    "movielens_dat": _Layout(
        names=("user_id", "item_id", "rating", "timestamp"),
        sep="::",
        header=False,
        defaults={"user_id": "user_id", "item_id": "item_id", "category_id": None,
                  "behavior": None, "ts": "timestamp", "value": "rating"},
        default_behavior="rating",
    ),
    "recbole_inter": _Layout(
        names=None,
        sep="\t",
        header=True,
        defaults={"user_id": "user_id", "item_id": "item_id", "category_id": None,
                  "behavior": None, "ts": "timestamp", "value": "rating"},
        default_behavior="rating",
    ),
    "taobao": _Layout(
        names=("user_id", "item_id", "category_id", "behavior", "ts"),
        sep=",",
        header=False,
        defaults={"user_id": "user_id", "item_id": "item_id", "category_id": "category_id",
                  "behavior": "behavior", "ts": "ts", "value": None},
    ),
}


def column_mapping(cfg: InputConfig) -> dict[str, str | None]:
    """Event field → source column (None: absent), format defaults overlaid by `cfg.columns`."""
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


def _csv_header_names(spark: SparkSession, paths: list[str], sep: str) -> list[str]:
    first = spark.read.option("sep", sep).option("header", "false").csv(paths).limit(1).collect()
    if not first:
        return []
    return [str(v) for v in first[0]]


def _read_delimited(
    spark: SparkSession, paths: list[str], sep: str, header: bool, names: list[str]
) -> DataFrame:
    schema = T.StructType(
        [T.StructField(n, T.StringType()) for n in names] + [T.StructField(CORRUPT, T.StringType())]
    )
    return (
        spark.read.schema(schema)
        .option("sep", sep)
        .option("header", str(header).lower())
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .option("enforceSchema", "true")
        .csv(paths)
    )


def read_raw_events(spark: SparkSession, paths: list[str], cfg: InputConfig) -> DataFrame:
    """Read raw events in `cfg.format` from `paths` (files, directories or globs).

    Raises:
        ValueError: a mapped source column is missing from the input, naming it and the
            columns that exist.
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
        names = (
            _csv_header_names(spark, paths, cfg.csv_delimiter)
            if cfg.csv_header
            else sorted({c for c in mapping.values() if c})
        )
        df = _read_delimited(spark, paths, cfg.csv_delimiter, cfg.csv_header, names)
    else:
        layout = _LAYOUTS[fmt]
        if layout.names is None:
            header = _csv_header_names(spark, paths, layout.sep)
            names = [h.split(":", 1)[0] for h in header]
        else:
            names = list(layout.names)
        df = _read_delimited(spark, paths, layout.sep, layout.header, names)

    available = set(df.columns)
    missing = {f: c for f, c in mapping.items() if c and c not in available}
    if missing:
        raise ValueError(
            f"input.columns: source column(s) {missing} not found in the {fmt} input "
            f"{paths}; available columns: {sorted(available - {CORRUPT})}"
        )
    selected = []
    for name in EVENT_FIELDS:
        source = mapping.get(name)
        if source is None:
            selected.append(F.lit(None).cast("string").alias(f"raw_{name}"))
            continue
        column = df[source]
        if isinstance(df.schema[source].dataType, T.TimestampType | T.TimestampNTZType | T.DateType):
            column = F.unix_timestamp(column.cast("timestamp")).cast("string")
        selected.append(column.cast("string").alias(f"raw_{name}"))
    selected += [
        F.col(CORRUPT),
        F.col("_metadata.file_path").alias("_file"),
        F.monotonically_increasing_id().alias("_row"),
    ]
    return df.select(*selected)
