"""`OUT/manifest.json`: what a build read, counted and wrote, and the summary table printed after it.

The manifest is written last; an output directory without it is an incomplete build.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lifeseq.pipeline import storage
from lifeseq.pipeline.config import PipelineConfig
from lifeseq.pipeline.sample_codec import SPLITS, RecordLayout


def input_fingerprint(inputs: list[str]) -> dict[str, Any]:
    """Fingerprint of the input files: sha256 over sorted (path, size, mtime_ns), plus totals.

    Cheap on any filesystem (metadata only); changes when a file is added, removed, resized or
    rewritten.
    """
    entries = []
    for uri in inputs:
        for f in storage.expand_files(uri):
            if f.base_name.startswith((".", "_")):
                continue
            entries.append((f.path, f.size, f.mtime_ns))
    entries.sort()
    digest = hashlib.sha256(json.dumps(entries).encode("utf-8")).hexdigest()
    return {"files": len(entries), "bytes": sum(e[1] or 0 for e in entries), "sha256": digest}


def build_manifest(
    *,
    cfg: PipelineConfig,
    inputs: list[str],
    fingerprint: dict[str, Any],
    counts: dict[str, Any],
    users: int,
    max_user_events: int,
    vocab_sizes: dict[str, int],
    negative_mode: str,
    listing: list[dict],
    partitions: int,
    timings: dict[str, float],
    schema_version: int,
    layout: RecordLayout,
    vocab_from: str | None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the manifest dict (see README, "manifest.json").

    `shards` lists every shard file (users, bytes, sha256, per-split counts); `splits.{split}`
    sums a split's counts and lists the shards holding users of it with that split's sample
    count, which is what a loader of that split plans its epoch with.
    """
    return {
        "schema_version": schema_version,
        "config": cfg.to_dict(),
        "input": {"paths": list(inputs), "fingerprint": fingerprint},
        "counts": counts,
        "users": users,
        "max_user_events": max_user_events,
        "vocab": vocab_sizes,
        "vocab_from": vocab_from,
        "base": base,
        "negatives": negative_mode,
        "members": layout.members(),
        "shards": listing,
        "shard_bytes": sum(s["bytes"] for s in listing),
        "splits": split_listing(listing),
        "partitions": partitions,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def split_listing(listing: list[dict]) -> dict[str, dict[str, Any]]:
    """Per split: its summed counts and `shards`, the `{name, samples, bytes}` of every shard
    holding at least one user of the split (`samples` = that split's users in the shard)."""
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        counts = [(s, s["splits"][split]) for s in listing if s["splits"][split]["samples"]]
        splits[split] = {
            key: sum(c[key] for _, c in counts)
            for key in ("samples", "targets", "positives", "negatives")
        }
        splits[split]["shards"] = [
            {"name": s["name"], "samples": c["samples"], "bytes": s["bytes"]} for s, c in counts
        ]
    return splits


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def summary_table(manifest: dict[str, Any]) -> str:
    """A readable summary of a build: events in/valid/bad, users, shards, bytes, time."""
    c = manifest["counts"]
    bad = sum(c["quarantined"].values())
    rows = [
        ("events in", f"{c['events_in']:,}"),
        ("events valid", f"{c['events_valid']:,}"),
        (
            "quarantined",
            f"{bad:,}"
            + (
                " (" + ", ".join(f"{k} {v:,}" for k, v in c["quarantined"].items() if v) + ")"
                if bad
                else ""
            ),
        ),
        ("duplicates dropped", f"{c['duplicates']:,}"),
        ("events truncated", f"{c['truncated']:,}"),
        ("OOV events", ", ".join(f"{k} {v:,}" for k, v in c["oov"].items())),
        ("users", f"{manifest['users']:,}"),
        ("vocab sizes", ", ".join(f"{k} {v:,}" for k, v in manifest["vocab"].items())),
        ("negatives", manifest["negatives"]),
    ]
    for split, info in manifest["splits"].items():
        rows.append(
            (
                f"{split} split",
                f"{info['samples']:,} users, {info['targets']:,} targets "
                f"({info['positives']:,} pos / {info['negatives']:,} neg) "
                f"in {len(info['shards'])} shards",
            )
        )
    rows.append(
        (
            "shards",
            f"{len(manifest['shards'])} files, {_human_bytes(manifest['shard_bytes'])} "
            f"(format v{manifest['schema_version']}, one sample per user)",
        )
    )
    if manifest.get("base"):
        rows.append(
            (
                "base",
                f"{manifest['base']['path']} ({manifest.get('users_updated', 0):,} users "
                f"extended, {c.get('duplicates_of_base', 0):,} events already in the base)",
            )
        )
    rows.append(("time", f"{manifest['timings_s'].get('total', 0.0):.1f} s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | value", f"|{'-' * (width + 2)}|------"]
    lines += [f"| {k:<{width}} | {v}" for k, v in rows]
    return "\n".join(lines)
