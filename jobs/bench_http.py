"""HTTP load test of `lifeseq serve`: throughput and p50 / p99 latency at several concurrencies,
zero errors, the same scores as the in-process scorer, a run past the queue's limit, and
optionally today's server from another checkout side by side.

The benchmark starts `lifeseq serve EXPORT --port 0` as a subprocess on 127.0.0.1 (and, with
`--baseline-repo`, that checkout's own `lifeseq serve` on the same export, with its default
flags), waits (at most `--startup-timeout` seconds) for the startup line and `/health`, and for
each cell (history length × candidates, × concurrency) sends exactly `--requests` requests from
`--concurrency` keep-alive connections after `--warmup` untimed ones. Servers take turns cell by
cell, `--rounds` times (the order rotates each round): a cell's figures are the medians over
rounds. Requests are built as `lifeseq bench serving` builds them (`jobs.bench_serving`: seeded,
from the export's own vocabularies); `--distinct` different ones are cycled. Before the servers
start, each distinct request is scored in this process by `serving.Scorer` (timed: the
`in-process` column); every HTTP answer must equal that answer (max abs difference of
probabilities and logits, or of the top-10 scores with the same items, at most 1e-6). Client and
servers share the machine's cores, as on a one-box deployment; the 1-minute load average before
the run is recorded.

* Queueing floor: at concurrency c a request waits for the c - 1 ahead of it, so its latency
  cannot be below c / throughput; the table gives p99 against that floor.
* Overload (`--overload`, this checkout's server): `workers + max_queue + 16` connections, each
  request answered 200 (the same scores) or 503 with `Retry-After`, nothing else.
* `--background-load N` runs N busy processes for the whole run (a busy box);
  `--server-cpus 0` pins the servers to those CPUs (`os.sched_setaffinity`: a smaller machine);
  `--server-cgroup DIR` runs this checkout's server in a cgroup made beforehand, e.g. with a
  CPU quota of one core (a container's `--cpus 1`, which the affinity mask does not show), and
  `--baseline-cgroup DIR2` the baseline in another of the same quota.

    lifeseq bench http --export EXPORT [--requests 200] [--concurrency 1 4 16] [--histories 1000]
        [--candidates 100] [--workers N] [--threads-per-worker T] [--max-queue Q]
        [--baseline-repo OLD_CHECKOUT] [--rounds 3] [--overload] [--background-load 1]
        [--server-cpus 0] [--server-cgroup DIR] [--out bench_out/http.json] [--png http.png]

Exits 1 when any request failed (a status other than 200, or 503 in the overload run) or any
score differed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lifeseq.jobs.bench_report import (
    REPO_ROOT,
    git_commit,
    machine_info,
    save_figure,
    tail,
    write_json,
)
from lifeseq.jobs.bench_serving import ctr_requests, next_item_requests, percentiles
from lifeseq.jobs.checkout_env import checkout_environment
from lifeseq.serving.scorer import CtrScores, Recommendations, RequestLimits, Scorer

HOST = "127.0.0.1"
#: Largest |HTTP answer - in-process answer| counted as the same score.
SAME_SCORE_TOL = 1e-6
#: Connections beyond `workers + max_queue` in the overload run.
OVERLOAD_EXTRA = 16
#: This checkout's server and the one of `--baseline-repo`, as labelled in tables.
THIS, BASELINE = "this", "baseline"
_STARTED = re.compile(r"^serving .* on (http://\S+)$", re.MULTILINE)
_BUSY_LOOP = "while True: pass"


@dataclasses.dataclass
class ServerProcess:
    """A `lifeseq serve` subprocess and the URL it listens on."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout_s: float = 20.0) -> int | None:
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
    export: Path,
    log: Path,
    args: Sequence[str] = (),
    timeout_s: float = 300.0,
    repo: Path = REPO_ROOT,
    cpus: Sequence[int] | None = None,
    cgroup: Path | None = None,
) -> ServerProcess:
    """Start checkout `repo`'s `lifeseq serve EXPORT --port 0` (output to `log`; pinned to
    `cpus`, and moved into the cgroup directory `cgroup`, when given) and wait until `/health`
    answers.

    Raises:
        RuntimeError: the server exited or was not healthy within `timeout_s` (it is stopped;
            the message holds its log's tail).
    """
    command = [sys.executable, "-m", "lifeseq.jobs.cli", "serve", str(export), "--host", HOST,
               "--port", "0", *args]  # fmt: skip
    env = checkout_environment(repo, log.parent)

    def confine() -> None:  # in the child, before exec: its workers inherit both
        if cpus:
            os.sched_setaffinity(0, set(cpus))
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    pin = confine if cpus or cgroup is not None else None
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=repo,
                                   env=env, preexec_fn=pin)  # fmt: skip
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


