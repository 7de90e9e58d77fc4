"""Serving latency side by side: today's scorer (another checkout and its export) against this
checkout's scorer, eager and compiled, cell by cell in one run.

    lifeseq bench latency --export EXPORT --baseline-repo OLD_CHECKOUT --baseline-export OLD_EXPORT \
        --histories 1000 10000 --candidates 100 --requests 200 --rounds 3 \
        --out bench_out/latency.json --png docs/serving_latency.png

Each variant runs `jobs.bench_serving` for one cell in a fresh subprocess (its own checkout on
`PYTHONPATH`, `jobs.checkout_env`, so the baseline runs its own code on the export its code wrote), and the
variants take turns cell by cell and round by round (the order rotates each round): a busy
machine slows all of them alike. Requests are the same for every variant (`bench_serving`
seeds them by cell, from the export's vocabularies: exports of one build). A cell's figure is
the median over rounds of each round's p50 / p99 (of `--requests` timed requests).

Every variant's request corpus is frozen out of the garbage collector while it is timed
(`bench_serving.frozen_corpus`), the baseline's too: its checkout may predate that, so the
subprocess runs `bench_serving` through `FROZEN_CORPUS`, which then freezes whatever its
`ctr_requests` built.

    variant    code                  export             program
    baseline   --baseline-repo       --baseline-export  torch.export (`dense/*.pt2`)
    eager      this checkout         --export           torch.export (`dense/*.pt2`)
    compiled   this checkout         --export           AOTInductor (`compiled/*.pt2`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lifeseq.jobs.bench_report import git_commit, machine_info, save_figure, write_json
from lifeseq.jobs.checkout_env import checkout_environment

REPO_ROOT = Path(__file__).resolve().parents[1]

#: `python -c` program running a checkout's `jobs.bench_serving.main` (arguments after `-c`).
#: A checkout from before `bench_serving.frozen_corpus` gets the requests its `ctr_requests`
#: builds collected and frozen (`gc.freeze`) as that does, so every variant is timed alike; a
#: checkout that has it runs unchanged.
FROZEN_CORPUS = """
import gc, sys
import lifeseq.jobs.bench_serving as bench
if not hasattr(bench, "frozen_corpus"):
    build = bench.ctr_requests
    def ctr_requests(*args, **kwargs):
        requests = build(*args, **kwargs)
        gc.collect()
        gc.freeze()
        return requests
    bench.ctr_requests = ctr_requests
