"""The lifelong build job: raw events → quarantine, vocab, lifelong table, shards, manifest.

Stages (one Spark session, nothing but metadata collected on the driver):

0. preflight (`pipeline.preflight`, no Spark): OUT is writable, every input exists and looks like
   `input.format`; then the first scan finds what only Spark can (missing columns, corrupt
   files). Either refuses with one line naming the path or key, before OUT is touched.
1. read + validate: every row gets a `reason` or none; bad rows → `OUT/quarantine/` (Parquet);
   the job stops before writing anything else if their fraction passes `max_bad_fraction`.
2. group the events by user (one shuffle), dropping exact duplicates (first occurrence in input
   order wins) and putting each history in user order (`pipeline.user_events`); count them.
3. vocab (`OUT/vocab/{item,category,behavior}/`), or reuse an earlier run's (`vocab_from`), or
   extend the base's (`base`, `pipeline.increment`).
4. lifelong table (`OUT/lifelong/`): one row per user, user order, `max_history` cap; ids
   looked up in place (no shuffle) when the vocabs are small enough to broadcast. An increment
   merges the base's histories with the new events here.
5. targets + shards (`OUT/shards/shard-NNNNNN.tar`, format v2: one sample per user with the
   history once and the targets of every split), written by executors, committed atomically;
   `OUT/manifest.json` last.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from lifeseq.pipeline import storage
from lifeseq.pipeline.build_report import collect_report_stats, write_build_report
from lifeseq.pipeline.config import PipelineConfig
from lifeseq.pipeline.increment import (
    base_record,
    extend_all_vocabs,
    extend_lifelong,
    uncount_duplicates,
)
from lifeseq.pipeline.lifelong import build_lifelong, index_files
from lifeseq.pipeline.manifest import build_manifest, input_fingerprint
from lifeseq.pipeline.preflight import (
    BuildInputError,
    OutputState,
    Preflight,
    display_path,
    output_state,
    preflight,
    spark_errors_named,
)
from lifeseq.pipeline.readers import read_raw_events
from lifeseq.pipeline.sample_codec import SCHEMA_VERSION, SPLITS, VALUE_MEMBER, RecordLayout
from lifeseq.pipeline.shard_writer import SHARD_SUFFIX
from lifeseq.pipeline.shards import ShardJob, commit_shards, write_shards
from lifeseq.pipeline.targets import TargetSpec
from lifeseq.pipeline.user_events import (
    BROADCAST_MAX_IDS,
    explode_user_events,
    group_user_events,
    lookup_tables,
    map_user_events,
)
from lifeseq.pipeline.validate import REASONS, quarantine_view, tag_reasons, valid_events
from lifeseq.pipeline.vocab import OOV_ID, VOCAB_NAMES, apply_vocabs, build_all_vocabs, read_vocabs

log = logging.getLogger(__name__)
_EXAMPLES_PER_REASON = 3


class BadInputError(ValueError):
    """Too much of the input failed validation; the message lists counts and example rows."""


@dataclass
class BuildResult:
    """What a build produced: the manifest (as written) and stage timings in seconds."""

    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _bad_input_message(
    counts: dict[str, int],
    events_in: int,
    limit: float,
    examples: dict[str, list[dict]],
    quarantine_dir: str,
) -> str:
    bad = sum(counts.values())
    lines = [
        f"{bad} of {events_in} input rows ({bad / max(events_in, 1):.2%}) failed validation, "
        f"more than validation.max_bad_fraction = {limit:.2%}.",
        "Counts per reason:",
    ]
    for reason in REASONS:
        if counts.get(reason):
            lines.append(f"  {reason}: {counts[reason]}")
            for row in examples.get(reason, []):
                lines.append(f"    e.g. {row}")
    lines.append(
        f"All bad rows are in {quarantine_dir} (Parquet, with a `reason` column). Fix the input, "
        "the column mapping (input.columns) or the timestamp range (input.ts_min/ts_max), "
        "or raise validation.max_bad_fraction."
    )
    return "\n".join(lines)


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless `overwrite`, in which case empty it.

    Raises:
        FileExistsError: `output` is not empty and `overwrite` is False.
    """
    if storage.is_nonempty_dir(output):
        if not overwrite:
            raise FileExistsError(
                f"output directory {output} is not empty; pass --overwrite to replace it"
            )
        storage.delete_dir(output)
    storage.make_dirs(output)


