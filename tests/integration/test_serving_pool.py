"""The scoring pool behind `lifeseq serve` (`serving.pool`): a full queue answers 503 with
`Retry-After` at once, a worker process that dies is replaced (its request answers 503, the
next ones 200 with the same scores), workers run the torch threads they were given, and
`lifeseq serve` sizes its pool to the cores given and stops its workers with itself.

The DIN export of `tests/integration/test_server.py` (seeded random weights).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lifeseq.jobs import bench_http
from lifeseq.serving.pool import InlinePool, Overloaded
from lifeseq.serving.scorer import Scorer
from lifeseq.serving.server import create_app
from tests.integration.test_export import ctr_case
from tests.integration.test_server import (
    REPO_ROOT,
    SAME,
    _free_port,
    _serve,
    body_of,
    exports,  # noqa: F401 - the module fixture
    process_pool,
)

pytestmark = pytest.mark.integration


def _body(seed: int = 7) -> tuple[Any, bytes]:
    request, _ = ctr_case(seed, 50, 9)
    return request, json.dumps(body_of(request)).encode()


def test_a_full_queue_answers_503_with_retry_after_at_once(exports: dict[str, Path]) -> None:  # noqa: F811
    """One worker, at most one waiting: of four simultaneous requests to a slow scorer two are
    scored (the first, then the one that waited) and two refused at once, with `Retry-After`."""
    scorer = Scorer.load(exports["din"])
    score = scorer.score

    def slow(request: Any) -> Any:
        time.sleep(0.5)
        return score(request)

    scorer.score = slow  # type: ignore[method-assign]
    pool = InlinePool(scorer, workers=1, max_queue=1)
    app = create_app(pool)
    request, content = _body()

    async def scenario() -> list[httpx.Response]:
        await pool.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def post(delay: float) -> tuple[float, httpx.Response]:
                await asyncio.sleep(delay)
                started = time.perf_counter()
                response = await client.post("/score", content=content)
                return time.perf_counter() - started, response

            return await asyncio.gather(*(post(0.05 * i) for i in range(4)))

    results = asyncio.run(scenario())
    statuses = [response.status_code for _, response in results]
    assert statuses == [200, 200, 503, 503], [r.text for _, r in results]
    for seconds, response in results[2:]:
        assert seconds < 0.3  # refused without waiting for a worker
        assert int(response.headers["retry-after"]) >= 1
        assert "--max-queue 1" in response.json()["error"]
    expected = score(request)
    for _, response in results[:2]:
        np.testing.assert_allclose(response.json()["probabilities"], expected.probabilities,
                                   rtol=0, atol=SAME)  # fmt: skip
    assert pool.stats()["overloaded"] == 2 and pool.stats()["answered"] == 2


def test_a_worker_process_that_dies_is_replaced(exports: dict[str, Path]) -> None:  # noqa: F811
    pool = process_pool(exports["din"], workers=1)
    request, content = _body()
    expected = Scorer.load(exports["din"]).score(request)

    async def scenario() -> tuple[list[Any], dict[str, Any]]:
        await pool.start()
        try:
            first = await pool.submit("/score", content)
            (pid,) = pool.stats()["worker_pids"]
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            answers: list[Any] = [first]
            try:
                answers.append(await pool.submit("/score", content))
            except Overloaded as refused:
                answers.append(refused)
            deadline = time.monotonic() + 120
            while pool.stats()["workers_ready"] < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            answers.append(await pool.submit("/score", content))
            stats = pool.stats()
            assert stats["worker_pids"] != [pid]
            return answers, stats
        finally:
            await pool.stop()

    (first, during, after), stats = asyncio.run(scenario())
    assert first.status == 200 and after.status == 200
    assert isinstance(during, Overloaded) and "worker stopped" in str(during)
    for answer in (first, after):
        np.testing.assert_allclose(json.loads(answer.body)["probabilities"],
                                   expected.probabilities, rtol=0, atol=SAME)  # fmt: skip
    assert stats["worker_restarts"] == 1 and stats["workers_ready"] == 1


def test_workers_run_the_threads_they_were_given(exports: dict[str, Path]) -> None:  # noqa: F811
    pool = process_pool(exports["din"], workers=2)

    async def scenario() -> dict[str, Any]:
        await pool.start()
        try:
            return pool.stats()
        finally:
            await pool.stop()

    stats = asyncio.run(scenario())
    assert stats["workers_ready"] == 2 and stats["worker_threads"] == [1, 1]
    assert stats["threads_per_worker"] == 1 and len(set(stats["worker_pids"])) == 2


def test_lifeseq_serve_sizes_its_pool_and_stops_its_workers(
    exports: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """`lifeseq serve --workers 2 --threads-per-worker 1 --max-queue 3`: the second start-up
    line and `/metadata` give the pool; SIGTERM stops the server and its workers."""
    port = _free_port()
    log = tmp_path / "serve.log"
    args = ["--port", str(port), "--workers", "2", "--threads-per-worker", "1", "--max-queue", "3"]
    with open(log, "w") as out:
        process = subprocess.Popen(_serve(exports["din"], *args), cwd=REPO_ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not bench_http._healthy(url):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        serving = httpx.get(f"{url}/metadata", timeout=30).json()["serving"]
        assert (serving["kind"], serving["workers"], serving["max_queue"]) == ("processes", 2, 3)
        assert serving["worker_threads"] == [1, 1]
        pids = serving["worker_pids"]
    finally:
        process.terminate()
        rc = process.wait(60)
    text = log.read_text()
    assert rc == 0, text
    assert re.search(r"^scoring: 2 worker processes × 1 thread on \d+ cores?; at most 3 requests "
                     r"wait", text, re.MULTILINE), text  # fmt: skip
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Traceback" not in text


def test_the_load_test_runs_past_the_queue_and_gets_only_200_and_503(
    exports: dict[str, Path],  # noqa: F811
) -> None:
    payload = bench_http.run(exports["din"], histories=[40], candidates=[6], requests=12,
                             concurrency=[1, 2], distinct=5, warmup=1, timeout_s=30,
                             server_args=["--workers", "1", "--max-queue", "1"],
                             overload=True)  # fmt: skip
    overload = payload["overload"]
    assert overload["concurrency"] == 1 + 1 + bench_http.OVERLOAD_EXTRA
    assert set(overload["statuses"]) == {"200", "503"} and overload["errors"] == 0
    assert overload["same_scores"]
    assert payload["targets"]["overload_only_200_and_503"] is True
    assert payload["targets"]["zero_errors"] is True  # 2 connections: 1 scored, 1 waiting