sys.exit(bench.main(sys.argv[1:]))
"""
VARIANTS = ("baseline", "eager", "compiled")


def run_cell(
    repo: Path, export: Path, history: int, candidates: int, requests: int, compiled: bool
) -> dict[str, Any]:
    """One `bench_serving` cell in a subprocess of checkout `repo`; its cell record.

    Raises:
        RuntimeError: the subprocess failed (its stderr's tail).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cell.json"
        command = [sys.executable, "-c", FROZEN_CORPUS, "--export", str(export),
                   "--histories", str(history), "--candidates", str(candidates),
                   "--requests", str(requests), "--out", str(out)]  # fmt: skip
        if compiled:
            command.append("--compiled")
        env = checkout_environment(repo, Path(tmp))
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench_serving in {repo} failed: {done.stderr[-2000:]}")
        return json.loads(out.read_text())["results"][0]["cells"][0]


def side_by_side(
    variants: dict[str, tuple[Path, Path, bool]],
    histories: list[int],
    candidates: list[int],
    requests: int,
    rounds: int,
) -> list[dict[str, Any]]:
    """Every (history, candidates) cell of every variant, `rounds` times in rotating order;
    per cell and variant the median over rounds of p50, p99 and the program's p50."""
    names = list(variants)
    rows = []
    for history in histories:
        for count in candidates:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for round_index in range(rounds):
                order = names[round_index % len(names) :] + names[: round_index % len(names)]
                for name in order:
                    repo, export, compiled = variants[name]
                    cell = run_cell(repo, export, history, count, requests, compiled)
                    runs[name].append(cell)
                    print(f"  {name:9s} {history:>6,} × {count}: p50 {cell['p50_ms']:.2f} "
                          f"p99 {cell['p99_ms']:.2f} ms", flush=True)  # fmt: skip
            row: dict[str, Any] = {"history": history, "candidates": count}
            for name, cells in runs.items():
                row[name] = {
                    key: statistics.median(c[key] for c in cells)
                    for key in ("p50_ms", "p99_ms", "model_p50_ms")
                } | {"rounds": [{k: c[k] for k in ("p50_ms", "p99_ms")} for c in cells]}
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The side-by-side table: p50 / p99 (program p50) per variant, and p99 ratios to the
    first variant."""
    head = " | ".join(f"{n} p50 / p99 ms (program)" for n in names)
    ratios = " | ".join(f"p99 {n} / {names[0]}" for n in names[1:])
    lines = [f"| history × candidates | {head} | {ratios} |",
             "|---|" + "---:|" * (2 * len(names) - 1)]  # fmt: skip
    for row in rows:
        cells = " | ".join(
            f"{row[n]['p50_ms']:.2f} / {row[n]['p99_ms']:.2f} ({row[n]['model_p50_ms']:.2f})"
            for n in names
        )
        base = row[names[0]]["p99_ms"]
        ratio = " | ".join(f"{row[n]['p99_ms'] / base:.2f}" for n in names[1:])
        lines.append(f"| {row['history']:,} × {row['candidates']:,} | {cells} | {ratio} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], names: list[str], path: str) -> None:
    """Grouped bars of p99 per cell and variant (p50 as dots), the 10 ms / 3 ms targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4))
    x = np.arange(len(rows))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        offset = x + (i - (len(names) - 1) / 2) * width
        ax.bar(offset, [r[name]["p99_ms"] for r in rows], width, label=f"{name} p99")
        ax.plot(offset, [r[name]["p50_ms"] for r in rows], "k.", ms=6)
    for target, label in ((10.0, "10 ms"), (3.0, "3 ms")):
        ax.axhline(target, color="gray", ls="--", lw=0.8)
        ax.text(len(rows) - 0.5, target, f" {label}", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(x, [f"{r['history']:,} events × {r['candidates']}" for r in rows])
    ax.set_ylabel("ms per request (bars p99, dots p50)")
    ax.set_title("serving.Scorer latency, side by side (2-core CPU)")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the variants side by side, print the table, write JSON / PNG."""
    parser = argparse.ArgumentParser(prog="lifeseq bench latency",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--export", required=True, type=Path, help="this checkout's export")
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="checkout of today's scorer (e.g. a git worktree)")  # fmt: skip
    parser.add_argument("--baseline-export", type=Path, default=None,
                        help="the same checkpoint exported by --baseline-repo")  # fmt: skip
    parser.add_argument("--histories", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--candidates", type=int, nargs="+", default=[100])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per cell")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every variant per cell")
    parser.add_argument("--no-compiled", action="store_true", help="leave out `compiled`")
    parser.add_argument("--out", default=None, help="write JSON results here")
    parser.add_argument("--png", default=None, help="write the bar chart here")
    args = parser.parse_args(argv)
    if (args.baseline_repo is None) != (args.baseline_export is None):
        parser.error("--baseline-repo and --baseline-export go together")
    variants: dict[str, tuple[Path, Path, bool]] = {}
    if args.baseline_repo is not None:
        variants["baseline"] = (args.baseline_repo.resolve(), args.baseline_export, False)
    variants["eager"] = (REPO_ROOT, args.export, False)
    if not args.no_compiled:
        variants["compiled"] = (REPO_ROOT, args.export, True)
    try:
        rows = side_by_side(variants, args.histories, args.candidates, args.requests, args.rounds)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    names = list(variants)
    print(markdown(rows, names))
    if args.out:
        write_json(args.out, {
            "rows": rows, "variants": {n: [str(p) for p in v[:2]] + [v[2]]
                                       for n, v in variants.items()},
            "settings": {"requests": args.requests, "rounds": args.rounds},
            "machine": machine_info() | {"load_avg_1m_after": os.getloadavg()[0]},
            "commit": git_commit(),
        })  # fmt: skip
    if args.png:
        plot(rows, names, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
