"""`OUT/manifest.json`: what a build read, counted and wrote, and the summary table printed after it.

The manifest is written last; an output directory without it is an incomplete build.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline import storage
from pipeline.config import PipelineConfig
from pipeline.sample_codec import HISTORY_MEMBERS, SPLITS, TARGET_MEMBERS, VALUE_MEMBER


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
    listing: dict[str, list[dict]],
    partitions: int,
    timings: dict[str, float],
    schema_version: int,
    with_value: bool,
    vocab_from: str | None,
) -> dict[str, Any]:
    """Assemble the manifest dict (see README, "manifest.json")."""
    splits = {}
    for split in SPLITS:
        shards = listing.get(split, [])
        splits[split] = {
            "samples": sum(s["samples"] for s in shards),
            "targets": sum(s["targets"] for s in shards),
            "positives": sum(s["positives"] for s in shards),
            "negatives": sum(s["negatives"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shards],
        }
    members = {name: str(dtype) for name, dtype in {**HISTORY_MEMBERS, **TARGET_MEMBERS}.items()}
    if with_value:
        members[VALUE_MEMBER] = "float32"
    return {
        "schema_version": schema_version,
        "config": cfg.to_dict(),
        "input": {"paths": list(inputs), "fingerprint": fingerprint},
        "counts": counts,
        "users": users,
        "max_user_events": max_user_events,
        "vocab": vocab_sizes,
        "vocab_from": vocab_from,
        "negatives": negative_mode,
        "members": members,
        "splits": splits,
        "partitions": partitions,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


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
                f"({info['positives']:,} pos / {info['negatives']:,} neg), "
                f"{len(info['shards'])} shards, {_human_bytes(info['bytes'])}",
            )
        )
    rows.append(("time", f"{manifest['timings_s'].get('total', 0.0):.1f} s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | value", f"|{'-' * (width + 2)}|------"]
    lines += [f"| {k:<{width}} | {v}" for k, v in rows]
    return "\n".join(lines)
