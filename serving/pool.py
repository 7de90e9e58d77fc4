"""Scoring pools behind the HTTP front: a fixed number of workers, each scoring one request at a
time, and a bounded queue in front of them.

* `ProcessPool` (what `lifeseq serve` runs): `workers` processes, each a scorer with its own
  `threads_per_worker` torch intra-op threads (`serving.cores` sizes them to the cores given),
  fed request bytes over a pipe (`serving.worker_protocol`). Each worker parses its request's
  JSON, checks and scores it: no request's Python work waits for another's GIL, and a request's
  torch ops never fight another's for the cores. A worker that dies is replaced; its request
  answers 503.
* `InlinePool`: the scorer of this process, in worker threads (tests, embedding the app).

Both queue at most `max_queue` requests beyond those being scored, first come first served; a
request that finds the queue full is refused at once (`Overloaded`: the server's 503 with
`Retry-After`, the expected wait in seconds), so latency stays bounded however many clients
connect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from lifeseq.serving.handler import Answer, handle
from lifeseq.serving.scorer import RequestLimits, Scorer
from lifeseq.serving.worker_protocol import ANSWER_HEADER, HELLO, request_frame

logger = logging.getLogger(__name__)

#: Default requests waiting for a worker (beyond the ones being scored).
DEFAULT_MAX_QUEUE = 64
#: Weight of the newest service time in the running mean (for `Retry-After`).
SERVICE_EWMA = 0.1


class Overloaded(Exception):
    """No worker can take the request soon enough: the queue is full, or no worker runs.

    Attributes:
        retry_after_s: when to try again (whole seconds, at least 1).
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkerDied(Exception):
    """A worker process exited or broke the protocol while scoring a request."""


@dataclass(frozen=True)
class ExportInfo:
    """What the HTTP front knows of the export without loading it.

    Attributes:
        name: the model's name (`Twin`).
        family: `ctr` or `sequential`.
        compiled: whether the AOTInductor packages serve.
        manifest: the export's manifest.
        limits: the request limits.
    """

    name: str
    family: str
    compiled: bool
    manifest: dict[str, Any]
    limits: RequestLimits