@contextmanager
def _removed_on_failure(state: OutputState) -> Iterator[None]:
    """Remove what the build wrote to OUT if the block fails, so no partial output is left.

    An OUT that did not exist is removed again, with any parent directories the build created;
    an OUT that existed is left empty (it was empty, or `--overwrite` had emptied it). A
    `BadInputError` keeps its quarantine: its message sends the user there.
    """
    try:
        yield
    except BadInputError:
        raise
    except Exception:
        fs, path = storage.resolve(state.uri)
        try:
            if state.existed:
                fs.delete_dir_contents(path, missing_dir_ok=True)
            elif state.created_root is not None:
                fs.delete_dir(state.created_root)
            log.info("build failed: removed what it wrote to %s", state.uri)
        except OSError as err:  # keep the build's own error, not the clean-up's
            log.warning("build failed, and removing its partial output %s failed: %s", path, err)
        raise


def _unparsable_input(tagged: DataFrame, events_in: int, cfg: PipelineConfig) -> BuildInputError:
    """The error for an input none of whose rows parse: most likely the wrong `input.format`."""
    files = [
        display_path(r["_file"])
        for r in tagged.select("_file").distinct().orderBy("_file").limit(3).collect()
    ]
    fmt = cfg.input.format
    keys = "input.format and input.csv_delimiter" if fmt == "csv" else "input.format"
    return BuildInputError(
        f"none of the {events_in} input rows could be parsed as {fmt} "
        f"(files: {', '.join(files)}); check {keys}"
    )


def _target_spec(
    cfg: PipelineConfig, behavior_ids: dict[str, int], has_impressions: bool
) -> TargetSpec:
    t = cfg.targets
    mode = t.negatives
    if mode == "auto":
        mode = "impressions" if (t.impression_behavior and has_impressions) else "sampled"
    imp_id = behavior_ids.get(t.impression_behavior) if t.impression_behavior else None
    return TargetSpec(
        split=t.split,
        valid_start=t.valid_start,
        test_start=t.test_start,
        positive_behavior_ids=tuple(
            sorted(behavior_ids[b] for b in t.positive_behaviors if b in behavior_ids)
        ),
        impression_behavior_id=imp_id,
        negative_mode=mode,  # type: ignore[arg-type]
        negatives_per_positive=t.negatives_per_positive,
        min_history=t.min_history,
        max_targets_per_user=t.max_targets_per_user,
        seed=t.seed,
    )


