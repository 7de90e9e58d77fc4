"""One scoring request, JSON bytes in, status and JSON bytes out: what a scoring worker does
with a request the HTTP front (`serving.server`) hands it (`serving.pool`).

    answer = handle(scorer, "/score", body)      # Answer(status=200, body=b'{"probabilities":...')

Field names, presence and JSON types are checked here; element types and ranges, lengths and
order by the scorer (its `RequestError`s answer 422 too). Every error is `{"error": "..."}`
naming the field or limit:

    400  the body is not JSON
    409  /score on a sequential export, /recommend on a CTR export (names the right endpoint)
    422  not an object, an unknown / missing / mistyped field, or the scorer's `RequestError`
    500  a bug: a generic message, the traceback logged (`serving.handler`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from lifeseq.serving.scorer import CtrRequest, NextItemRequest, RequestError, RequestLimits, Scorer

logger = logging.getLogger(__name__)

#: The scoring endpoints and the family of export each serves.
SCORING_ENDPOINTS = {"/score": "ctr", "/recommend": "sequential"}
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
INTERNAL_ERROR = (
    "internal error (a bug in the server, logged there); the request was not scored, please "
    "report it"
)


class ApiError(Exception):
    """A request the server refuses: its HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status and JSON body (`headers` for a 503's `Retry-After`)."""

    status: int
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def encode(payload: Any) -> bytes:
    """Compact JSON bytes, as Starlette's `JSONResponse` renders them."""
    return json.dumps(
        payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def error_answer(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    """`{"error": message}` with `status`."""
    return Answer(status, encode({"error": message}), headers or {})


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

    The size limits are checked first, so an oversized request costs nothing more.

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


def family_error(endpoint: str, family: str, name: str) -> ApiError | None:
    """The 409 of a scoring `endpoint` asked of an export of another `family`, or None."""
    if SCORING_ENDPOINTS[endpoint] == family:
        return None
    other = next(e for e, f in SCORING_ENDPOINTS.items() if f == family)
    return ApiError(409, f"{endpoint}: this export is a {family} model ({name}); use POST {other}")


def _payload(scorer: Scorer, endpoint: str, body: bytes) -> dict[str, Any]:
    refusal = family_error(endpoint, scorer.family, scorer.name)
    if refusal:
        raise refusal
    parsed = parse_json(body)
    if endpoint == "/score":
        scores = scorer.score(build_request(CtrRequest, parsed, scorer.limits))
        return {"probabilities": scores.probabilities.tolist(), "logits": scores.logits.tolist(),
                "oov": scores.oov, "model": scorer.name}  # fmt: skip
    recs = scorer.recommend(build_request(NextItemRequest, parsed, scorer.limits))
    return {"items": recs.items, "scores": recs.scores.tolist(), "oov": recs.oov,
            "model": scorer.name}  # fmt: skip


def handle(scorer: Scorer, endpoint: str, body: bytes) -> Answer:
    """Score the request `body` sent to `endpoint` (`/score` or `/recommend`); never raises:
    a refusal is its 4xx, any other exception a logged 500."""
    try:
        return Answer(200, encode(_payload(scorer, endpoint, body)))
    except ApiError as err:
        return error_answer(err.status, err.message)
    except RequestError as err:
        return error_answer(422, str(err))
    except Exception:
        logger.exception("POST %s failed", endpoint)
        return error_answer(500, INTERNAL_ERROR)
