"""HTTP front of `lifeseq serve`: reads requests and hands their bodies to a scoring pool
(`serving.pool`), which answers them (Starlette; `lifeseq serve` runs it under uvicorn).

    POST /score       CTR exports: history + candidates → probabilities, logits, OOV counts
    POST /recommend   sequential exports: history → top-k items and scores, OOV counts
    GET  /health      200 {"status": "ok", "model", "family", "workers_ready"} while a worker
                      can score; 503 {"status": "unavailable", ...} while none can
    GET  /metadata    the export manifest's model, versions, format_version and checkpoint,
                      the request limits, whether the AOTInductor packages serve (`compiled`),
                      and the pool (`serving`: workers, threads per worker, queue limit, load)

Request bodies are JSON objects whose fields are those of `CtrRequest` / `NextItemRequest`
(`serving.handler` checks and scores them). Every error answers `{"error": "..."}` naming the
field or limit:

    400  the body is not JSON
    404  no such endpoint;  405  the endpoint takes another method
    409  /score on a sequential export, /recommend on a CTR export (names the right endpoint)
    413  the body is larger than `max_body_bytes`: refused unparsed (unread if Content-Length says so)
    422  not an object, an unknown / missing / mistyped field, or the scorer's `RequestError`
         (bad elements, unequal lengths, timestamps out of order, a request over the limits)
    500  a bug: a generic message, the traceback logged by the server
    503  the pool's queue is full (or no worker runs): `Retry-After` says when to try again

Concurrency: the event loop only reads bodies and moves bytes; a pool of workers, each scoring
one request at a time, does the JSON parsing, checking and scoring (`serving.pool`), so the
loop stays free to answer `/health`, refuse oversized bodies and shed load while requests are
scored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lifeseq.serving.handler import INTERNAL_ERROR, Answer, ApiError, family_error
from lifeseq.serving.pool import Overloaded, ScoringPool
from lifeseq.serving.scorer import RequestLimits

logger = logging.getLogger(__name__)

#: Bytes a history event or candidate may take per field in the JSON body (a raw id or an epoch
#: second with quotes, separator and room to spare), for the default body limit.
BYTES_PER_VALUE = 64
#: History fields of a CTR request (each up to `max_history_events` values).
HISTORY_FIELDS = 3
#: Room in the default body limit for field names, scalars and whitespace.
BODY_MARGIN = 1 << 16
ENDPOINTS = "GET /health, GET /metadata, POST /score (CTR), POST /recommend (sequential)"


def default_max_body_bytes(limits: RequestLimits) -> int:
    """The largest body a request within `limits` needs: `BYTES_PER_VALUE` per value of the
    three history fields and the candidates, plus `BODY_MARGIN`."""
    values = HISTORY_FIELDS * limits.max_history_events + limits.max_candidates
    return BYTES_PER_VALUE * values + BODY_MARGIN


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    pool: ScoringPool,
    max_body_bytes: int | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The ASGI app serving `pool` (see the module docstring); the pool starts with the app
    (its lifespan) and stops with it, after the requests in flight are answered.

    Args:
        pool: the scoring workers (`serving.pool.ProcessPool`, or `InlinePool` in-process).
        max_body_bytes: larger request bodies are refused with 413 (default:
            `default_max_body_bytes(pool.info.limits)`).
        on_ready: called once every worker can score (e.g. to print the start-up line).

    Raises:
        ValueError: `max_body_bytes` below 1.
    """
    info = pool.info
    body_limit = default_max_body_bytes(info.limits) if max_body_bytes is None else max_body_bytes
    if body_limit < 1:
        raise ValueError(f"max_body_bytes: expected >= 1, got {body_limit}")
    limits = {
        "max_history_events": info.limits.max_history_events,
        "max_candidates": info.limits.max_candidates,
        "max_body_bytes": body_limit,
    }

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit:
            raise ApiError(413, _too_large(int(declared)))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > body_limit:
                raise ApiError(413, _too_large(size, more=True))
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(size: int, more: bool = False) -> str:
        return (
            f"request body: {'more than ' if more else ''}{size:,} bytes exceed the limit "
            f"max_body_bytes={body_limit:,} (max_history_events="
            f"{limits['max_history_events']:,}, max_candidates={limits['max_candidates']:,}); "
            "send fewer events or candidates, or start the server with a larger --max-body-bytes"
        )

    def scoring(endpoint: str) -> Callable[[Request], Awaitable[Response]]:
        async def score(request: Request) -> Response:
            try:
                refusal = family_error(endpoint, info.family, info.name)
                if refusal:
                    raise refusal
                answer = await pool.submit(endpoint, await read_body(request))
            except ApiError as err:
                return _error(err.status, err.message)
            except Overloaded as err:
                return _error(503, str(err), {"Retry-After": str(err.retry_after_s)})
            except ClientDisconnect:
                return _error(400, "request body: the client disconnected while sending it")
            except Exception:
                logger.exception("POST %s failed", endpoint)
                return _error(500, INTERNAL_ERROR)
            return _answer(answer)

        return score

    async def health(request: Request) -> JSONResponse:
        stats = pool.stats()
        ready = stats["workers_ready"] > 0
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "model": info.name,
             "family": info.family, "workers_ready": stats["workers_ready"]},
            status_code=200 if ready else 503,
        )  # fmt: skip

    async def metadata(request: Request) -> JSONResponse:
        sections = ("model", "versions", "format_version", "checkpoint")
        return JSONResponse({**{key: info.manifest.get(key) for key in sections},
                             "limits": limits, "compiled": info.compiled,
                             "serving": pool.stats()})  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await pool.stop()

    routes = [
        Route("/score", scoring("/score"), methods=["POST"]),
        Route("/recommend", scoring("/recommend"), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metadata", metadata, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error},
                     lifespan=lifespan)  # fmt: skip


def _answer(answer: Answer) -> Response:
    """A worker's answer as the HTTP response (its JSON bytes as they are)."""
    return Response(answer.body, status_code=answer.status, media_type="application/json",
                    headers=answer.headers or None)  # fmt: skip


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's routing errors (404, 405) as JSON naming the endpoints."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = f"{path}: no such endpoint; endpoints: {ENDPOINTS}"
    elif exc.status_code == 405:
        allowed = sorted((exc.headers or {}).get("Allow", "").replace(" ", "").split(","))
        message = f"{path}: {request.method} not allowed, use {', '.join(allowed)}"
    else:
        message = f"{path}: {exc.detail}"
    return _error(exc.status_code, message, dict(exc.headers or {}))


__all__ = ["create_app", "default_max_body_bytes"]
