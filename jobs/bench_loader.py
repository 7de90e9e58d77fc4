"""Loader benchmark: decoded batches per worker vs the raw tar + `np.load` limit.

For histories of 200 and 10,000 events it writes shards with the pipeline's `ShardWriter`
(~64 MB per size, synthetic users with 20 targets each), then times, in one process (= one
DataLoader worker):

* **tar**: stream every tar with `tarfile` and read each member's bytes: the I/O floor;
* **raw**: stream every tar with `tarfile` and `np.load` every `.npy` member (plus `meta.json`):
  the decode limit — no grouping, validation or batching (our reader parses each distinct
  `.npy` header once, so it can beat this);
* **ctr** / **generative**: `LifeseqDataset.iter_worker(0)` (safe tar reading, grouping, sample
  checks, shuffle buffer, collate into `CtrBatch` / `GenerativeBatch` with no cap).

Files are read from the page cache (just written), so this measures decode CPU cost, not disk.
Each figure is the median of `--repeats` runs. Prints a Markdown table; `--out FILE.json`
writes the numbers with the machine, versions and commit.

    python -m lifeseq.jobs.bench_loader [--out bench_out/loader.json] [--repeats 3] [--mb 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifeseq.features.dataset import LifeseqDataset, ShardSpec
from lifeseq.jobs.bench_report import git_commit, write_json
from lifeseq.pipeline.sample_codec import RecordLayout, UserRecord, encode_record, npy_load
from lifeseq.pipeline.shard_writer import ShardWriter, encoded_sample_size

HISTORY_LENGTHS = (200, 10_000)
TARGETS_PER_USER = 20
#: Users per batch per history length (~same bytes per batch).
BATCH_SIZE = {200: 64, 10_000: 4}


#: Stored dtypes of the synthetic users: ids of a 10^6-item, 5,000-category catalog.
LAYOUT = RecordLayout.for_build(
    {"item": 1_000_000, "category": 5000, "behavior": 6},
    max_history=max(HISTORY_LENGTHS),
    ts_span=100_000_000,
    with_value=True,
)


def make_user(rng: np.random.Generator, user: int, length: int) -> UserRecord:
    """A synthetic user with `length` events and `TARGETS_PER_USER` train targets spread over
    it (all in one split, so the history each split reads is the whole stored one)."""
    ts = np.sort(rng.integers(1_600_000_000, 1_700_000_000, size=length)).astype(np.int64)
    hist_len = np.sort(rng.integers(1, length + 1, size=TARGETS_PER_USER)).astype(np.int64)
    hist_len[-1] = length
    history = {
        "item": rng.integers(2, 1_000_000, size=length).astype(np.int64),
        "category": rng.integers(2, 5000, size=length).astype(np.int64),
        "behavior": rng.integers(2, 6, size=length).astype(np.int64),
        "ts": ts,
        "value": rng.random(length, dtype=np.float32),
    }
    targets = {
        "target_item": rng.integers(2, 1_000_000, size=TARGETS_PER_USER).astype(np.int64),
        "target_category": rng.integers(2, 5000, size=TARGETS_PER_USER).astype(np.int64),
        "target_ts": ts[hist_len - 1] + 1,
        "target_label": (rng.random(TARGETS_PER_USER) < 0.5).astype(np.float32),
        "target_hist_len": hist_len,
        "target_split": np.zeros(TARGETS_PER_USER, dtype=np.int64),
    }
    return UserRecord(user=f"u{user}", history=history, targets=targets)


def write_shards(directory: Path, length: int, total_mb: int) -> list[ShardSpec]:
    """~`total_mb` MB of users with `length` events, in 8 shards."""
    rng = np.random.default_rng(length)
    probe = encoded_sample_size(encode_record(make_user(rng, 0, length), LAYOUT))
    users = max(16, total_mb * 2**20 // probe)
    per_shard = -(-users // 8)
    directory.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(str(directory), f"h{length}", per_shard, 1 << 40, LAYOUT)
    for user in range(users):
        writer.write(f"s{user:07d}", make_user(rng, user, length))
    return [ShardSpec(info.path, info.samples, info.bytes) for info in writer.close()]


def read_members(shards: list[ShardSpec], decode: bool) -> int:
    """Stream each tar and read every member's bytes; with `decode`, also `np.load` each `.npy`
    and parse `meta.json` (the decode limit), else nothing more (the I/O floor). Returns the
    members read."""
    members = 0
    for spec in shards:
        with open(spec.url, "rb", buffering=1 << 20) as handle:
            with tarfile.open(fileobj=handle, mode="r|") as tar:
                for member in tar:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    if decode and member.name.endswith(".npy"):
                        npy_load(data)
                    elif decode:
                        json.loads(data)
                    members += 1
    return members


def read_loader(shards: list[ShardSpec], view: str, batch_size: int) -> int:
    """One worker of `LifeseqDataset` (no cap); returns the users decoded."""
    dataset = LifeseqDataset(
        shards,
        view=view,
        batch_size=batch_size,
        max_history=100_000,
        max_len=100_000,
        shuffle=True,
        shuffle_buffer=2 * batch_size,
        seed=0,
        strict=True,
        rank=0,
        world_size=1,
        num_workers=0,
        with_value=True,
        split="train",
    )
    return sum(batch.num_users for batch in dataset.iter_worker(0))


def timed(fn: Any, repeats: int) -> float:
    """Median wall seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_length(length: int, workdir: Path, total_mb: int, repeats: int) -> dict[str, Any]:
    """Throughputs of raw / ctr / generative reading for one history length."""
    shards = write_shards(workdir / f"h{length}", length, total_mb)
    users = sum(s.samples for s in shards)
    mb = sum(s.bytes for s in shards) / 2**20
    read_members(shards, decode=False)  # warm the page cache
    result: dict[str, Any] = {"users": users, "shard_mb": round(mb, 1), "shards": len(shards)}
    for name, fn in (
        ("tar", lambda: read_members(shards, decode=False)),
        ("raw", lambda: read_members(shards, decode=True)),
        ("ctr", lambda: read_loader(shards, "ctr", BATCH_SIZE[length])),
        ("generative", lambda: read_loader(shards, "generative", BATCH_SIZE[length])),
    ):
        seconds = timed(fn, repeats)
        result[name] = {
            "seconds": round(seconds, 4),
            "samples_per_s": round(users / seconds, 1),
            "mb_per_s": round(mb / seconds, 1),
        }
    for view in ("tar", "ctr", "generative"):
        result[view]["fraction_of_raw"] = round(
            result[view]["samples_per_s"] / result["raw"]["samples_per_s"], 3
        )
    for view in ("ctr", "generative"):
        result[view]["fraction_of_tar"] = round(
            result[view]["samples_per_s"] / result["tar"]["samples_per_s"], 3
        )
    return result


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """Results as a Markdown table."""
    lines = [
        "| history | users | shard MB | reader | samples/s | MB/s | vs raw | vs tar |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for length, r in results.items():
        for reader in ("tar", "raw", "ctr", "generative"):
            x = r[reader]
            ratio = "1.00 (limit)" if reader == "raw" else f"{x['fraction_of_raw']:.2f}"
            floor = f"{x['fraction_of_tar']:.2f}" if "fraction_of_tar" in x else ""
            lines.append(
                f"| {int(length):,} | {r['users']:,} | {r['shard_mb']} | {reader} | "
                f"{x['samples_per_s']:,.0f} | {x['mb_per_s']:,.1f} | {ratio} | {floor} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m lifeseq.jobs.bench_loader`)."""
    parser = argparse.ArgumentParser(
        prog="lifeseq bench loader", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mb", type=int, default=64, help="shard MB per history length")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--workdir", default=None, help="shard directory (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write JSON results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        results = {}
        for length in HISTORY_LENGTHS:
            print(f"history {length:,}: writing ~{args.mb} MB of shards, timing ...", flush=True)
            results[str(length)] = bench_length(length, workdir, args.mb, args.repeats)
    print(markdown(results))
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.1f} s (one process = one DataLoader worker; page-cache reads)")
    if args.out:
        payload = {
            **results,
            "meta": {
                "commit": git_commit(),
                "machine": platform.machine(),
                "processor": platform.processor(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
                "config": {
                    "mb": args.mb,
                    "repeats": args.repeats,
                    "targets_per_user": TARGETS_PER_USER,
                    "batch_size": BATCH_SIZE,
                },
                "seconds": round(elapsed, 1),
            },
        }
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