class ScoringPool:
    """Workers behind a bounded first-come-first-served queue (see the module docstring).

    Args:
        info: the export served.
        workers: requests scored at once.
        max_queue: requests that may wait for a worker; one more is `Overloaded`.
    """

    kind = "pool"

    def __init__(self, info: ExportInfo, workers: int, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if workers < 1:
            raise ValueError(f"workers: expected >= 1, got {workers}")
        if max_queue < 0:
            raise ValueError(f"max_queue: expected >= 0, got {max_queue}")
        self.info = info
        self.workers = workers
        self.max_queue = max_queue
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        self._live = 0
        self._waiting = 0
        self._busy = 0
        self._service_s = 0.0
        self._started = False
        self.counts = {"answered": 0, "overloaded": 0, "worker_restarts": 0}

    # --- what a subclass provides ---------------------------------------------------------

    async def start(self) -> None:
        """Start every worker; return when all can score (a second call does nothing).

        Raises:
            RuntimeError: a worker did not start (the message says which and why).
        """
        if self._started:
            return
        self._started = True
        await self._start_workers()

    async def _start_workers(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop every worker (requests in flight have been answered by the server first)."""

    async def _run(self, slot: int, endpoint: str, body: bytes) -> Answer:
        """Score one request on worker `slot` (raises `WorkerDied`)."""
        raise NotImplementedError

    async def _replace(self, slot: int) -> None:
        """Start a new worker in place of the dead worker `slot` and put it back in service."""

    @property
    def threads_per_worker(self) -> int | None:
        """Torch threads of each worker (None: the process's own setting)."""
        return None

    # --- admission --------------------------------------------------------------------------

    def _ready(self, slot: int) -> None:
        self._live += 1
        self._idle.put_nowait(slot)

    def retry_after_s(self) -> int:
        """Seconds until the queue ahead of a new request has likely drained (at least 1)."""
        ahead = self._waiting + self._busy
        return max(1, math.ceil(ahead * self._service_s / max(1, self._live or self.workers)))

    async def submit(self, endpoint: str, body: bytes) -> Answer:
        """Score `body` for `endpoint` on the next free worker, in arrival order.

        Raises:
            Overloaded: `max_queue` requests already wait, or no worker is running.
        """
        if self._live == 0:
            self.counts["overloaded"] += 1
            raise Overloaded("no scoring worker is running (see the server's log)", 5)
        if self._idle.empty() and self._waiting >= self.max_queue:
            self.counts["overloaded"] += 1
            raise Overloaded(
                f"server busy: {self._busy} requests being scored and {self._waiting} waiting "
                f"(the limit, --max-queue {self.max_queue}); retry later",
                self.retry_after_s(),
            )
        self._waiting += 1
        try:
            slot = await self._idle.get()
        finally:
            self._waiting -= 1
        # Shielded: a cancelled request (client gone, server stopping) still reads its answer,
        # so the worker's stream stays in step and the worker returns to service.
        return await asyncio.shield(asyncio.ensure_future(self._score_on(slot, endpoint, body)))

    async def _score_on(self, slot: int, endpoint: str, body: bytes) -> Answer:
        self._busy += 1
        started = time.perf_counter()
        try:
            answer = await self._run(slot, endpoint, body)
        except WorkerDied as died:
            self._live -= 1
            self.counts["worker_restarts"] += 1
            logger.error("scoring worker %d stopped (%s); starting another", slot, died)
            asyncio.ensure_future(self._replace(slot))
            raise Overloaded(f"the scoring worker stopped ({died}); retry", 1) from died
        finally:
            self._busy -= 1
        elapsed = time.perf_counter() - started
        self._service_s += (
            SERVICE_EWMA * (elapsed - self._service_s) if self._service_s else elapsed
        )
        self.counts["answered"] += 1
        self._idle.put_nowait(slot)
        return answer

    def stats(self) -> dict[str, Any]:
        """Sizes and current load, for `/metadata` and `/health`."""
        return {
            "kind": self.kind,
            "workers": self.workers,
            "workers_ready": self._live,
            "threads_per_worker": self.threads_per_worker,
            "max_queue": self.max_queue,
            "waiting": self._waiting,
            "scoring": self._busy,
            "mean_service_ms": round(self._service_s * 1e3, 3),
            **self.counts,
        }


class InlinePool(ScoringPool):
    """`workers` threads of this process scoring with `scorer` (torch's own thread setting)."""

    kind = "threads"

    def __init__(self, scorer: Scorer, workers: int = 1, max_queue: int = DEFAULT_MAX_QUEUE) -> None:  # fmt: skip
        info = ExportInfo(
            scorer.name, scorer.family, scorer.compiled, scorer.manifest, scorer.limits
        )
        super().__init__(info, workers, max_queue)
        self.scorer = scorer
        self._limiter: anyio.CapacityLimiter | None = None

    async def _start_workers(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.workers)
        for slot in range(self.workers):
            self._ready(slot)

    async def _run(self, slot: int, endpoint: str, body: bytes) -> Answer:
        return await anyio.to_thread.run_sync(
            handle, self.scorer, endpoint, body, limiter=self._limiter
        )


class ProcessPool(ScoringPool):
    """`workers` scoring processes started with `command` (see the module docstring).

    Args:
        info: the export served.
        command: the worker's command line (`python -m lifeseq.jobs.serve_worker EXPORT ...`), which
            speaks `serving.worker_protocol` on its stdin / stdout.
        workers: worker processes.
        threads_per_worker: torch intra-op threads of each (`OMP_NUM_THREADS` and
            `MKL_NUM_THREADS` in its environment, set before torch loads).
        max_queue: requests that may wait for a worker.
        startup_timeout_s: how long a worker may take to load the export.
    """

    kind = "processes"

    def __init__(
        self,
        info: ExportInfo,
        command: Sequence[str],
        workers: int,
        threads_per_worker: int,
        max_queue: int = DEFAULT_MAX_QUEUE,
        startup_timeout_s: float = 300.0,
    ) -> None:
        super().__init__(info, workers, max_queue)
        if threads_per_worker < 1:
            raise ValueError(f"threads_per_worker: expected >= 1, got {threads_per_worker}")
        self.command = list(command)
        self._threads = threads_per_worker
        self.startup_timeout_s = startup_timeout_s
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._hellos: dict[int, dict[str, Any]] = {}

    @property
    def threads_per_worker(self) -> int:
        return self._threads

    def _environment(self) -> dict[str, str]:
        threads = str(self._threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    async def _spawn(self, slot: int) -> None:
        """Start worker `slot` and wait for its hello.

        Raises:
            RuntimeError: it exited, spoke out of protocol or took longer than the timeout.
        """
        process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=self._environment(),
        )  # fmt: skip
        try:
            status, body = await asyncio.wait_for(self._read(process), self.startup_timeout_s)
            hello = json.loads(body)
        except (WorkerDied, TimeoutError, ValueError) as err:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"scoring worker {slot} did not start: {err} (exit code {process.returncode}; "
                "its error is in the log above)"
            ) from None
        if status != HELLO or hello.get("family") != self.info.family:
            process.kill()
            raise RuntimeError(f"scoring worker {slot} answered {status} {hello!r}, not a hello")
        self._processes[slot] = process
        self._hellos[slot] = hello

    async def _start_workers(self) -> None:
        spawns = [self._spawn(slot) for slot in range(self.workers)]
        results = await asyncio.gather(*spawns, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        for slot in range(self.workers):
            self._ready(slot)

    def stats(self) -> dict[str, Any]:
        """The pool's numbers, plus each live worker's process id and the torch threads it
        reported when it started."""
        live = sorted(self._processes)
        return {
            **super().stats(),
            "worker_pids": [self._processes[slot].pid for slot in live],
            "worker_threads": [self._hellos[slot].get("threads") for slot in live],
        }

    async def _replace(self, slot: int) -> None:
        old = self._processes.pop(slot, None)
        if old is not None and old.returncode is None:
            old.kill()
            await old.wait()
        try:
            await self._spawn(slot)
        except (RuntimeError, OSError) as err:
            logger.error("%s", err)
            return
        self._ready(slot)

    @staticmethod
    async def _read(process: asyncio.subprocess.Process) -> tuple[int, bytes]:
        assert process.stdout is not None
        try:
            header = await process.stdout.readexactly(ANSWER_HEADER.size)
            length, status = ANSWER_HEADER.unpack(header)
            return status, await process.stdout.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as err:
            raise WorkerDied(f"no answer: {type(err).__name__}") from err

    async def _run(self, slot: int, endpoint: str, body: bytes) -> Answer:
        process = self._processes[slot]
        assert process.stdin is not None
        try:
            process.stdin.write(request_frame(endpoint, body))
            await process.stdin.drain()
        except (ConnectionError, BrokenPipeError) as err:
            raise WorkerDied(f"request not delivered: {type(err).__name__}") from err
        status, answer = await self._read(process)
        return Answer(status, answer)

    async def stop(self, timeout_s: float = 10.0) -> None:
        processes = list(self._processes.values())
        self._processes.clear()
        for process in processes:
            if process.stdin is not None and not process.stdin.is_closing():
                process.stdin.close()  # end of requests: the worker's loop returns
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._live = 0


def export_info(root: str | Path, manifest: dict[str, Any], limits: RequestLimits, compiled: bool) -> ExportInfo:  # fmt: skip
    """`ExportInfo` of an export from its manifest (nothing loaded)."""
    model = manifest["model"]
    return ExportInfo(model["name"], model["family"], compiled, manifest, limits)
