"""`OUT/report/`: what a build made, as pictures: history lengths, events per day, quarantine
reasons, targets per split, and a short `summary.md` linking them.

The numbers come from two small Spark aggregations (`collect_report_stats`: a histogram of
history lengths on log-spaced bins, a count of events per UTC day) and from the manifest; only
these aggregates reach the driver, so the report costs one pass over the build's events, not a
copy of them. Drawing happens on the driver with matplotlib (Agg).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lifeseq.pipeline import storage
from lifeseq.pipeline.manifest import summary_table

#: Bins per decade of the history-length histogram.
BINS_PER_DECADE = 10
SECONDS_PER_DAY = 86_400
REPORT_DIR = "report"
PICTURES = {
    "history_length.png": "History length per user (events, log scale)",
    "events_per_day.png": "Valid events per day",
    "quarantine.png": "Quarantined rows per reason",
    "targets_per_split.png": "Targets per split",
}


@dataclass(frozen=True)
class ReportStats:
    """The aggregates behind the pictures.

    Attributes:
        history_bins: (lower edge, users) per non-empty log-spaced bin of `n_events`.
        events_per_day: (UTC day as epoch days, events) per day with events.
    """

    history_bins: list[tuple[float, int]]
    events_per_day: list[tuple[int, int]]


def collect_report_stats(events: DataFrame, lifelong: DataFrame) -> ReportStats:
    """Histogram of history lengths (`lifelong.n_events`) and events per day (`events.ts`).

    Args:
        events: the build's valid, deduplicated events (a `ts` column in epoch seconds).
        lifelong: the lifelong table (one row per user with `n_events`).
    """
    bin_index = F.floor(F.log10(F.greatest(F.col("n_events"), F.lit(1))) * BINS_PER_DECADE)
    history = lifelong.groupBy(bin_index.alias("bin")).count().orderBy("bin").collect()
    days = (
        events.groupBy(F.floor(F.col("ts") / SECONDS_PER_DAY).alias("day"))
        .count()
        .orderBy("day")
        .collect()
    )
    return ReportStats(
        history_bins=[(10 ** (int(r["bin"]) / BINS_PER_DECADE), int(r["count"])) for r in history],
        events_per_day=[(int(r["day"]), int(r["count"])) for r in days],
    )


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def draw_pictures(manifest: dict[str, Any], stats: ReportStats) -> dict[str, bytes]:
    """The four report PNGs (file name → bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if stats.history_bins:
        edges = [low for low, _ in stats.history_bins]
        widths = [low * (10 ** (1 / BINS_PER_DECADE) - 1) for low in edges]
        ax.bar(edges, [n for _, n in stats.history_bins], width=widths, align="edge")
        ax.set_xscale("log")
    ax.set_xlabel("events per user (before truncation)")
    ax.set_ylabel("users")
    ax.set_title(f"{PICTURES['history_length.png']}: {manifest['users']:,} users")
    pictures["history_length.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if stats.events_per_day:
        import datetime as dt

        days = [dt.date(1970, 1, 1) + dt.timedelta(days=d) for d, _ in stats.events_per_day]
        ax.plot(days, [n for _, n in stats.events_per_day], lw=1.2)
        fig.autofmt_xdate()
    ax.set_ylabel("events")
    ax.set_title(PICTURES["events_per_day.png"] + " (UTC)")
    pictures["events_per_day.png"] = _png(fig)
    plt.close(fig)

    quarantined = manifest["counts"]["quarantined"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    reasons = list(quarantined)
    bars = ax.barh(reasons, [quarantined[r] for r in reasons], color="tab:red")
    ax.bar_label(bars, labels=[f"{quarantined[r]:,}" for r in reasons], padding=3, fontsize=8)
    ax.set_xlim(0, max(1, *quarantined.values()) * 1.15)
    ax.set_xlabel("rows")
    total = sum(quarantined.values())
    events_in = manifest["counts"]["events_in"]
    share = total / events_in if events_in else 0.0
    ax.set_title(f"{PICTURES['quarantine.png']}: {total:,} of {events_in:,} ({share:.2%})")
    pictures["quarantine.png"] = _png(fig)
    plt.close(fig)

    splits = manifest["splits"]
    names = list(splits)
    positives = [splits[s]["positives"] for s in names]
    negatives = [splits[s]["negatives"] for s in names]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(names, positives, label="positive")
    ax.bar(names, negatives, bottom=positives, label="negative")
    for x, split in enumerate(names):
        ax.annotate(f"{splits[split]['samples']:,} users", (x, positives[x] + negatives[x]),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_ylabel("targets")
    ax.set_title(PICTURES["targets_per_split.png"])
    ax.legend()
    pictures["targets_per_split.png"] = _png(fig)
    plt.close(fig)
    return pictures


def summary_markdown(manifest: dict[str, Any], stats: ReportStats) -> str:
    """`summary.md`: the build's summary table, the history-length quantiles and the pictures."""
    lines = ["# Build report", "", "```", summary_table(manifest), "```", ""]
    total = sum(n for _, n in stats.history_bins)
    if total:
        marks, seen, cuts = [], 0, {0.5: "median", 0.9: "p90", 0.99: "p99"}
        for low, n in stats.history_bins:
            seen += n
            for q in [q for q in cuts if seen >= q * total]:
                marks.append(f"{cuts.pop(q)} ≈ {math.ceil(low):,}")
        lines += [f"History length (events per user, bin lower edges): {', '.join(marks)}; "
                  f"longest {manifest['max_user_events']:,}.", ""]  # fmt: skip
    if stats.events_per_day:
        busiest = max(stats.events_per_day, key=lambda d: d[1])
        lines += [f"{len(stats.events_per_day):,} days with events; busiest day holds "
                  f"{busiest[1]:,} events.", ""]  # fmt: skip
    for name, title in PICTURES.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def write_build_report(output: str, manifest: dict[str, Any], stats: ReportStats) -> str:
    """Write `OUT/report/` (four PNGs and `summary.md`); its URI."""
    report = storage.join(output, REPORT_DIR)
    storage.make_dirs(report)
    for name, data in draw_pictures(manifest, stats).items():
        storage.write_bytes_atomic(storage.join(report, name), data)
    text = summary_markdown(manifest, stats)
    storage.write_bytes_atomic(storage.join(report, "summary.md"), text.encode())
    return report
