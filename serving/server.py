"""HTTP server on a `serving.Scorer`: JSON in, JSON out (Starlette; `lifeseq serve` runs it
under uvicorn).

    POST /score       CTR exports: history + candidates → probabilities, logits, OOV counts
    POST /recommend   sequential exports: history → top-k items and scores, OOV counts
    GET  /health      {"status": "ok", "model": ..., "family": ...}
    GET  /metadata    the export manifest's model, versions, format_version and checkpoint,
                      the request limits, and whether the AOTInductor packages serve (`compiled`)

Request bodies are JSON objects whose fields are those of `CtrRequest` / `NextItemRequest`
(raw ids as strings or integers, epoch seconds as integers). Every error answers
`{"error": "..."}` naming the field or limit:

    400  the body is not JSON
    404  no such endpoint;  405  the endpoint takes another method
    409  /score on a sequential export, /recommend on a CTR export (names the right endpoint)
    413  the body is larger than `max_body_bytes`: refused unparsed (unread if Content-Length says so)
    422  not an object, an unknown / missing / mistyped field, or the scorer's `RequestError`
         (bad elements, unequal lengths, timestamps out of order, a request over the limits)
    500  a bug: a generic message, the traceback logged by the server

Concurrency: requests are read, parsed and answered on the event loop; scoring runs in a worker
thread (`anyio.to_thread`) behind a capacity limiter of `scoring_threads` (default 1). One
scoring thread keeps the scorer's use serial (its numbers cannot depend on what else is in
flight, and nothing inside it has to be thread-safe), while torch's own intra-op threads use
the cores for each request; the event loop stays free to answer `/health`, refuse oversized or
malformed bodies and parse the next request's JSON while a request is scored (torch releases
the GIL). More scoring threads trade that guarantee for throughput: on the 2-core development
machine, TWIN at 10,000 events served 26 req/s with one scoring thread and one torch thread,
35 with one scoring thread and two torch threads, 42 with two scoring threads of one torch
thread each (same scores; `lifeseq bench http --scoring-threads`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.scorer import CtrRequest, NextItemRequest, RequestError, RequestLimits, Scorer

logger = logging.getLogger(__name__)

#: Bytes a history event or candidate may take per field in the JSON body (a raw id or an epoch
#: second with quotes, separator and room to spare), for the default body limit.
BYTES_PER_VALUE = 64
#: History fields of a CTR request (each up to `max_history_events` values).
HISTORY_FIELDS = 3
#: Room in the default body limit for field names, scalars and whitespace.
BODY_MARGIN = 1 << 16
ENDPOINTS = "GET /health, GET /metadata, POST /score (CTR), POST /recommend (sequential)"
#: What each request field must be in JSON: a list, an integer, a boolean or an id.
FIELD_KINDS = {
    "history_items": "list", "history_behaviors": "list", "history_ts": "list",
    "candidates": "list", "request_ts": "int", "k": "int", "exclude_history": "bool",
    "user_id": "id",
}  # fmt: skip
_KIND_TEXT = {
    "list": "a list",
    "int": "an integer",
    "bool": "true or false",
    "id": "a string or integer (or null)",
}


def default_max_body_bytes(limits: RequestLimits) -> int:
    """The largest body a request within `limits` needs: `BYTES_PER_VALUE` per value of the
    three history fields and the candidates, plus `BODY_MARGIN`."""
    values = HISTORY_FIELDS * limits.max_history_events + limits.max_candidates
    return BYTES_PER_VALUE * values + BODY_MARGIN


class ApiError(Exception):
    """A request the server refuses: its HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`.

    Raises:
        ApiError: 400 when `body` is not JSON (or nested too deep to parse), 422 when it is
            JSON but not an object.
    """
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, huge integers
        detail = str(err) if isinstance(err, ValueError) else "nested too deeply"
        raise ApiError(400, f"request body: not valid JSON ({detail}); send a JSON object") from err
    if not isinstance(value, dict):
        raise ApiError(422, f"request body: expected a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _check_kind(name: str, value: Any) -> None:
    kind = FIELD_KINDS[name]
    if kind == "list":
        ok = isinstance(value, list)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "bool":
        ok = isinstance(value, bool)
    else:
        ok = value is None or (isinstance(value, str | int) and not isinstance(value, bool))
    if not ok:
        raise ApiError(422, f"{name}: expected {_KIND_TEXT[kind]}, got {_json_type(value)}")


def build_request(
    cls: type[CtrRequest] | type[NextItemRequest], body: dict[str, Any], limits: RequestLimits
) -> CtrRequest | NextItemRequest:
    """The scorer request of class `cls` from a parsed JSON object.

    Field names, presence and JSON types are checked here; element types and ranges, lengths
    and order by the scorer (its `RequestError`s answer 422 too). The size limits are checked
    first, so an oversized request costs nothing more.

    Raises:
        ApiError: 422 naming an unknown, missing or mistyped field, or the limit a field exceeds.
    """
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise ApiError(422, f"{unknown[0]}: unknown field; {cls.__name__} fields are "
                            f"{', '.join(names)}")  # fmt: skip
    for f in fields:
        if f.name not in body:
            if f.default is dataclasses.MISSING:
                raise ApiError(422, f"{f.name}: missing; {cls.__name__} requires it")
            continue
        _check_kind(f.name, body[f.name])
    try:
        for name in ("history_items", "history_behaviors", "history_ts"):
            if name in body:
                limits.check(name, body[name], "max_history_events")
        if "candidates" in body:
            limits.check("candidates", body["candidates"], "max_candidates")
    except RequestError as err:
        raise ApiError(422, str(err)) from err
    return cls(**body)


def create_app(
    scorer: Scorer, max_body_bytes: int | None = None, scoring_threads: int = 1
) -> Starlette:
    """The ASGI app serving `scorer` (see the module docstring).

    Args:
        scorer: a loaded export.
        max_body_bytes: larger request bodies are refused with 413 (default:
            `default_max_body_bytes(scorer.limits)`).
        scoring_threads: requests scored at once, each in a worker thread.

    Raises:
        ValueError: `max_body_bytes` or `scoring_threads` below 1.
    """
    body_limit = default_max_body_bytes(scorer.limits) if max_body_bytes is None else max_body_bytes
    if body_limit < 1:
        raise ValueError(f"max_body_bytes: expected >= 1, got {body_limit}")
    if scoring_threads < 1:
        raise ValueError(f"scoring_threads: expected >= 1, got {scoring_threads}")
    limiter = anyio.CapacityLimiter(scoring_threads)
    limits = {
        "max_history_events": scorer.limits.max_history_events,
        "max_candidates": scorer.limits.max_candidates,
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

    def family_check(endpoint: str, family: str, other: str) -> None:
        if scorer.family != family:
            raise ApiError(409, f"{endpoint}: this export is a {scorer.family} model "
                                f"({scorer.name}); use POST {other}")  # fmt: skip

    async def score_ctr(request: Request) -> dict[str, Any]:
        family_check("/score", "ctr", "/recommend")
        ctr = build_request(CtrRequest, parse_json(await read_body(request)), scorer.limits)
        scores = await anyio.to_thread.run_sync(scorer.score, ctr, limiter=limiter)
        return {"probabilities": scores.probabilities.tolist(), "logits": scores.logits.tolist(),
                "oov": scores.oov, "model": scorer.name}  # fmt: skip

    async def recommend(request: Request) -> dict[str, Any]:
        family_check("/recommend", "sequential", "/score")
        body = parse_json(await read_body(request))
        next_item = build_request(NextItemRequest, body, scorer.limits)
        recs = await anyio.to_thread.run_sync(scorer.recommend, next_item, limiter=limiter)
        return {"items": recs.items, "scores": recs.scores.tolist(), "oov": recs.oov,
                "model": scorer.name}  # fmt: skip

    async def health(request: Request) -> dict[str, Any]:
        return {"status": "ok", "model": scorer.name, "family": scorer.family}

    async def metadata(request: Request) -> dict[str, Any]:
        manifest = scorer.manifest
        sections = ("model", "versions", "format_version", "checkpoint")
        return {**{key: manifest.get(key) for key in sections}, "limits": limits,
                "compiled": scorer.compiled}  # fmt: skip

    routes = [
        Route("/score", _json_endpoint(score_ctr), methods=["POST"]),
        Route("/recommend", _json_endpoint(recommend), methods=["POST"]),
        Route("/health", _json_endpoint(health), methods=["GET"]),
        Route("/metadata", _json_endpoint(metadata), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


def _json_endpoint(
    handler: Callable[[Request], Awaitable[dict[str, Any]]],
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """`handler`'s dict as a JSON response; `ApiError` and `RequestError` as their 4xx, any other
    exception as a logged 500."""

    async def endpoint(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await handler(request))
        except ApiError as err:
            return _error(err.status, err.message)
        except RequestError as err:
            return _error(422, str(err))
        except ClientDisconnect:
            return _error(400, "request body: the client disconnected while sending it")
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal error (a bug in the server, logged there); the request "
                               "was not scored, please report it")  # fmt: skip

    return endpoint


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


__all__ = ["ApiError", "build_request", "create_app", "default_max_body_bytes", "parse_json"]