@contextmanager
def background_load(processes: int) -> Iterator[None]:
    """`processes` busy loops running for the block (a busy box)."""
    hogs = [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


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


class KeepAliveConnection:
    """One HTTP/1.1 keep-alive connection that POSTs JSON bodies: the load test's client, lean
    so that the client's own CPU time (it shares the machine's cores with the server) stays
    small — about 0.3 ms a request against httpx's 3 ms. Answers must carry `Content-Length`
    (uvicorn's do); `Connection: close` reconnects."""

    def __init__(self, url: str) -> None:
        host_port = url.removeprefix("http://").split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        """Close the connection (if open)."""
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
            self._reader = self._writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """POST `body` as JSON; (status, lower-case headers, body).

        Raises:
            ConnectionError: the server closed the connection or answered out of protocol.
        """
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        self._writer.write(head.encode("latin-1"))
        self._writer.write(body)
        await self._writer.drain()
        status_line = await self._reader.readline()
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            await self.close()
            raise ConnectionError(f"no HTTP status line: {status_line[:80]!r}")
        headers = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            await self.close()
            raise ConnectionError("answer without Content-Length")
        payload = await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(parts[1]), headers, payload


async def load(
    url: str,
    path: str,
    bodies: list[bytes],
    expected: list[CtrScores | Recommendations],
    requests: int,
    concurrency: int,
    warmup: int,
    timeout_s: float,
    accept_overload: bool = False,
) -> dict[str, Any]:
    """Send `requests` POSTs (body `i % len(bodies)`) from `concurrency` keep-alive connections
    (`KeepAliveConnection`) after `warmup` untimed ones; latency of the 200s, throughput, status
    counts, errors (any other status, or a 503 unless `accept_overload`, or a 503 without
    `Retry-After`) and the largest score difference."""
    latencies: list[float] = []
    errors: list[str] = []
    statuses: Counter[int] = Counter()
    worst = 0.0
    connections = [KeepAliveConnection(url) for _ in range(concurrency)]
    for i in range(warmup):
        await asyncio.wait_for(connections[0].post(path, bodies[i % len(bodies)]), timeout_s)
    counter = itertools.count()

    async def worker(connection: KeepAliveConnection) -> None:
        nonlocal worst
        while (i := next(counter)) < requests:
            start = time.perf_counter()
            try:
                status, headers, payload = await asyncio.wait_for(
                    connection.post(path, bodies[i % len(bodies)]), timeout_s
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
                errors.append(f"{type(err).__name__}: {err}")
                await connection.close()
                continue
            statuses[status] += 1
            if status == 503 and accept_overload:
                if not headers.get("retry-after", "").isdigit():
                    errors.append("503 without Retry-After")
                continue
            if status != 200:
                errors.append(f"{status}: {payload[:200].decode(errors='replace')}")
                continue
            latencies.append(time.perf_counter() - start)
            worst = max(worst, max_difference(json.loads(payload), expected[i % len(bodies)]))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(connection) for connection in connections))
    finally:
        seconds = time.perf_counter() - started
        await asyncio.gather(*(connection.close() for connection in connections))
    answered = len(latencies)
    return {
        "concurrency": concurrency, "requests": requests, "errors": len(errors),
        "error_examples": errors[:3], "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": seconds, "throughput_rps": answered / seconds,
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


def median_cell(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's rounds folded into one: medians of throughput and latencies, sums of requests,
    errors and statuses, the worst score difference; the queueing floor (concurrency /
    throughput) and p99 against it."""
    first = rounds[0]
    statuses: Counter[str] = Counter()
    for r in rounds:
        statuses.update(r["statuses"])
    cell = {
        **{k: v for k, v in first.items() if k not in ("error_examples", "statuses")},
        "rounds": len(rounds), "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "error_examples": [e for r in rounds for e in r["error_examples"]][:3],
        "statuses": dict(sorted(statuses.items())),
        "max_abs_diff": max(r["max_abs_diff"] for r in rounds),
        "same_scores": all(r["same_scores"] for r in rounds),
        "throughput_rps": statistics.median(r["throughput_rps"] for r in rounds),
        "throughput_rounds": [round(r["throughput_rps"], 2) for r in rounds],
    }  # fmt: skip
    for key in ("p50_ms", "p99_ms", "mean_ms"):
        values = [r[key] for r in rounds if key in r]
        if values:
            cell[key] = statistics.median(values)
    if cell["throughput_rps"] > 0:
        cell["floor_ms"] = cell["concurrency"] / cell["throughput_rps"] * 1e3
        if "p99_ms" in cell:
            cell["p99_over_floor"] = cell["p99_ms"] / cell["floor_ms"]
    return cell


def targets(cells: list[dict[str, Any]], overload: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's targets for this checkout's server: throughput never falls as concurrency
    rises (per history × candidates), p99 at the highest concurrency within 2× its queueing
    floor, zero errors, and an overload run of only 200s and 503s."""
    mine = [c for c in cells if c["server"] == THIS]
    key = lambda c: (c["history"], str(c["candidates"]))  # noqa: E731
    never_falls, within_2x = {}, {}
    for (history, candidates), group in itertools.groupby(sorted(mine, key=key), key=key):
        group = sorted(group, key=lambda c: c["concurrency"])
        rates = [c["throughput_rps"] for c in group]
        never_falls[f"{history}x{candidates}"] = all(b >= a for a, b in itertools.pairwise(rates))
        within_2x[f"{history}x{candidates}"] = group[-1].get("p99_over_floor", float("inf")) <= 2
    result = {"throughput_never_falls": never_falls, "p99_within_2x_floor": within_2x,
              "zero_errors": all(c["errors"] == 0 for c in mine)}  # fmt: skip
    if overload is not None:
        result["overload_only_200_and_503"] = (
            overload["errors"] == 0 and set(overload["statuses"]) <= {"200", "503"}
            and "503" in overload["statuses"]
        )  # fmt: skip
    return result


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
    server_args: Sequence[str] = (),
    compiled: bool = False,
    baseline_repo: Path | None = None,
    rounds: int = 1,
    overload: bool = False,
    background: int = 0,
    server_cpus: Sequence[int] | None = None,
    server_cgroup: Path | None = None,
    baseline_cgroup: Path | None = None,
) -> dict[str, Any]:
    """Load-test `lifeseq serve` of `export` (see the module docstring); the JSON payload.

    Args:
        server_args: flags of this checkout's server (`--workers 2`, ...).
        baseline_repo: another checkout whose server runs beside, with its default flags.
        rounds: times each cell runs per server (medians reported).
        overload: add the run past the queue's limit.
        background: busy processes running during the measurements.
        server_cpus: CPUs the servers are pinned to.
        server_cgroup: a cgroup directory (e.g. with a CPU quota) this checkout's server runs in.
        baseline_cgroup: the baseline's (default `server_cgroup`: then both share its quota).

    Raises:
        RuntimeError: a server did not start (its log's tail in the message).
    """
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    scorer = Scorer.load(export, compiled=compiled)
    sizes = candidates if scorer.family == "ctr" else (0,)
    prepared = [build_cell(scorer, h, c, min(distinct, requests)) for h in histories for c in sizes]
    defaults = RequestLimits()
    limits = ["--max-history-events", str(max(defaults.max_history_events, *histories)),
              "--max-candidates", str(max(defaults.max_candidates, *sizes)),
              *(["--compiled"] if compiled else [])]  # fmt: skip
    path = "/score" if scorer.family == "ctr" else "/recommend"
    cells, overload_cell, pools = [], None, {}
    with tempfile.TemporaryDirectory(prefix="lifeseq-bench-http-") as tmp, ExitStack() as stack:
        servers = {THIS: start_server(export, Path(tmp) / "this.log", [*limits, *server_args],
                                      startup_timeout_s, cpus=server_cpus,
                                      cgroup=server_cgroup)}  # fmt: skip
        stack.callback(servers[THIS].stop)
        if baseline_repo is not None:
            servers[BASELINE] = start_server(export, Path(tmp) / "baseline.log", limits,
                                             startup_timeout_s, repo=baseline_repo,
                                             cpus=server_cpus,
                                             cgroup=baseline_cgroup or server_cgroup)  # fmt: skip
            stack.callback(servers[BASELINE].stop)
        for name, server in servers.items():
            pools[name] = httpx.get(f"{server.url}/metadata", timeout=10).json().get("serving")
        stack.enter_context(background_load(background))
        order = list(servers)
        for cell, bodies, expected in prepared:
            for c in concurrency:
                results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
                for r in range(rounds):
                    for name in order[r % len(order) :] + order[: r % len(order)]:
                        result = asyncio.run(load(servers[name].url, path, bodies, expected,
                                                  requests, c, warmup, timeout_s))  # fmt: skip
                        results[name].append(result)
                for name, runs in results.items():
                    cells.append({"server": name, **cell, **median_cell(runs)})
        if overload:
            pool = pools[THIS] or {}
            c = int(pool.get("workers", 1)) + int(pool.get("max_queue", 0)) + OVERLOAD_EXTRA
            cell, bodies, expected = prepared[0]
            result = asyncio.run(load(servers[THIS].url, path, bodies, expected, max(requests, 4 * c),
                                      c, warmup, timeout_s, accept_overload=True))  # fmt: skip
            overload_cell = {"server": THIS, **cell, **median_cell([result])}
    return {
        "export": str(export), "model": scorer.name, "family": scorer.family, "endpoint": path,
        "cells": cells, "overload": overload_cell, "targets": targets(cells, overload_cell),
        "servers": {name: {"pool": pools[name],
                           "repo": str(baseline_repo if name == BASELINE else REPO_ROOT),
                           "commit": git_commit(baseline_repo if name == BASELINE else REPO_ROOT)}
                    for name in pools},
        "settings": {"requests": requests, "concurrency": list(concurrency), "distinct": distinct,
                     "warmup": warmup, "timeout_s": timeout_s, "host": HOST, "rounds": rounds,
                     "server_args": list(server_args), "compiled": compiled,
                     "background_load": background, "server_cpus": list(server_cpus or []),
                     "server_cgroup": str(server_cgroup) if server_cgroup else None,
                     "baseline_cgroup": str(baseline_cgroup) if baseline_cgroup else None},
        "machine": {**machine_info(), "load_avg_1m_before": load_avg},
        "commit": git_commit(),
    }  # fmt: skip


def _pool_text(pool: dict[str, Any] | None) -> str:
    if not pool:
        return "one process (scoring threads: --scoring-threads)"
    return (
        f"{pool['workers']} {pool['kind']} × {pool['threads_per_worker'] or 'default'} threads, "
        f"queue {pool['max_queue']}"
    )


def markdown(payload: dict[str, Any]) -> str:
    """The cells as a Markdown table, then the overload run and the targets."""
    lines = [
        "| server | history (used) | candidates | concurrency | requests | errors | req/s | "
        "p50 ms | p99 ms | floor ms | p99 / floor | in-process p50 ms | same scores (max diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    shown = list(payload["cells"]) + ([payload["overload"]] if payload.get("overload") else [])
    for c in shown:
        candidates = c["candidates"] if c["candidates"] == "all" else f"{c['candidates']:,}"
        server = c["server"] + (" (overload)" if c is payload.get("overload") else "")
        lines.append(
            f"| {server} | {c['history']:,} ({c['events_used']:,}) | {candidates} | "
            f"{c['concurrency']} | {c['requests']} | {c['errors']} | {c['throughput_rps']:.1f} | "
            f"{c.get('p50_ms', float('nan')):.2f} | {c.get('p99_ms', float('nan')):.2f} | "
            f"{c.get('floor_ms', float('nan')):.1f} | {c.get('p99_over_floor', float('nan')):.2f} | "
            f"{c['in_process_p50_ms']:.2f} | {'yes' if c['same_scores'] else 'NO'} "
            f"({c['max_abs_diff']:.1e}) |"
        )
    servers = payload.get("servers", {})
    for name, server in servers.items():
        lines.append(f"\n{name}: {server['commit'][:7]}, {_pool_text(server['pool'])}")
    if payload.get("overload"):
        lines.append(f"overload statuses: {payload['overload']['statuses']}")
    lines.append(f"targets: {json.dumps(payload['targets'])}")
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: str | Path) -> None:
    """Throughput and p99 latency against concurrency, one line per server × (history,
    candidates); p99's queueing floor dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    key = lambda c: (c["history"], str(c["candidates"]), c["server"])  # noqa: E731
    histories = sorted({c["history"] for c in payload["cells"]})
    colors = {h: f"C{i}" for i, h in enumerate(histories)}
    for (history, candidates, server), group in itertools.groupby(
        sorted(payload["cells"], key=key), key=key
    ):
        group = sorted(group, key=lambda c: c["concurrency"])
        label = f"{server}: {history:,} events" + (
            f" × {candidates}" if candidates != "all" else ""
        )
        style = dict(
            color=colors[history], marker="o", linestyle="--" if server == BASELINE else "-"
        )
        x = [c["concurrency"] for c in group]
        left.plot(x, [c["throughput_rps"] for c in group], label=label, **style)
        right.plot(x, [c.get("p99_ms", float("nan")) for c in group], label=label, **style)
        if server == THIS:
            right.plot(x, [c.get("floor_ms", float("nan")) for c in group], ":",
                       color=colors[history], alpha=0.7)  # fmt: skip
    for ax, ylabel in ((left, "requests / s"), (right, "p99 latency, ms (dotted: floor)")):
        ax.set(xscale="log", xlabel="concurrent connections", ylabel=ylabel)
        ax.set_xticks(payload["settings"]["concurrency"],
                      [str(c) for c in payload["settings"]["concurrency"]])  # fmt: skip
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    fig.suptitle(f"lifeseq serve {payload['model']} ({payload['endpoint']}), 127.0.0.1")
    save_figure(fig, path)


def _cpu_list(text: str) -> list[int]:
    try:
        cpus = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected CPU numbers like 0 or 0,1, got {text!r}"
        ) from None
    available = os.sched_getaffinity(0)
    if not cpus or not set(cpus) <= available:
        raise argparse.ArgumentTypeError(f"expected CPUs among {sorted(available)}, got {text!r}")
    return cpus


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
    parser.add_argument("--workers", type=int, default=None, help="the server's --workers")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="the server's --threads-per-worker")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=None, help="the server's --max-queue")
    parser.add_argument("--compiled", action="store_true",
                        help="the server (and the in-process check) run compiled/*.pt2")  # fmt: skip
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="another checkout whose lifeseq serve runs side by side")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="runs of each cell per server")
    parser.add_argument("--overload", action="store_true",
                        help="add a run past the queue's limit (only 200s and 503s)")  # fmt: skip
    parser.add_argument("--background-load", type=int, default=0,
                        help="busy processes running during the run (a busy box)")  # fmt: skip
    parser.add_argument("--server-cpus", type=_cpu_list, default=None,
                        help="pin the servers to these CPUs, e.g. 0 (a smaller machine)")  # fmt: skip
    parser.add_argument("--server-cgroup", type=Path, default=None,
                        help="run the servers in this cgroup directory (made beforehand, e.g. "
                        "with a CPU quota: cpu.max or cpu.cfs_quota_us)")  # fmt: skip
    parser.add_argument("--baseline-cgroup", type=Path, default=None,
                        help="the baseline server's cgroup directory (default --server-cgroup, "
                        "whose quota both servers then share)")  # fmt: skip
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--png", default=None, help="write throughput and p99 plots here")
    args = parser.parse_args(argv)
    for flag, cgroup in (("--server-cgroup", args.server_cgroup),
                         ("--baseline-cgroup", args.baseline_cgroup)):  # fmt: skip
        if cgroup is not None and not (cgroup / "cgroup.procs").is_file():
            parser.error(f"{flag}: {cgroup} is not a cgroup directory")
    for name in ("requests", "distinct", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if min(args.concurrency) < 1:
        parser.error(f"--concurrency: expected values >= 1, got {args.concurrency}")
    if args.background_load < 0:
        parser.error(f"--background-load: expected >= 0, got {args.background_load}")
    if args.baseline_repo is not None and not (args.baseline_repo / "jobs" / "cli.py").is_file():
        parser.error(f"--baseline-repo: {args.baseline_repo} is not a lifeseq checkout")
    server_args = [
        arg for flag, value in (("--workers", args.workers),
                                ("--threads-per-worker", args.threads_per_worker),
                                ("--max-queue", args.max_queue))
        if value is not None for arg in (flag, str(value))
    ]  # fmt: skip
    try:
        payload = run(args.export, args.histories, args.candidates, args.requests,
                      args.concurrency, args.distinct, args.warmup, args.timeout,
                      args.startup_timeout, server_args, args.compiled, args.baseline_repo,
                      args.rounds, args.overload, args.background_load, args.server_cpus,
                      args.server_cgroup, args.baseline_cgroup)  # fmt: skip
    except (RuntimeError, FileNotFoundError, ValueError) as err:  # ExportError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown(payload))
    print(f"({args.requests} requests per cell and round, {args.rounds} round(s), "
          f"{args.distinct} distinct, load average {payload['machine']['load_avg_1m_before']})")  # fmt: skip
    if args.out:
        write_json(args.out, payload)
    if args.png:
        plot(payload, args.png)
    failed = [c for c in payload["cells"] if not c["same_scores"]]
    if payload.get("overload") and payload["overload"]["errors"]:
        failed.append(payload["overload"])
    for c in failed:
        print(f"error: {c['server']} history {c['history']}, concurrency {c['concurrency']}: "
              f"{c['errors']} errors {c['error_examples']}, max score difference "
              f"{c['max_abs_diff']:.2e}", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
