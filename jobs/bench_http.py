"""HTTP load test of `lifeseq serve`: throughput and p50 / p99 latency at several concurrencies,
zero errors, and the same scores as the in-process scorer.

The benchmark starts `lifeseq serve EXPORT --port 0` as a subprocess on 127.0.0.1, waits (at most
`--startup-timeout` seconds) for its startup line and `/health`, and for each cell (history
length × candidates, × concurrency) sends exactly `--requests` requests from `--concurrency`
keep-alive connections after `--warmup` untimed ones, then stops the server (also on failure).
Requests are built as `lifeseq bench serving` builds them (`jobs.bench_serving`: seeded, from
the export's own vocabularies); `--distinct` different ones are cycled. Before the server starts,
each distinct request is scored in this process by `serving.Scorer` (timed: the `in-process`
column); every HTTP answer must equal that answer (max abs difference of probabilities and logits,
or of the top-10 scores with the same items, at most 1e-6). Client and server share the machine's
cores, as on a one-box deployment; the 1-minute load average before the run is recorded.

    lifeseq bench http --export EXPORT [--requests 200] [--concurrency 1 4 16] [--histories 1000]
        [--candidates 100] [--scoring-threads 1] [--out bench_out/http.json] [--png http.png]

Exits 1 when any request failed or any score differed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from jobs.bench_report import REPO_ROOT, git_commit, machine_info, save_figure, tail, write_json
from jobs.bench_serving import ctr_requests, next_item_requests, percentiles
from serving.scorer import CtrScores, Recommendations, RequestLimits, Scorer

HOST = "127.0.0.1"
#: Largest |HTTP answer - in-process answer| counted as the same score.
SAME_SCORE_TOL = 1e-6
_STARTED = re.compile(r"^serving .* on (http://\S+)$", re.MULTILINE)


@dataclasses.dataclass
class ServerProcess:
    """A `lifeseq serve` subprocess and the URL it listens on."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (uvicorn's graceful stop), then SIGKILL after `timeout_s`; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode


def start_server(
    export: Path, log: Path, args: Sequence[str] = (), timeout_s: float = 300.0
) -> ServerProcess:
    """Start `lifeseq serve EXPORT --port 0` (output to `log`) and wait until `/health` answers.

    Raises:
        RuntimeError: the server exited or was not healthy within `timeout_s` (it is stopped;
            the message holds its log's tail).
    """
    command = [sys.executable, "-m", "jobs.cli", "serve", str(export), "--host", HOST,
               "--port", "0", *args]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    server = ServerProcess(process, "", log)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"lifeseq serve exited with {process.returncode}:\n{tail(log)}")
            if not server.url and (found := _STARTED.search(log.read_text(errors="replace"))):
                server.url = found.group(1)
            if server.url and _healthy(server.url):
                return server
            time.sleep(0.1)
        raise RuntimeError(f"lifeseq serve not healthy after {timeout_s:.0f} s:\n{tail(log)}")
    except BaseException:
        server.stop()
        raise


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def max_difference(answer: dict[str, Any], expected: CtrScores | Recommendations) -> float:
    """Largest |HTTP answer - in-process answer| over the scores (inf: other items or sizes)."""
    if isinstance(expected, CtrScores):
        pairs = [(answer.get("probabilities"), expected.probabilities),
                 (answer.get("logits"), expected.logits)]  # fmt: skip
    else:
        if answer.get("items") != expected.items:
            return float("inf")
        pairs = [(answer.get("scores"), expected.scores)]
    worst = 0.0
    for got, want in pairs:
        got = np.asarray(got, dtype=np.float64)
        if got.shape != want.shape:
            return float("inf")
        if got.size:
            worst = max(worst, float(np.abs(got - want.astype(np.float64)).max()))
    return worst