def run_build(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: list[str],
    output: str,
    overwrite: bool = False,
    vocab_from: str | None = None,
    checked: Preflight | None = None,
    base: str | None = None,
) -> BuildResult:
    """Run the whole build; see the module docstring.

    Every input the build cannot use is refused before OUT is touched; if a later stage fails,
    what this run wrote to OUT is removed again (see `_removed_on_failure`).

    Args:
        checked: the result of `preflight` for these arguments, when the caller already ran it
            (the CLI does, before starting Spark); None runs it here.

    Raises:
        FileExistsError: non-empty `output` without `overwrite`.
        BuildInputError: a missing or empty input, a file that is not `input.format` or is
            corrupt, a mapped column that is missing, an output that cannot be written, input
            that cannot be parsed at all; naming the path or key. Nothing was written.
        BadInputError: bad fraction above the limit (after the quarantine was written).
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if checked is None:
        checked = preflight(cfg, inputs, output, overwrite, vocab_from, base)
    base_manifest = checked.base_manifest if base is not None else None

    # 1. read + validate: reads only, so a bad input fails here, before OUT is touched
    with spark_errors_named(inputs, cfg.input.format):
        raw = read_raw_events(spark, inputs, cfg.input)
        tagged = tag_reasons(raw.df, cfg.input, cfg.behaviors)
        # One scan counts rows per reason and lists the files holding valid rows (the dedupe
        # stage's tie-break index), so the input is not scanned again just for its file names.
        reason_rows = tagged.groupBy("reason", "_file").count().collect()
        events_in = sum(r["count"] for r in reason_rows)
        quarantined: dict[str, int] = {}
        for r in reason_rows:
            if r["reason"] is not None:
                quarantined[r["reason"]] = quarantined.get(r["reason"], 0) + r["count"]
        valid_files = sorted({r["_file"] for r in reason_rows if r["reason"] is None})
        if events_in == 0:
            raise BuildInputError(
                f"input {' '.join(inputs)} has no rows; check --input and input.format"
            )
        if quarantined.get("malformed_record", 0) == events_in:
            raise _unparsable_input(tagged, events_in, cfg)
        with_value = raw.columns.get("value") is not None
        if base_manifest is not None:
            _check_value_column(base, base_manifest, with_value)
    state = output_state(output)  # just before writing: what a failure must restore
    prepare_output(output, overwrite)
    with _removed_on_failure(state):
        quarantine_dir = storage.join(output, "quarantine")
        bad_rows = quarantine_view(tagged)
        if not quarantined:  # an empty table with the same schema, without another input scan
            bad_rows = spark.createDataFrame([], bad_rows.schema)
        bad_rows.write.mode("overwrite").parquet(quarantine_dir)
        bad = sum(quarantined.values())
        if bad / events_in > cfg.validation.max_bad_fraction:
            examples = {}
            q = spark.read.parquet(quarantine_dir)
            for reason in quarantined:
                rows = q.where(F.col("reason") == reason).limit(_EXAMPLES_PER_REASON).collect()
                examples[reason] = [
                    {k: v for k, v in r.asDict().items() if v is not None} for r in rows
                ]
            raise BadInputError(
                _bad_input_message(
                    quarantined,
                    events_in,
                    cfg.validation.max_bad_fraction,
                    examples,
                    quarantine_dir,
                )
            )
        timings["validate"] = time.perf_counter() - started
        log.info("[1/6] validate: %s rows read, %s quarantined (%.1f s)", f"{events_in:,}",
                 f"{bad:,}", timings["validate"])  # fmt: skip

        # 2. dedupe
        t0 = time.perf_counter()
        valid = valid_events(tagged)
        # One shuffle by user drops the duplicates and orders each history (`user_events`).
        # Checkpointed as Parquet: nothing has to stay cached in the (small, in local mode
        # shared) heap.
        # A row holds a user's whole history: few rows per columnar batch and per Arrow batch.
        spark.conf.set("spark.sql.parquet.columnarReaderBatchSize", "64")
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        users_dir = storage.join(output, "_tmp", "users")
        group_user_events(index_files(valid, valid_files)).write.mode("overwrite").parquet(
            users_dir
        )
        users = spark.read.parquet(users_dir)
        events_valid = int(users.agg(F.sum(F.size("ev"))).first()[0] or 0)
        deduped = explode_user_events(users)
        duplicates = (events_in - bad) - events_valid
        timings["dedupe"] = time.perf_counter() - t0
        log.info("[2/6] dedupe: %s valid events, %s duplicates dropped (%.1f s)",
                 f"{events_valid:,}", f"{duplicates:,}", timings["dedupe"])  # fmt: skip

        # 3. vocab
        t0 = time.perf_counter()
        vocab_dir = storage.join(output, "vocab")
        if vocab_from:
            vocabs = read_vocabs(spark, storage.join(vocab_from, "vocab"))
        elif base is not None:
            base_vocabs = read_vocabs(spark, storage.join(base, "vocab"))
            vocabs = extend_all_vocabs(base_vocabs, deduped, cfg.vocab.min_count)
        else:
            vocabs = build_all_vocabs(deduped, cfg.vocab.min_count)
        for name, table in vocabs.items():
            table.orderBy("id").coalesce(1).write.mode("overwrite").parquet(
                storage.join(vocab_dir, name)
            )
        vocabs = {name: spark.read.parquet(storage.join(vocab_dir, name)) for name in vocabs}
        vocab_sizes = {
            name: int(table.agg(F.max("id")).first()[0] or OOV_ID) + 1
            for name, table in vocabs.items()
        }
        behavior_ids = {r["raw_id"]: int(r["id"]) for r in vocabs["behavior"].collect()}
        item_rows = vocabs["item"].select("id", "count", "category_id").toPandas()
        timings["vocab"] = time.perf_counter() - t0
        log.info("[3/6] vocab: %s (%.1f s)",
                 ", ".join(f"{k} {v:,}" for k, v in vocab_sizes.items()), timings["vocab"])  # fmt: skip

        # 4. lifelong table
        t0 = time.perf_counter()
        lifelong_dir = storage.join(output, "lifelong")
        # An increment caps after merging with the base's histories.
        cap = cfg.lifelong.max_history if base is None else None
        rows, oov_counts = _user_rows(users, deduped, vocabs, vocab_sizes, cap, with_value)
        increment: dict[str, int] = {}
        if base is None:
            rows.write.mode("overwrite").parquet(lifelong_dir)
            lifelong = spark.read.parquet(lifelong_dir)
            shard_users = lifelong
        else:
            merged = _extend_base(spark, base, rows, cfg.lifelong.max_history, with_value, output)
            lifelong = spark.read.parquet(lifelong_dir)
            row = merged.agg(
                F.sum("duplicates").alias("duplicates"),
                F.sum(F.array_contains("is_new", True).cast("long")).alias("users_updated"),
            ).first()
            increment = {k: int(row[k] or 0) for k in ("duplicates", "users_updated")}
            if increment["duplicates"]:
                vocabs = _recount_vocabs(vocabs, merged, output)
                item_rows = vocabs["item"].select("id", "count", "category_id").toPandas()
            shard_users = merged.where(F.array_contains("is_new", True)).select(
                *lifelong.columns, "is_new"
            )
        oov = oov_counts()
        user_row = lifelong.agg(
            F.count(F.lit(1)).alias("users"),
            F.sum("truncated").alias("truncated"),
            F.max("n_events").alias("max_events"),
        ).first()
        timings["lifelong"] = time.perf_counter() - t0
        log.info("[4/6] lifelong: %s users, longest history %s events (%.1f s)",
                 f"{int(user_row['users']):,}", f"{int(user_row['max_events'] or 0):,}",
                 timings["lifelong"])  # fmt: skip

        # the report's aggregates, while OUT/_tmp (the deduplicated events) still exists;
        # the pictures are drawn once the manifest is known
        t0 = time.perf_counter()
        report_stats = collect_report_stats(deduped, lifelong)
        timings["report"] = time.perf_counter() - t0

        # 5. targets + shards
        t0 = time.perf_counter()
        has_impressions = bool(
            cfg.targets.impression_behavior and cfg.targets.impression_behavior in behavior_ids
        )
        spec = _target_spec(cfg, behavior_ids, has_impressions)
        sampler_bc = None
        if spec.negative_mode == "sampled" and spec.negatives_per_positive > 0:
            size = vocab_sizes["item"]
            counts = np.zeros(size, dtype=np.int64)
            categories = np.full(size, OOV_ID, dtype=np.int64)
            ids = item_rows["id"].to_numpy(dtype=np.int64)
            counts[ids] = item_rows["count"].to_numpy(dtype=np.int64)
            categories[ids] = item_rows["category_id"].to_numpy(dtype=np.int64)
            sampler_bc = spark.sparkContext.broadcast((counts, categories))
        shard_cfg = cfg.shards
        partitions = shard_cfg.partitions or max(
            1, math.ceil(events_valid / shard_cfg.events_per_partition)
        )
        layout = RecordLayout.for_build(
            vocab_sizes,
            cfg.lifelong.max_history,
            cfg.input.ts_max - cfg.input.ts_min,
            with_value,
        )
        job = ShardJob(
            tmp_dir=storage.join(output, "_tmp", "shards"),
            spec=spec,
            layout=layout,
            max_samples=shard_cfg.max_samples,
            max_bytes=shard_cfg.max_bytes,
            sampling=cfg.targets.negative_sampling,
            alpha=cfg.targets.popularity_alpha,
            compression=shard_cfg.compression,
        )
        rows = write_shards(shard_users, job, partitions, sampler_bc)
        listing = commit_shards(
            output, [r for r in rows if r["kind"] == "shard"], SHARD_SUFFIX[shard_cfg.compression]
        )
        stats = [r for r in rows if r["kind"] == "stats"]
        if sampler_bc is not None:
            sampler_bc.unpersist()
        timings["shards"] = time.perf_counter() - t0
        log.info("[5/6] shards: %d files (%.1f s)", len(listing), timings["shards"])

        timings["total"] = time.perf_counter() - started

        counts = {
            "events_in": int(events_in),
            "events_valid": int(events_valid - increment.get("duplicates", 0)),
            "duplicates": int(duplicates + increment.get("duplicates", 0)),
            "quarantined": {reason: int(quarantined.get(reason, 0)) for reason in REASONS},
            "truncated": int(user_row["truncated"] or 0),
            "oov": oov,
            "negatives_short": int(sum(r["negatives_short"] for r in stats)),
            "users_without_targets": int(sum(r["users_without_targets"] for r in stats)),
        }
        manifest = build_manifest(
            cfg=cfg,
            inputs=inputs,
            fingerprint=input_fingerprint(inputs),
            counts=counts,
            users=int(user_row["users"]),
            max_user_events=int(user_row["max_events"] or 0),
            vocab_sizes=vocab_sizes,
            negative_mode=spec.negative_mode,
            listing=listing,
            partitions=partitions,
            timings=timings,
            schema_version=SCHEMA_VERSION,
            layout=layout,
            vocab_from=vocab_from,
            base=None if base is None else base_record(base, base_manifest),
        )
        if base is not None:
            manifest["counts"]["duplicates_of_base"] = increment["duplicates"]
            manifest["users_updated"] = increment["users_updated"]
        t0 = time.perf_counter()
        report = write_build_report(output, manifest, report_stats)
        log.info("[6/6] report: %s (%.1f s)", report, timings["report"] + time.perf_counter() - t0)
        storage.write_json_atomic(storage.join(output, "manifest.json"), manifest)
        log.info("build finished in %.1f s: %s", timings["total"], output)
        return BuildResult(manifest=manifest, timings=timings)


#: `build_lifelong`'s cap for an increment's new events (capped after merging with the base).
_UNCAPPED = 2**31 - 1


def _user_rows(
    users: DataFrame,
    deduped: DataFrame,
    vocabs: dict[str, DataFrame],
    vocab_sizes: dict[str, int],
    cap: int | None,
    with_value: bool,
) -> tuple[DataFrame, Callable[[], dict[str, int]]]:
    """Lifelong rows (`pipeline.lifelong` columns, the last `cap` events; None: all) of the
    grouped users, and a function giving the OOV event counts once the rows have been written.

    Vocabs up to `BROADCAST_MAX_IDS` rows are looked up in place (`map_user_events`, no
    shuffle); larger ones are joined with the events, which are then grouped by user again.
    """
    if sum(vocab_sizes.values()) <= BROADCAST_MAX_IDS:
        tables = users.sparkSession.sparkContext.broadcast(lookup_tables(vocabs))
        observation = Observation("oov")
        sums = [F.sum(f"oov_{name}").alias(name) for name in VOCAB_NAMES]
        rows = map_user_events(users, tables, cap, with_value).observe(observation, *sums)

        def observed() -> dict[str, int]:
            return {name: int(observation.get[name] or 0) for name in VOCAB_NAMES}

        return rows.drop(*(f"oov_{name}" for name in VOCAB_NAMES)), observed
    mapped = apply_vocabs(deduped, vocabs)
    oov_row = mapped.agg(
        F.sum((F.col("item") == OOV_ID).cast("long")).alias("item"),
        F.sum(
            ((F.col("category") == OOV_ID) & F.col("raw_category").isNotNull()).cast("long")
        ).alias("category"),
        F.sum((F.col("behavior") == OOV_ID).cast("long")).alias("behavior"),
    ).first()
    counts = {k: int(oov_row[k] or 0) for k in VOCAB_NAMES}
    return build_lifelong(mapped, cap or _UNCAPPED, with_value), lambda: counts


def _extend_base(
    spark: SparkSession,
    base: str,
    rows: DataFrame,
    max_history: int,
    with_value: bool,
    output: str,
) -> DataFrame:
    """Write `OUT/lifelong` as the base's extended by the new events' lifelong `rows`; return
    the merged rows (`pipeline.increment.merged_schema`), checkpointed under `OUT/_tmp/merged`."""
    merged_dir = storage.join(output, "_tmp", "merged")
    base_lifelong = spark.read.parquet(storage.join(base, "lifelong"))
    extend_lifelong(base_lifelong, rows, max_history, with_value).write.mode("overwrite").parquet(
        merged_dir
    )
    merged = spark.read.parquet(merged_dir)
    merged.select(*base_lifelong.columns).write.mode("overwrite").parquet(
        storage.join(output, "lifelong")
    )
    return merged


def _recount_vocabs(
    vocabs: dict[str, DataFrame], merged: DataFrame, output: str
) -> dict[str, DataFrame]:
    """Rewrite `OUT/vocab/*` with the new events found to repeat base events taken off the
    counts; returns the rewritten tables."""
    spark = merged.sparkSession
    fixed = {}
    for name, table in vocabs.items():
        staging = storage.join(output, "_tmp", "vocab", name)
        uncount_duplicates(table, merged, name).orderBy("id").coalesce(1).write.mode(
            "overwrite"
        ).parquet(staging)
        final = storage.join(output, "vocab", name)
        storage.delete_dir(final)
        storage.move(staging, final)
        fixed[name] = spark.read.parquet(final)
    return fixed


def _check_value_column(base: str, base_manifest: dict, with_value: bool) -> None:
    """Refuse new events with a `value` column over a base without one, or the reverse."""
    if with_value != (VALUE_MEMBER in (base_manifest.get("members") or {})):
        has = "has" if with_value else "has no"
        raise BuildInputError(
            f"--base {base}: the new input {has} a value column but the base "
            f"{'does not' if with_value else 'does'}; map input.columns.value the same way in both"
        )


__all__ = [
    "BadInputError",
    "BuildInputError",
    "BuildResult",
    "prepare_output",
    "run_build",
    "SPLITS",
]
