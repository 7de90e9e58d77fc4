"""Shard stage: lifelong table → WebDataset shards of user records, written in parallel by
executors.

Each Spark partition (users hash-partitioned and sorted by user id) streams its users through
`build_user_record` (an incremental build's rows carry `is_new`: only targets of new events) and writes `OUT/_tmp/shards/part-PPPPP-NNNNNN.tar`: one sample per user with
targets, holding the history once and the targets of every split (format v2). Only shard
metadata (names, sizes, sha256, per-split counts) returns to the driver, which then commits:
renames the files to `shard-NNNNNN.tar` in partition order inside a staging directory and moves
that directory to `OUT/shards` in one rename, so a killed job leaves no `shards/` that looks
complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from pyspark import Broadcast
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lifeseq.pipeline import storage
from lifeseq.pipeline.sample_codec import VALUE_MEMBER, RecordLayout
from lifeseq.pipeline.shard_writer import ShardWriter
from lifeseq.pipeline.targets import NegativeSampler, TargetSpec, build_user_record

RESULT_SCHEMA = T.StructType(
    [
        T.StructField("kind", T.StringType()),
        T.StructField("part", T.IntegerType()),
        T.StructField("index", T.IntegerType()),
        T.StructField("path", T.StringType()),
        T.StructField("samples", T.LongType()),
        T.StructField("bytes", T.LongType()),
        T.StructField("sha256", T.StringType()),
        T.StructField("splits", T.StringType()),
        T.StructField("users", T.LongType()),
        T.StructField("users_without_targets", T.LongType()),
        T.StructField("negatives_short", T.LongType()),
    ]
)


@dataclass(frozen=True)
class ShardJob:
    """Everything an executor needs to write its partition's shards."""

    tmp_dir: str
    spec: TargetSpec
    layout: RecordLayout
    max_samples: int
    max_bytes: int
    sampling: str
    alpha: float
    compression: str = "none"


def _list_column(
    batch: pa.RecordBatch, name: str, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, zero-copy where possible."""
    column = batch.column(batch.schema.get_field_index(name))
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values, offsets


def _result_row(kind: str, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {f.name: None for f in RESULT_SCHEMA.fields}
    row["kind"] = kind
    row.update(fields)
    return row


def make_partition_writer(job: ShardJob, sampler_arrays: Broadcast | None):
    """Return the `mapInArrow` function that writes one partition's shards."""

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        sampler = None
        if sampler_arrays is not None:
            counts, categories = sampler_arrays.value
            sampler = NegativeSampler(counts, categories, job.sampling, job.alpha)
        writer = ShardWriter(
            job.tmp_dir,
            f"part-{part:05d}",
            job.max_samples,
            job.max_bytes,
            job.layout,
            job.compression,
        )
        users = without = short = 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            names = batch.schema.names
            user_ids = batch.column(names.index("user_id")).to_pylist()
            arrays = {
                name: _list_column(batch, name, np.int64)
                for name in ("item", "category", "behavior", "ts")
            }
            if VALUE_MEMBER in names:
                arrays[VALUE_MEMBER] = _list_column(batch, VALUE_MEMBER, np.float32)
            is_new = _list_column(batch, "is_new", np.bool_) if "is_new" in names else None
            for row, user in enumerate(user_ids):
                events = {
                    name: values[offsets[row] : offsets[row + 1]]
                    for name, (values, offsets) in arrays.items()
                }
                new = None if is_new is None else is_new[0][is_new[1][row] : is_new[1][row + 1]]
                record, stats = build_user_record(user, events, job.spec, sampler, new)
                key = f"p{part:05d}-{users:09d}"
                users += 1
                short += stats.negatives_short
                if record is None:
                    without += 1
                else:
                    writer.write(key, record)
        rows = []
        for index, info in enumerate(writer.close()):
            splits = {split: asdict(counts) for split, counts in info.splits.items()}
            rows.append(
                _result_row(
                    "shard",
                    part=part,
                    index=index,
                    path=info.path,
                    samples=info.samples,
                    bytes=info.bytes,
                    sha256=info.sha256,
                    splits=json.dumps(splits, sort_keys=True),
                )
            )
        rows.append(
            _result_row(
                "stats",
                part=part,
                users=users,
                users_without_targets=without,
                negatives_short=short,
            )
        )
        yield pa.RecordBatch.from_pylist(rows, schema=_ARROW_RESULT_SCHEMA)

    return write_partition


_ARROW_RESULT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("part", pa.int32()),
        ("index", pa.int32()),
        ("path", pa.string()),
        ("samples", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("splits", pa.string()),
        ("users", pa.int64()),
        ("users_without_targets", pa.int64()),
        ("negatives_short", pa.int64()),
    ]
)


def write_shards(
    lifelong: DataFrame, job: ShardJob, partitions: int, sampler_arrays: Broadcast | None
) -> list[dict]:
    """Run the shard stage; return the metadata rows (`kind` shard or stats) on the driver."""
    ordered = lifelong.repartition(partitions, "user_id").sortWithinPartitions("user_id")
    result = ordered.mapInArrow(make_partition_writer(job, sampler_arrays), RESULT_SCHEMA)
    return [row.asDict() for row in result.collect()]


def commit_shards(out_dir: str, shard_rows: list[dict], suffix: str = ".tar") -> list[dict]:
    """Rename temporary shards to `shard-NNNNNN{suffix}` and publish `OUT/shards` atomically.

    Returns:
        In shard order: `{name, samples, bytes, sha256, splits}`, `splits` mapping each split
        to its `{samples, targets, positives, negatives}` in that shard.
    """
    staging = storage.join(out_dir, "_tmp", "commit")
    storage.delete_dir(staging)
    storage.make_dirs(staging)
    fs, _ = storage.resolve(out_dir)
    listing = []
    rows = sorted(shard_rows, key=lambda r: (r["part"], r["index"]))
    for number, row in enumerate(rows):
        name = f"shard-{number:06d}{suffix}"
        fs.move(row["path"], storage.resolve(storage.join(staging, name))[1])
        listing.append(
            {
                "name": name,
                "samples": row["samples"],
                "bytes": row["bytes"],
                "sha256": row["sha256"],
                "splits": json.loads(row["splits"]),
            }
        )
    final = storage.join(out_dir, "shards")
    storage.delete_dir(final)
    storage.move(staging, final)
    storage.delete_dir(storage.join(out_dir, "_tmp"))
    return listing