async def load(
    url: str,
    path: str,
    bodies: list[bytes],
    expected: list[CtrScores | Recommendations],
    requests: int,
    concurrency: int,
    warmup: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Send `requests` POSTs (body `i % len(bodies)`) from `concurrency` connections after
    `warmup` untimed ones; latency, throughput, errors and the largest score difference."""
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    worst = 0.0
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        for i in range(warmup):
            await client.post(path, content=bodies[i % len(bodies)], headers=headers)
        counter = itertools.count()

        async def worker() -> None:
            nonlocal worst
            while (i := next(counter)) < requests:
                start = time.perf_counter()
                try:
                    response = await client.post(path, content=bodies[i % len(bodies)],
                                                 headers=headers)  # fmt: skip
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__}: {err}")
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                worst = max(worst, max_difference(response.json(), expected[i % len(bodies)]))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {
        "concurrency": concurrency, "requests": requests, "errors": len(errors),
        "error_examples": errors[:3], "seconds": seconds, "throughput_rps": requests / seconds,
        **(percentiles(latencies) if latencies else {}), "max_abs_diff": worst,
        "same_scores": not errors and worst <= SAME_SCORE_TOL,
    }  # fmt: skip


def build_cell(
    scorer: Scorer, history: int, candidates: int, distinct: int
) -> tuple[dict[str, Any], list[bytes], list[CtrScores | Recommendations]]:
    """One (history, candidates) cell's settings, JSON bodies and in-process answers (the
    answers timed after one untimed call: the `in_process_*` keys)."""
    if scorer.family == "ctr":
        requests = ctr_requests(scorer, history, candidates, distinct, seed=history + candidates)
        answer, used, shown = scorer.score, min(history, scorer.max_history), candidates
    else:
        requests = next_item_requests(scorer, history, distinct, seed=history)
        answer, used, shown = scorer.recommend, min(history, scorer.max_len), "all"
    answer(requests[0])
    expected, seconds = [], []
    for request in requests:
        start = time.perf_counter()
        expected.append(answer(request))
        seconds.append(time.perf_counter() - start)
    bodies = [json.dumps(dataclasses.asdict(r)).encode() for r in requests]
    in_process = percentiles(seconds)
    cell = {"history": history, "events_used": used, "candidates": shown, "distinct": distinct,
            "body_kb": float(np.mean([len(b) for b in bodies]) / 1e3),
            "in_process_p50_ms": in_process["p50_ms"], "in_process_p99_ms": in_process["p99_ms"]}  # fmt: skip
    return cell, bodies, expected


def run(
    export: Path,
    histories: Sequence[int] = (1000,),
    candidates: Sequence[int] = (100,),
    requests: int = 200,
    concurrency: Sequence[int] = (1, 4, 16),
    distinct: int = 50,
    warmup: int = 5,
    timeout_s: float = 60.0,
    startup_timeout_s: float = 300.0,
    scoring_threads: int = 1,
    compiled: bool = False,
) -> dict[str, Any]:
    """Load-test a `lifeseq serve` of `export` (see the module docstring); the JSON payload.

    Raises:
        RuntimeError: the server did not start (its log's tail in the message).
    """
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    scorer = Scorer.load(export, compiled=compiled)
    sizes = candidates if scorer.family == "ctr" else (0,)
    prepared = [build_cell(scorer, h, c, min(distinct, requests)) for h in histories for c in sizes]
    defaults = RequestLimits()
    server_args = [
        "--max-history-events", str(max(defaults.max_history_events, *histories)),
        "--max-candidates", str(max(defaults.max_candidates, *sizes)),
        "--scoring-threads", str(scoring_threads), *(["--compiled"] if compiled else []),
    ]  # fmt: skip
    path = "/score" if scorer.family == "ctr" else "/recommend"
    cells = []
    with tempfile.TemporaryDirectory(prefix="lifeseq-bench-http-") as tmp:
        server = start_server(export, Path(tmp) / "server.log", server_args, startup_timeout_s)
        try:
            for cell, bodies, expected in prepared:
                for c in concurrency:
                    result = asyncio.run(
                        load(server.url, path, bodies, expected, requests, c, warmup, timeout_s)
                    )
                    cells.append({**cell, **result})
        finally:
            server.stop()
    return {
        "export": str(export), "model": scorer.name, "family": scorer.family, "endpoint": path,
        "cells": cells,
        "settings": {"requests": requests, "concurrency": list(concurrency), "distinct": distinct,
                     "warmup": warmup, "timeout_s": timeout_s, "host": HOST,
                     "scoring_threads": scoring_threads, "compiled": compiled},
        "machine": {**machine_info(), "load_avg_1m_before": load_avg},
        "commit": git_commit(),
    }  # fmt: skip


def markdown(payload: dict[str, Any]) -> str:
    """The cells as a Markdown table."""
    lines = [
        "| model | history (used) | candidates | concurrency | requests | errors | req/s | "
        "p50 ms | p99 ms | in-process p50 ms | same scores (max diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in payload["cells"]:
        candidates = c["candidates"] if c["candidates"] == "all" else f"{c['candidates']:,}"
        lines.append(
            f"| {payload['model']} | {c['history']:,} ({c['events_used']:,}) | {candidates} | "
            f"{c['concurrency']} | {c['requests']} | {c['errors']} | {c['throughput_rps']:.1f} | "
            f"{c.get('p50_ms', float('nan')):.2f} | {c.get('p99_ms', float('nan')):.2f} | "
            f"{c['in_process_p50_ms']:.2f} | {'yes' if c['same_scores'] else 'NO'} "
            f"({c['max_abs_diff']:.1e}) |"
        )
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: str | Path) -> None:
    """Throughput and p99 latency against concurrency, one line per (history, candidates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    key = lambda c: (c["history"], c["candidates"])  # noqa: E731
    for (history, candidates), group in itertools.groupby(payload["cells"], key=key):
        group = list(group)
        label = f"{history:,} events" + (f" × {candidates:,}" if candidates != "all" else "")
        x = [c["concurrency"] for c in group]
        left.plot(x, [c["throughput_rps"] for c in group], marker="o", label=label)
        right.plot(x, [c.get("p99_ms", float("nan")) for c in group], marker="o", label=label)
    for ax, ylabel in ((left, "requests / s"), (right, "p99 latency, ms")):
        ax.set(xscale="log", xlabel="concurrent connections", ylabel=ylabel)
        ax.set_xticks(payload["settings"]["concurrency"],
                      [str(c) for c in payload["settings"]["concurrency"]])  # fmt: skip
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(f"lifeseq serve {payload['model']} ({payload['endpoint']}), 127.0.0.1")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the load test, print the table, write JSON / PNG; the exit code."""
    parser = argparse.ArgumentParser(prog="lifeseq bench http",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--export", required=True, type=Path, help="export directory")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--histories", type=int, nargs="+", default=[1000])
    parser.add_argument("--candidates", type=int, nargs="+", default=[100],
                        help="CTR exports (sequential: top-10 over the catalog)")  # fmt: skip
    parser.add_argument("--distinct", type=int, default=50, help="different requests per cell")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per cell")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds the server may take to load and answer /health")  # fmt: skip
    parser.add_argument("--scoring-threads", type=int, default=1,
                        help="the server's --scoring-threads")  # fmt: skip
    parser.add_argument("--compiled", action="store_true",
                        help="the server (and the in-process check) run compiled/*.pt2")  # fmt: skip
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--png", default=None, help="write throughput and p99 plots here")
    args = parser.parse_args(argv)
    for name in ("requests", "distinct", "scoring_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if min(args.concurrency) < 1:
        parser.error(f"--concurrency: expected values >= 1, got {args.concurrency}")
    try:
        payload = run(args.export, args.histories, args.candidates, args.requests,
                      args.concurrency, args.distinct, args.warmup, args.timeout,
                      args.startup_timeout, args.scoring_threads, args.compiled)  # fmt: skip
    except (RuntimeError, FileNotFoundError, ValueError) as err:  # ExportError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown(payload))
    print(f"({args.requests} requests per cell, {args.distinct} distinct, "
          f"{args.scoring_threads} scoring thread(s), {payload['machine']['threads']} torch "
          f"threads, load average {payload['machine']['load_avg_1m_before']})")  # fmt: skip
    if args.out:
        write_json(args.out, payload)
    if args.png:
        plot(payload, args.png)
    failed = [c for c in payload["cells"] if not c["same_scores"]]
    for c in failed:
        print(f"error: history {c['history']}, concurrency {c['concurrency']}: {c['errors']} "
              f"errors {c['error_examples']}, max score difference {c['max_abs_diff']:.2e}",
              file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
