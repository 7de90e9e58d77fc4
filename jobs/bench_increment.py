"""Incremental build benchmark: extending a build by a day costs what the day costs.

Synthetic events (`lifeseq synth`, seed fixed) are cut by time into a history of
`--history-events` and a newest period of `--new-events`. Each in a fresh process on embedded
`local[2]` Spark, with `configs/pipeline/synthetic.yaml`:

* **base**: `lifeseq build` of the history (what yesterday's job left);
* **increment**: `lifeseq build --base BASE --input NEW` (today's job);
* **full rebuild**: `lifeseq build` of history and new period together (what today's job would
  cost without `--base`).

Prints the wall time, stage times and peak RSS of each, the increment / full-rebuild ratio and
the targets each wrote; `--out FILE.json` writes the numbers, `--png FILE.png` a stage chart.

    python -m lifeseq.jobs.bench_increment [--history-events 16000000] [--new-events 1000000] \
        [--out bench_out/increment.json] [--png docs/increment.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from lifeseq.jobs.bench_pipeline import CONFIG, _synth, _timed
from lifeseq.jobs.bench_report import configs_error, git_commit, save_figure, write_json

STAGES = ("validate", "dedupe", "vocab", "lifelong", "shards")
RUNS = ("base", "increment", "full rebuild")


def split_by_time(events: Path, new_events: int, workdir: Path) -> tuple[Path, Path, int]:
    """Write the events before the time that leaves the newest `new_events` of them to
    `workdir/history`, the rest to `workdir/new`; returns both and the cut (epoch seconds)."""
    history, new = workdir / "history", workdir / "new"
    marker = workdir / "_split.json"
    if marker.exists():
        return history, new, int(json.loads(marker.read_text())["cut"])
    ts = np.sort(pq.read_table(events, columns=["ts"]).column("ts").to_numpy())
    cut = int(ts[ts.size - new_events])
    dataset = pads.dataset(str(events), format="parquet")
    for path, keep in ((history, pads.field("ts") < cut), (new, pads.field("ts") >= cut)):
        shutil.rmtree(path, ignore_errors=True)
        pads.write_dataset(dataset.filter(keep), str(path), format="parquet")
    marker.write_text(json.dumps({"cut": cut}))
    return history, new, cut


def run_build(name: str, inputs: list[Path], out: Path, workdir: Path, *extra: str) -> dict:
    """One `lifeseq build` in a fresh process: seconds, peak RSS, stage times, manifest counts."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "lifeseq.jobs.cli", "build", "--config", str(CONFIG), "--input",
               *map(str, inputs), "--output", str(out), *extra]  # fmt: skip
    seconds, rss, _ = _timed(command, workdir / f"{name.replace(' ', '_')}.log")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "seconds": round(seconds, 2),
        "stage_s": {k: manifest["timings_s"].get(k, 0.0) for k in STAGES},
        "peak_rss_mb": {k: round(v / 2**20) for k, v in rss.items()},
        "events_in": manifest["counts"]["events_in"],
        "users": manifest["users"],
        "users_updated": manifest.get("users_updated"),
        "targets": {s: manifest["splits"][s]["targets"] for s in manifest["splits"]},
    }


def markdown(results: dict[str, Any]) -> str:
    """The three runs as a Markdown table, then the ratio."""
    lines = [
        "| run | input events | wall s | "
        + " | ".join(STAGES)
        + " | targets written | JVM RSS MiB |",
        "|---|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|",
    ]
    for name in RUNS:
        r = results[name]
        stages = " | ".join(f"{r['stage_s'][k]:.1f}" for k in STAGES)
        lines.append(
            f"| {name} | {r['events_in']:,} | {r['seconds']:.1f} | {stages} | "
            f"{sum(r['targets'].values()):,} | {r['peak_rss_mb']['jvm']:,} |"
        )
    lines.append("")
    lines.append(
        f"increment / full rebuild: {results['ratio']:.2f} of the wall time "
        f"({results['increment']['users_updated']:,} of {results['increment']['users']:,} users "
        "extended)"
    )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    """Stacked stage seconds of the three runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    left = np.zeros(len(RUNS))
    for stage in STAGES:
        values = np.array([results[name]["stage_s"][stage] for name in RUNS])
        ax.barh(RUNS, values, left=left, label=stage)
        left += values
    ax.invert_yaxis()
    ax.set(xlabel="seconds (stages of the Spark job)",
           title=f"a day on top of a build: increment = {results['ratio']:.2f} × full rebuild")  # fmt: skip
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m lifeseq.jobs.bench_increment`)."""
    parser = argparse.ArgumentParser(
        prog="lifeseq bench increment", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--history-events", type=int, default=16_000_000)
    parser.add_argument("--new-events", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="bench_out/increment")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=None, help="write JSON results here")
    parser.add_argument("--png", default=None, help="write the stage chart here")
    args = parser.parse_args(argv)
    broken = configs_error([CONFIG])
    if broken:
        print(broken, file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    total = args.history_events + args.new_events
    events = _synth(total, args.seed, workdir / f"events-{total}")
    history, new, cut = split_by_time(events, args.new_events, workdir)
    results: dict[str, Any] = {"cut_ts": cut}
    results["base"] = run_build("base", [history], workdir / "out-base", workdir)
    results["increment"] = run_build(
        "increment", [new], workdir / "out-increment", workdir, "--base", str(workdir / "out-base")
    )
    results["full rebuild"] = run_build(
        "full rebuild", [history, new], workdir / "out-full", workdir
    )
    results["ratio"] = round(
        results["increment"]["seconds"] / results["full rebuild"]["seconds"], 3
    )
    print(markdown(results))
    results["meta"] = {
        "commit": git_commit(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "history_events": args.history_events,
        "new_events": args.new_events,
    }
    if args.out:
        write_json(args.out, results)
    if args.png:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
