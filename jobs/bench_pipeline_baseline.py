"""Single-process reference of the lifelong build (pandas + pyarrow), for the pipeline benchmark.

The straightforward way to do what `lifeseq build` does, on one machine and in one process:
read every Parquet file into memory, validate, drop exact duplicates, build the vocabs, sort by
(user, ts, file, row), write the lifelong table, and write shards with the same per-user target
code and shard writer as the Spark job. Parquet input with event-schema column names only.

    python -m lifeseq.jobs.bench_pipeline_baseline --config configs/pipeline/synthetic.yaml \
        --input DIR --output OUT
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lifeseq.pipeline.config import PipelineConfig, load_config
from lifeseq.pipeline.sample_codec import SPLITS, VALUE_MEMBER, RecordLayout
from lifeseq.pipeline.shard_writer import ShardWriter
from lifeseq.pipeline.targets import NegativeSampler, TargetSpec, build_user_record

KEY = ["user_id", "item_id", "category_id", "behavior", "ts", "value"]


def _read(input_dir: str) -> pd.DataFrame:
    files = sorted(glob.glob(os.path.join(input_dir, "*.parquet")))
    if not files:
        raise FileNotFoundError(f"no *.parquet files in {input_dir}")
    frames = []
    for index, path in enumerate(files):
        frame = pq.read_table(path).to_pandas()
        frame["_file"] = index
        frame["_row"] = np.arange(len(frame), dtype=np.int64)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _vocab(values: pd.Series, min_count: int) -> pd.DataFrame:
    counts = values.dropna().value_counts().rename_axis("raw_id").reset_index(name="count")
    counts = counts[counts["count"] >= min_count]
    counts = counts.sort_values(["count", "raw_id"], ascending=[False, True], kind="stable")
    counts["id"] = np.arange(2, len(counts) + 2, dtype=np.int64)
    return counts.reset_index(drop=True)


def _list_column(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def run_baseline(cfg: PipelineConfig, input_dir: str, output: str) -> dict:
    """Run the single-process build; returns counts and per-stage seconds."""
    timings = {}
    t0 = time.perf_counter()
    df = _read(input_dir)
    events_in = len(df)
    for column in ("user_id", "item_id", "category_id"):
        if column in df:
            df[column] = df[column].astype("string")
    if "behavior" in df:
        df["behavior"] = df["behavior"].map(lambda b: cfg.behaviors.mapping.get(b, b) if b else b)
    ts_ok = df["ts"].between(cfg.input.ts_min, cfg.input.ts_max - 1)
    reason = np.select(
        [
            df["user_id"].isna(),
            df["item_id"].isna(),
            df["ts"].isna(),
            ~ts_ok,
            ~df["behavior"].isin(cfg.behaviors.known),
        ],
        ["null_user_id", "null_item_id", "bad_ts", "ts_out_of_range", "unknown_behavior"],
        default="",
    )
    bad = df[reason != ""].assign(reason=reason[reason != ""])
    os.makedirs(output, exist_ok=True)
    bad.astype({c: "string" for c in KEY if c in bad}).to_parquet(
        os.path.join(output, "quarantine.parquet")
    )
    good = df[reason == ""]
    good = good.drop_duplicates(subset=[c for c in KEY if c in good], keep="first")
    timings["validate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vocabs = {
        "item": _vocab(good["item_id"], cfg.vocab.min_count),
        "category": _vocab(good["category_id"], cfg.vocab.min_count),
        "behavior": _vocab(good["behavior"], 1),
    }
    ids = {}
    for name, column in (
        ("item", "item_id"),
        ("category", "category_id"),
        ("behavior", "behavior"),
    ):
        mapping = pd.Series(vocabs[name]["id"].to_numpy(), index=vocabs[name]["raw_id"].to_numpy())
        ids[name] = good[column].map(mapping).fillna(1).astype(np.int64).to_numpy()
    events = pd.DataFrame(
        {
            "user_id": good["user_id"].to_numpy(),
            "item": ids["item"],
            "category": ids["category"],
            "behavior": ids["behavior"],
            "ts": good["ts"].to_numpy(np.int64),
            "_file": good["_file"].to_numpy(),
            "_row": good["_row"].to_numpy(),
        }
    )
    with_value = "value" in good
    if with_value:
        events["value"] = good["value"].to_numpy(np.float32)
    for name, table in vocabs.items():
        table.to_parquet(os.path.join(output, f"vocab_{name}.parquet"))
    timings["vocab"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    events = events.sort_values(["user_id", "ts", "_file", "_row"], kind="stable")
    users, starts = np.unique(events["user_id"].to_numpy(), return_index=True)
    offsets = np.append(starts, len(events)).astype(np.int64)
    truncated = 0
    cap = cfg.lifelong.max_history
    lengths = np.diff(offsets)
    keep_from = offsets[:-1] + np.maximum(lengths - cap, 0)
    truncated = int(np.maximum(lengths - cap, 0).sum())
    keep = np.zeros(len(events), dtype=bool)
    for lo, hi in zip(keep_from, offsets[1:], strict=False):
        keep[lo:hi] = True
    kept = events[keep]
    kept_offsets = np.concatenate([[0], np.cumsum(np.minimum(lengths, cap))]).astype(np.int64)
    arrays = {name: kept[name].to_numpy() for name in ("item", "category", "behavior", "ts")}
    if with_value:
        arrays[VALUE_MEMBER] = kept["value"].to_numpy(np.float32)
    table = pa.table(
        {
            "user_id": pa.array(users.astype(str)),
            **{name: _list_column(v, kept_offsets) for name, v in arrays.items()},
        }
    )
    pq.write_table(table, os.path.join(output, "lifelong.parquet"))
    timings["lifelong"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    behavior_ids = dict(zip(vocabs["behavior"]["raw_id"], vocabs["behavior"]["id"], strict=False))
    t = cfg.targets
    spec = TargetSpec(
        split=t.split,
        valid_start=t.valid_start,
        test_start=t.test_start,
        positive_behavior_ids=tuple(
            sorted(int(behavior_ids[b]) for b in t.positive_behaviors if b in behavior_ids)
        ),
        impression_behavior_id=None,
        negative_mode="sampled" if t.negatives in ("auto", "sampled") else "none",
        negatives_per_positive=t.negatives_per_positive,
        min_history=t.min_history,
        max_targets_per_user=t.max_targets_per_user,
        seed=t.seed,
    )
    size = int(vocabs["item"]["id"].max()) + 1 if len(vocabs["item"]) else 2
    counts = np.zeros(size, np.int64)
    counts[vocabs["item"]["id"].to_numpy()] = vocabs["item"]["count"].to_numpy()
    item_cat = pd.DataFrame({"item": ids["item"], "category": ids["category"]})
    best = (
        item_cat.value_counts()
        .reset_index(name="n")
        .sort_values(["item", "n", "category"], ascending=[True, False, True])
        .drop_duplicates("item")
    )
    categories = np.ones(size, np.int64)
    categories[best["item"].to_numpy()] = best["category"].to_numpy()
    sampler = NegativeSampler(counts, categories, t.negative_sampling, t.popularity_alpha)
    vocab_sizes = {name: int(t["id"].max()) + 1 if len(t) else 2 for name, t in vocabs.items()}
    layout = RecordLayout.for_build(
        vocab_sizes, cfg.lifelong.max_history, cfg.input.ts_max - cfg.input.ts_min, with_value
    )
    writer = ShardWriter(
        os.path.join(output, "shards"),
        "shard",
        cfg.shards.max_samples,
        cfg.shards.max_bytes,
        layout,
    )
    totals = {"targets": 0, "positives": 0, "negatives": 0}
    for index, user in enumerate(users.astype(str)):
        lo, hi = kept_offsets[index], kept_offsets[index + 1]
        user_events = {name: v[lo:hi] for name, v in arrays.items()}
        record, stats = build_user_record(user, user_events, spec, sampler)
        if record is not None:
            writer.write(f"u{index:09d}", record)
        for split in SPLITS:
            totals["targets"] += stats.targets[split]
            totals["positives"] += stats.positives[split]
            totals["negatives"] += stats.negatives[split]
    shard_bytes = sum(info.bytes for info in writer.close())
    timings["shards"] = time.perf_counter() - t0
    return {
        "events_in": events_in,
        "events_valid": int(len(events)),
        "users": int(len(users)),
        "truncated": truncated,
        "shard_bytes": int(shard_bytes),
        **totals,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: run the baseline and print its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    result = run_baseline(load_config(args.config), args.input, args.output)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
