"""Serving latency benchmark: p50 / p99 milliseconds per request through `serving.Scorer`.

For each export given (`lifeseq export` output), requests of one user are built from the
export's own vocabularies (seeded: history items, behaviors and candidates drawn uniformly from
the known ids, timestamps increasing) and answered end to end, as a serving process would:
raw-id lookup, memory-mapped embedding rows (and TWIN's item-key cache), the `torch.export`
program, sigmoid. Each cell is `--requests` distinct requests timed one at a time after
`--warmup` untimed ones, in this process, on `torch.get_num_threads()` threads.

* CTR exports: every (history, candidates) pair of `--histories` × `--candidates`; the history is
  cut to the model's `max_history` as in training (the table shows the events actually used).
* Sequential exports: every history length, top-10 over the whole catalog (the candidates
  column reads `all`); the history is cut to `max_len`.

Alongside the end-to-end time, `model p50` is the exported program alone, timed in a second pass
right after preparing each request's inputs (the rest is id checks, lookup and row gathering;
sequential: the user embedding, without the catalog scan). Other jobs on the machine inflate the numbers; the
1-minute load average before timing is recorded.

A cell builds all its requests before timing them, and then freezes them out of Python's garbage
collector (`frozen_corpus`): at 10,000 events the corpus is ~6 million list slots, and the first
collection inside the timed loop otherwise traversed its youngest requests, a pause of 8-11 ms
inside one timed request (the p99 of 200). A server holds one request at a time; collections of
what scoring allocates still run, and are timed.

    python -m lifeseq.jobs.bench_serving --export EXPORT [--export EXPORT2 ...] [--out bench_out/serving.json]
    lifeseq bench serving --export out/demo/export/twin
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifeseq.jobs.bench_report import git_commit, machine_info, write_json
from lifeseq.serving.scorer import CtrRequest, NextItemRequest, Scorer

HISTORIES = (1000, 10_000)
CANDIDATES = (100, 1000)
START_TS = 1_700_000_000


def _raw_ids(scorer: Scorer, vocab: str) -> np.ndarray:
    return np.asarray(list(scorer.vocab[vocab].ids))


def ctr_requests(
    scorer: Scorer, history: int, candidates: int, count: int, seed: int
) -> list[CtrRequest]:
    """`count` seeded CTR requests of `history` events and `candidates` candidates."""
    rng = np.random.default_rng(seed)
    items, behaviors = _raw_ids(scorer, "item"), _raw_ids(scorer, "behavior")
    requests = []
    for _ in range(count):
        ts = START_TS + np.cumsum(rng.integers(1, 3600, history))
        requests.append(
            CtrRequest(
                history_items=rng.choice(items, history).tolist(),
                history_behaviors=rng.choice(behaviors, history).tolist(),
                history_ts=ts.tolist(),
                candidates=rng.choice(items, candidates).tolist(),
                request_ts=int(ts[-1]) + 60,
            )
        )
    return requests


def next_item_requests(
    scorer: Scorer, history: int, count: int, seed: int
) -> list[NextItemRequest]:
    """`count` seeded next-item requests (top 10) of `history` events."""
    rng = np.random.default_rng(seed)
    items = _raw_ids(scorer, "item")
    requests = []
    for _ in range(count):
        ts = START_TS + np.cumsum(rng.integers(1, 3600, history))
        requests.append(
            NextItemRequest(rng.choice(items, history).tolist(), ts.tolist(), int(ts[-1]) + 60)
        )
    return requests


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}  # fmt: skip


@contextmanager
def frozen_corpus(requests: list[Any]) -> Iterator[list[Any]]:
    """`requests`, with every object alive now collected once and frozen (`gc.freeze`) until
    the block ends: the garbage collector does not traverse the benchmark's own request corpus
    while it times requests, as it would not in a server that holds one request at a time."""
    gc.collect()
    gc.freeze()
    try:
        yield requests
    finally:
        gc.unfreeze()


def time_calls(fn: Any, requests: list[Any], warmup: int) -> list[float]:
    """Seconds of `fn(request)` for each request after the first `warmup` (untimed)."""
    for request in requests[:warmup]:
        fn(request)
    times = []
    for request in requests[warmup:]:
        start = time.perf_counter()
        fn(request)
        times.append(time.perf_counter() - start)
    return times


def ctr_cell(scorer: Scorer, history: int, candidates: int, n: int, warmup: int) -> dict[str, Any]:
    """End-to-end and program-only latency of one (history, candidates) CTR cell."""
    program = scorer.programs["model"]

    def run_program(request: CtrRequest) -> None:
        inputs = scorer.ctr_inputs(request)[0]
        start = time.perf_counter()
        with torch.no_grad():
            program(inputs)
        model_only.append(time.perf_counter() - start)

    model_only: list[float] = []
    built = ctr_requests(scorer, history, candidates, n + warmup, seed=history + candidates)
    with frozen_corpus(built) as requests:
        end_to_end = time_calls(scorer.score, requests, warmup)
        time_calls(run_program, requests, warmup)
    model_only = model_only[warmup:]
    return {
        "history": history, "events_used": min(history, scorer.max_history),
        "candidates": candidates, **percentiles(end_to_end),
        "model_p50_ms": percentiles(model_only)["p50_ms"], "requests": n,
    }  # fmt: skip


def generative_cell(scorer: Scorer, history: int, n: int, warmup: int) -> dict[str, Any]:
    """End-to-end and encoder-only latency of top-10 next items for `history` events."""
    with frozen_corpus(next_item_requests(scorer, history, n + warmup, seed=history)) as requests:
        end_to_end = time_calls(scorer.recommend, requests, warmup)
        model_only = time_calls(lambda r: scorer.user_embedding(r), requests, warmup)
    return {
        "history": history, "events_used": min(history, scorer.max_len), "candidates": "all",
        "catalog": scorer.manifest["tables"]["item"]["rows"], **percentiles(end_to_end),
        "model_p50_ms": percentiles(model_only)["p50_ms"], "requests": n,
    }  # fmt: skip


def bench_export(
    root: Path,
    histories: Sequence[int],
    candidates: Sequence[int],
    n: int,
    warmup: int,
    compiled: bool = False,
) -> dict[str, Any]:
    """Every cell of one export (`compiled`: its AOTInductor packages)."""
    started = time.monotonic()
    scorer = Scorer.load(root, compiled=compiled)
    load_s = time.monotonic() - started
    if scorer.family == "ctr":
        cells = [ctr_cell(scorer, h, c, n, warmup) for h in histories for c in candidates]
    else:
        cells = [generative_cell(scorer, h, n, warmup) for h in histories]
    size = sum(e["bytes"] for e in scorer.manifest["files"].values())
    return {"export": str(root), "family": scorer.family, "model": scorer.name,
            "compiled": compiled, "export_mb": size / 1e6, "load_s": load_s,
            "cells": cells}  # fmt: skip


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| model | history (used) | candidates | p50 ms | p99 ms | model p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for c in result["cells"]:
            lines.append(
                f"| {result['model']} | {c['history']:,} ({c['events_used']:,}) | "
                f"{c['candidates'] if c['candidates'] == 'all' else format(c['candidates'], ',')} "
                f"| {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['model_p50_ms']:.2f} |"
            )
    return "\n".join(lines)


def run(
    exports: list[Path],
    histories: Sequence[int] = HISTORIES,
    candidates: Sequence[int] = CANDIDATES,
    requests: int = 100,
    warmup: int = 5,
    compiled: bool = False,
) -> dict[str, Any]:
    """Benchmark `exports`; the JSON payload."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = [bench_export(root, histories, candidates, requests, warmup, compiled)
               for root in exports]  # fmt: skip
    return {
        "results": results,
        "settings": {"requests": requests, "warmup": warmup, "threads": torch.get_num_threads()},
        "machine": {**machine_info(), "load_avg_1m_before": load},
        "commit": git_commit(),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, benchmark, print the table, write JSON; exit code."""
    parser = argparse.ArgumentParser(
        prog="lifeseq bench serving", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--export", action="append", required=True, type=Path,
                        help="export directory (repeat for several)")  # fmt: skip
    parser.add_argument("--histories", type=int, nargs="+", default=list(HISTORIES))
    parser.add_argument("--candidates", type=int, nargs="+", default=list(CANDIDATES))
    parser.add_argument("--requests", type=int, default=100, help="timed requests per cell")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compiled", action="store_true",
                        help="run the exports' AOTInductor packages (compiled/*.pt2)")  # fmt: skip
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    payload = run(args.export, args.histories, args.candidates, args.requests, args.warmup,
                  args.compiled)  # fmt: skip
    print(markdown(payload["results"]))
    print(f"({args.requests} requests per cell, {payload['settings']['threads']} threads, "
          f"load average {payload['machine']['load_avg_1m_before']})")  # fmt: skip
    if args.out:
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
