"""Reference scorer: loads an export (`serving.artifacts`) and answers requests with the
trained model's numbers.

    scorer = Scorer.load("EXPORT")                         # checks every file's sha256
    scorer.score(CtrRequest(history_items=[...], history_behaviors=[...], history_ts=[...],
                            candidates=[...], request_ts=...))   # SIM / ETA / TWIN / DIN
    scorer.recommend(NextItemRequest(history_items=[...], history_ts=[...], request_ts=..., k=10,
                                     user_id=...))   # user_id: models with a user table

Requests carry raw ids (as in the event logs); the exported vocabularies map them, unknown ids
to the OOV id 1. An item's category is the item vocabulary's `category_id`. Histories keep the
most recent `max_history` (CTR) / `max_len` (sequential) events, as training did. The dense
model runs as the exported `torch.export` program (`dense/*.pt2`); its inputs are filled as the
manifest's `request` section says, whatever the model: id fields of the request, embedding
rows of a feature's table (memory-mapped shards) at a field's ids, rows of a hashed table (the
user table: `features.batch.user_hash` of the request's raw `user_id`, any user, no OOV) or
rows of an item cache (e.g. TWIN's ESU keys) at the history's items.

An export of an incremental-state model (MIMN) also keeps a user's state per event instead of
re-reading the history (`update` and `score_state` programs, `state/` initial state):

    state = scorer.initial_state()                         # name → float32 array
    state = scorer.update_state(state, "i17", "view", 1700000000)   # one event
    scorer.score_state(state, candidates=["i5", "i77"], request_ts=1700007200)
    save_state("u42.npz", state); state = load_state("u42.npz")     # plain .npz, no pickle

Malformed requests raise `RequestError` naming the field; nothing is guessed.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from lifeseq.features.batch import user_hash
from lifeseq.models.blocks.user_embedding import USER_HASH_FIELD, hashed_rows
from lifeseq.serving.artifacts import ExportError, ShardedRows, read_manifest, verify_files
from lifeseq.serving.compiled import load_package

PAD_ID = 0
OOV_ID = 1
FIRST_ITEM_ID = 2
#: Extra items the float32 pass of `recommend` keeps beyond 4·k for the float64 re-score.
PRESELECT_MARGIN = 64


class RequestError(ValueError):
    """A malformed request (the message names the field)."""


@dataclass(frozen=True)
class RequestLimits:
    """Sizes a request may have; a larger one is refused before any parsing (a request with
    10^6 events is a mistake or an attack, not a slow score).

    Attributes:
        max_history_events: events of one request's history (the model itself reads only the
            most recent `max_history` / `max_len` of them).
        max_candidates: candidates of one CTR request, and `k` of a next-item request.
    """

    max_history_events: int = 100_000
    max_candidates: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_history_events", "max_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"RequestLimits.{name}: expected >= 1, got {getattr(self, name)}")

    def check(self, field_name: str, value: Any, limit_name: str) -> None:
        """Refuse `value` (a list) longer than the limit `limit_name`, naming both.

        Raises:
            RequestError: too long, or not a list.
        """
        limit = getattr(self, limit_name)
        size = len(_sequence(field_name, value))
        if size > limit:
            raise RequestError(
                f"{field_name}: {size:,} entries exceed the limit {limit_name}={limit:,}; "
                "send fewer (the model reads only the most recent events) or raise the limit"
            )


@dataclass(frozen=True)
class CtrRequest:
    """One user's history and the candidates to score (lifelong CTR models).

    Attributes:
        history_items: raw item ids of the user's events, oldest first (may be empty).
        history_behaviors: raw behavior of each event (e.g. `click`).
        history_ts: epoch seconds of each event, non-decreasing.
        candidates: raw item ids to score (at least one).
        request_ts: epoch seconds of the request, >= the last event's.
    """

    history_items: Sequence[Any]
    history_behaviors: Sequence[Any]
    history_ts: Sequence[int]
    candidates: Sequence[Any]
    request_ts: int


@dataclass(frozen=True)
class NextItemRequest:
    """One user's history, for the top-k next items (sequential models).

    Attributes:
        history_items: raw item ids, oldest first (at least one).
        history_ts: epoch seconds of each event, non-decreasing.
        request_ts: epoch seconds of the request, >= the last event's.
        k: items to return.
        exclude_history: leave out every item of the history (as evaluation does).
        user_id: the raw user id (string or integer, as in the event logs); required by a
            model with a user table, which hashes it (an unknown user is hashed too).
    """

    history_items: Sequence[Any]
    history_ts: Sequence[int]
    request_ts: int
    k: int = 10
    exclude_history: bool = True
    user_id: Any = None


@dataclass(frozen=True)
class CtrScores:
    """Scores of a `CtrRequest`'s candidates, in request order.

    Attributes:
        logits: (C,) float32 model logits.
        probabilities: (C,) float32 sigmoid of the logits.
        oov: counts of unknown raw ids, by field.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    oov: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendations:
    """Top-k next items of a `NextItemRequest`, best first.

    Attributes:
        items: raw item ids.
        ids: (k,) int64 vocab ids.
        scores: (k,) float32 inner products with the user embedding.
        oov: counts of unknown raw ids in the history.
    """

    items: list[str]
    ids: np.ndarray
    scores: np.ndarray
    oov: dict[str, int] = field(default_factory=dict)


# --- request checks ---------------------------------------------------------------------------


def _sequence(name: str, value: Any) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise RequestError(f"{name}: expected a list, got {type(value).__name__}")
    return value


def _raw_ids(name: str, value: Any) -> list[str]:
    """The raw ids as strings (ints as their decimal strings)."""
    values = _sequence(name, value)
    types = set(map(type, values))
    if types <= {str}:
        return list(values)
    if types <= {int} or (isinstance(values, np.ndarray) and values.dtype.kind in "iu"):
        return list(map(str, values))
    for i, raw in enumerate(values):
        if isinstance(raw, bool) or not isinstance(raw, str | numbers.Integral):
            raise RequestError(f"{name}[{i}]: expected a string or integer id, got {raw!r}")
    return [str(raw) for raw in values]


def _arrow_strings(values: Sequence[Any]) -> pa.StringArray | None:
    """`values` as an Arrow string array when every element is a `str` (Arrow infers the type
    while it converts, ~25 ns an id), else None: integers, or a bad element (bytes, None, a
    float...), which `_raw_ids` then converts or names."""
    if len(values) == 0:
        return pa.array([], type=pa.string())
    try:
        strings = pa.array(values)
    except (pa.ArrowException, OverflowError):  # mixed types; an integer beyond int64
        return None
    return strings if strings.type == pa.string() and not strings.null_count else None


def _timestamps(name: str, value: Any, request_ts: Any) -> tuple[np.ndarray, int]:
    values = _sequence(name, value)
    integers = set(map(type, values)) <= {int} or (
        isinstance(values, np.ndarray) and values.dtype.kind in "iu"
    )
    for i, ts in enumerate(() if integers else values):
        if isinstance(ts, bool) or not isinstance(ts, numbers.Integral):
            raise RequestError(f"{name}[{i}]: expected integer epoch seconds, got {ts!r}")
    if isinstance(request_ts, bool) or not isinstance(request_ts, numbers.Integral):
        raise RequestError(f"request_ts: expected integer epoch seconds, got {request_ts!r}")
    try:
        ts = np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise RequestError(f"{name}: a timestamp is outside int64; send epoch seconds") from None
    if int(request_ts) >= 1 << 63 or int(request_ts) < -(1 << 63):
        raise RequestError(f"request_ts: {int(request_ts)} is outside int64; send epoch seconds")
    if ts.size > 1 and bool((np.diff(ts) < 0).any()):
        at = int(np.argmax(np.diff(ts) < 0)) + 1
        raise RequestError(
            f"{name}: timestamps out of order at position {at} ({int(ts[at - 1])} then "
            f"{int(ts[at])}); send events oldest first"
        )
    if ts.size and int(request_ts) < int(ts[-1]):
        raise RequestError(
            f"request_ts {int(request_ts)} is before the last event ({int(ts[-1])}); a request "
            "comes after its history"
        )
    return ts, int(request_ts)


def _same_length(**fields: Sequence[Any]) -> None:
    lengths = {name: len(v) for name, v in fields.items()}
    if len(set(lengths.values())) > 1:
        raise RequestError(f"history fields differ in length: {lengths}")


# --- the scorer -------------------------------------------------------------------------------


class Vocab:
    """raw id (string) → vocab id, from an exported `vocab/{name}.parquet`.

    When every raw id is a canonical decimal integer (`"20248"`, not `"007"`: event logs'
    numeric ids), lookups take a vectorized path (`NumericIndex`): Arrow parses the request's
    ids and numpy finds them. A request of 10,000 ids then costs well under 1 ms even when the
    vocabulary is out of the CPU cache (as right after a request's program ran), against ~5 ms
    of hash probes into a 100,000-entry dict. A small vocabulary of other ids (behavior types
    such as `"click"`) is searched by Arrow (`pyarrow.compute.index_in`, which hashes the
    vocabulary each call: cheap for at most `SMALL_VOCAB` ids). Ids that are not canonical
    integers in a numeric vocabulary (`"007"`), and those of a large vocabulary of other ids,
    take the dict; every path gives the same ids.
    """

    def __init__(self, path: Path) -> None:
        table = pq.read_table(path)
        raw_ids, ids = table["raw_id"].to_pylist(), table["id"].to_pylist()
        self.ids = dict(zip(raw_ids, ids, strict=True))
        self.raw = dict(zip(ids, raw_ids, strict=True))
        self.category: np.ndarray | None = None
        if "category_id" in table.column_names:
            self.category = np.full(max(ids, default=1) + 1, OOV_ID, dtype=np.int64)
            self.category[np.asarray(ids, dtype=np.int64)] = table["category_id"].to_numpy()
        numbers = canonical_integers(raw_ids)
        self.numeric = None if numbers is None else NumericIndex(numbers, np.asarray(ids))
        self.small: tuple[pa.StringArray, np.ndarray] | None = None
        if self.numeric is None and len(raw_ids) <= SMALL_VOCAB:
            self.small = (pa.array(raw_ids, type=pa.string()), np.asarray(ids, dtype=np.int64))

    def lookup(self, raw: Sequence[str] | pa.StringArray) -> tuple[np.ndarray, int]:
        """(n,) int64 ids of `raw` ids (OOV → 1) and how many were unknown."""
        ids = None
        if self._vectorizes:
            strings = raw if isinstance(raw, pa.Array) else pa.array(raw, type=pa.string())
            ids = self._vectorized(strings)
        if ids is None:
            raw = raw.to_pylist() if isinstance(raw, pa.Array) else raw
            found = map(self.ids.get, raw, itertools.repeat(OOV_ID))
            ids = np.fromiter(found, dtype=np.int64, count=len(raw))
        return ids, int((ids == OOV_ID).sum())

    def lookup_field(self, name: str, value: Any) -> tuple[np.ndarray, int]:
        """`lookup` of a request field's raw ids (strings, or integers standing for their
        decimal strings), checked on the way.

        Raises:
            RequestError: not a list, or an element neither a string nor an integer (named).
        """
        values = _sequence(name, value)
        strings = _arrow_strings(values) if self._vectorizes else None
        return self.lookup(strings if strings is not None else _raw_ids(name, values))

    @property
    def _vectorizes(self) -> bool:
        """Whether lookups try `_vectorized` (a numeric or a small vocabulary)."""
        return self.numeric is not None or self.small is not None

    def _vectorized(self, strings: pa.StringArray) -> np.ndarray | None:
        """The ids of `strings` by `NumericIndex` or the small vocabulary's Arrow search, or
        None where neither applies (the dict's turn)."""
        if self.numeric is not None:
            numbers = canonical_integers(strings)
            return None if numbers is None else self.numeric.find(numbers)
        if self.small is not None:
            vocab_raw, vocab_ids = self.small
            at = pc.fill_null(pc.index_in(strings, value_set=vocab_raw), -1).to_numpy()
            return np.where(at >= 0, vocab_ids[np.maximum(at, 0)], OOV_ID)
        return None

    def categories(self, item_ids: np.ndarray) -> np.ndarray:
        """(n,) category ids of item ids (OOV item → OOV category)."""
        assert self.category is not None
        inside = item_ids < self.category.shape[0]
        return np.where(inside, self.category[np.where(inside, item_ids, 0)], OOV_ID)


#: A vocabulary of non-integer raw ids up to this size is searched by Arrow (`Vocab`).
SMALL_VOCAB = 4096
#: 10, 100, ..., 10^18: the decimal digits of n >= 0 are 1 + how many of them are <= n.
_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)
#: A `NumericIndex` keeps a dense table (one slot per raw value up to the largest) when it has
#: at most this many slots per id, plus `DENSE_SLACK`; else it binary-searches sorted values.
DENSE_SLOTS_PER_ID = 64
DENSE_SLACK = 1 << 20


def canonical_integers(raw: Sequence[str] | pa.StringArray) -> np.ndarray | None:
    """`raw` as int64 when every id is a canonical decimal integer (what `str(int)` writes),
    else None."""
    strings = raw if isinstance(raw, pa.Array) else pa.array(raw, type=pa.string())
    try:
        numbers = pc.cast(strings, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # A string that parses to n and is as long as str(n) is str(n) ("007", "+7", "-0" are not).
    magnitude = np.abs(numbers)  # int64 min stays negative: refused below
    canonical = _POWERS_OF_TEN.searchsorted(magnitude, side="right") + 1 + (numbers < 0)
    lengths = pc.utf8_length(strings).to_numpy(zero_copy_only=False)
    if bool((magnitude < 0).any()) or not np.array_equal(lengths, canonical):
        return None
    return numbers


class NumericIndex:
    """Integer raw id → vocab id: a dense table indexed by the raw value when the values are
    non-negative and compact (one random read per id), else a binary search in sorted values.

    Args:
        numbers: (V,) int64 raw ids.
        ids: (V,) their vocab ids.
    """

    def __init__(self, numbers: np.ndarray, ids: np.ndarray) -> None:
        self.dense: np.ndarray | None = None
        self.sorted: np.ndarray | None = None
        self.sorted_ids: np.ndarray | None = None
        top = int(numbers.max()) if numbers.size else -1
        if numbers.size == 0 or (
            int(numbers.min()) >= 0 and top < DENSE_SLOTS_PER_ID * numbers.size + DENSE_SLACK
        ):
            self.dense = np.full(max(top + 1, 1), OOV_ID, dtype=np.int64)
            self.dense[numbers] = ids
        else:
            order = np.argsort(numbers, kind="stable")
            self.sorted, self.sorted_ids = numbers[order], ids[order].astype(np.int64)

    def find(self, numbers: np.ndarray) -> np.ndarray:
        """(n,) int64 vocab ids of raw values `numbers` (unknown → OOV 1)."""
        if self.dense is not None:
            inside = (numbers >= 0) & (numbers < self.dense.shape[0])
            return np.where(inside, self.dense[np.where(inside, numbers, 0)], OOV_ID)
        assert self.sorted is not None and self.sorted_ids is not None
        at = np.minimum(np.searchsorted(self.sorted, numbers), self.sorted.size - 1)
        return np.where(self.sorted[at] == numbers, self.sorted_ids[at], OOV_ID)


def compiled_refusal(root: Path, manifest: dict[str, Any]) -> str | None:
    """Why export `root` cannot serve its AOTInductor packages (`--compiled`), or None."""
    section = manifest.get("compiled") or {}
    packages = section.get("programs") or {}
    missing = sorted(set(manifest["dense"]) - set(packages))
    if not missing:
        return None
    why = section.get("skipped", "exported before lifeseq compiled its programs")
    return (
        f"{root}: no compiled package of {missing} ({why}); export again on a machine with a "
        "C++ compiler, or serve without --compiled"
    )


class Scorer:
    """A loaded export; see the module docstring. Build with `Scorer.load`."""

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        limits: RequestLimits | None = None,
        compiled: bool = False,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.limits = limits or RequestLimits()
        self.compiled = compiled
        model = manifest["model"]
        self.family: str = model["family"]
        self.name: str = model["name"]
        self.tables = {
            name: ShardedRows.open(root, spec["shards"], spec["rows"])
            for name, spec in manifest["tables"].items()
        }
        self.caches = {
            name: ShardedRows.open(root, spec["shards"], spec["rows"])
            for name, spec in manifest["caches"].items()
        }
        self.vocab = {name: Vocab(root / spec["file"]) for name, spec in manifest["vocab"].items()}
        self.programs = (
            self._compiled_programs()
            if compiled
            else {
                name: torch.export.load(root / spec["file"]).module()
                for name, spec in manifest["dense"].items()
            }
        )
        #: Further programs of the model (`ServingSpec.programs`), by name.
        self.extra_programs = {
            name: torch.export.load(root / spec["file"]).module()
            for name, spec in manifest.get("programs", {}).items()
        }
        self._state = {
            name: np.load(root / spec["file"], allow_pickle=False)
            for name, spec in manifest.get("state", {}).items()
        }
        self.request_inputs: list[dict[str, Any]] = manifest["request"]["inputs"]
        self.feature_table = {
            feature: name
            for name, spec in manifest["tables"].items()
            for feature in spec["features"]
        }
        self.max_history = int(model.get("max_history") or 0)
        self.max_len = int(model.get("max_len") or 0)

    def _compiled_programs(self) -> dict[str, Any]:
        """The request programs as AOTInductor packages (`serving.compiled`).

        Raises:
            ExportError: the export has none (no C++ compiler at export, `--no-compile`, or
                an export from before lifeseq compiled them), saying why.
        """
        refusal = compiled_refusal(self.root, self.manifest)
        if refusal:
            raise ExportError(refusal)
        packages = self.manifest["compiled"]["programs"]
        return {name: load_package(self.root / spec["file"]) for name, spec in packages.items()}

    @staticmethod
    def load(
        root: str | Path,
        checksums: bool = True,
        limits: RequestLimits | None = None,
        compiled: bool = False,
    ) -> Scorer:
        """Open export `root`, checking every file against the manifest first.

        Args:
            root: the export directory.
            checksums: verify sha256 (False: sizes only, for very large exports).
            limits: request sizes to accept (default `RequestLimits()`).
            compiled: run the AOTInductor packages (`compiled/`) instead of the
                `torch.export` programs.

        Raises:
            ExportError: a missing, partial or corrupted file, naming it.
        """
        root = Path(root)
        manifest = read_manifest(root)
        verify_files(root, manifest, checksums=checksums)
        return Scorer(root, manifest, limits, compiled)

    # --- CTR --------------------------------------------------------------------------------

    def _rows(self, table: str, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.tables[table].take(ids))

    def program_inputs(
        self,
        ids: dict[str, np.ndarray],
        specs: list[dict[str, Any]] | None = None,
        state: dict[str, np.ndarray] | None = None,
    ) -> dict[str, torch.Tensor]:
        """A program's input dict from the request's id fields (`ids`), as its inputs (`specs`;
        default: the request program's, the manifest's `request.inputs`) say: `ids:FIELD`,
        `table:FEATURE@FIELD`, `hashed:FEATURE@FIELD` (the table's rows at `hashed_rows` of
        the 63-bit hashes in FIELD), `cache:NAME@FIELD`, `state:NAME` (`state[NAME]`, one
        user's, given a batch dimension of 1).
        """
        out: dict[str, torch.Tensor] = {}
        for spec in self.request_inputs if specs is None else specs:
            kind, _, what = spec["source"].partition(":")
            name, _, field_name = what.partition("@")
            if kind == "state" and state is not None:
                out[spec["name"]] = torch.from_numpy(np.asarray(state[name])).unsqueeze(0)
            elif kind == "ids":
                out[spec["name"]] = torch.from_numpy(ids[name])
            elif kind == "table":
                out[spec["name"]] = self._rows(self.feature_table[name], ids[field_name])
            elif kind == "hashed":
                table = self.feature_table[name]
                rows = hashed_rows(ids[field_name], int(self.manifest["tables"][table]["rows"]))
                out[spec["name"]] = self._rows(table, rows)
            elif kind == "cache":
                rows = torch.from_numpy(self.caches[name].take(ids[field_name]))
                shape = self.manifest["caches"][name]["row_shape"]
                out[spec["name"]] = rows.view(-1, *shape)
            else:
                raise ExportError(f"manifest request input {spec['name']!r}: unknown source "
                                  f"{spec['source']!r}; re-export with this lifeseq")  # fmt: skip
        return out

    def _program(self, sizes: dict[str, int]) -> torch.nn.Module:
        """The exported program for a request of `sizes`: one whose static dims match (e.g.
        `model_no_history` for a history of 0 events), else the dynamic one."""
        fallback = None
        for name, spec in self.manifest["dense"].items():
            static = spec.get("static") or {}
            if static and all(sizes.get(dim) == size for dim, size in static.items()):
                return self.programs[name]
            if not static and fallback is None:
                fallback = self.programs[name]
        assert fallback is not None, "export has no dynamic program"
        return fallback

    def ctr_inputs(self, request: CtrRequest) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """The exported program's input dict for `request`, and its OOV counts.

        Raises:
            RequestError: a malformed request.
        """
        if not isinstance(request, CtrRequest):
            raise RequestError(f"expected a CtrRequest, got {type(request).__name__}")
        self.limits.check("history_items", request.history_items, "max_history_events")
        self.limits.check("candidates", request.candidates, "max_candidates")
        item_vocab = self.vocab["item"]
        event_item, _ = item_vocab.lookup_field("history_items", request.history_items)
        event_behavior, _ = self.vocab["behavior"].lookup_field(
            "history_behaviors", request.history_behaviors
        )
        ts, request_ts = _timestamps("history_ts", request.history_ts, request.request_ts)
        _same_length(history_items=event_item, history_behaviors=event_behavior, history_ts=ts)
        target_item, oov_candidates = item_vocab.lookup_field("candidates", request.candidates)
        if len(target_item) == 0:
            raise RequestError("candidates: empty; send at least one item to score")
        keep = slice(max(len(ts) - self.max_history, 0), None)
        event_item, event_behavior, ts = event_item[keep], event_behavior[keep], ts[keep]
        oov_items = int((event_item == OOV_ID).sum())
        oov_behaviors = int((event_behavior == OOV_ID).sum())
        ids = {
            "event_item": event_item,
            "event_category": item_vocab.categories(event_item),
            "event_behavior": event_behavior,
            "event_ts": ts,
            "target_item": target_item,
            "target_category": item_vocab.categories(target_item),
            "request_ts": np.array([request_ts], dtype=np.int64),
        }
        oov = {"history_items": oov_items, "history_behaviors": oov_behaviors,
               "candidates": oov_candidates}  # fmt: skip
        return self.program_inputs(ids), oov

    def score(self, request: CtrRequest) -> CtrScores:
        """CTR scores of the request's candidates (SIM / ETA / TWIN / DIN exports).

        Raises:
            RequestError: a malformed request, or an export of a sequential model.
        """
        if self.family != "ctr":
            raise RequestError(f"score: this export is a {self.family} model ({self.name}); "
                               "use recommend()")  # fmt: skip
        inputs, oov = self.ctr_inputs(request)
        sizes = {"events": int(inputs["event_item"].numel()),
                 "candidates": int(inputs["target_item"].numel())}  # fmt: skip
        program = self._program(sizes)
        with torch.no_grad():
            logits = program(inputs).numpy().astype(np.float32)
        return CtrScores(logits, 1.0 / (1.0 + np.exp(-logits)), oov)

    # --- incremental user state -------------------------------------------------------------

    def _state_program(self, name: str) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
        if self.family != "ctr" or name not in self.extra_programs:
            raise RequestError(
                f"this export ({self.name}) keeps no incremental user state (no {name!r} "
                "program); score whole histories with score()"
            )
        return self.extra_programs[name], self.manifest["programs"][name]["inputs"]

    def initial_state(self) -> dict[str, np.ndarray]:
        """A new user's state (name → float32 array, no batch dimension), for `update_state`.

        Raises:
            RequestError: the export keeps no incremental state.
        """
        self._state_program("update")
        return {name: array.copy() for name, array in self._state.items()}

    def _check_state(self, state: dict[str, np.ndarray]) -> None:
        if not isinstance(state, dict) or set(state) != set(self._state):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise RequestError(f"state: expected tensors {sorted(self._state)}, got {got}")
        for name, expected in self._state.items():
            shape = tuple(np.shape(state[name]))
            if shape != expected.shape:
                raise RequestError(
                    f"state[{name!r}]: shape {shape}, this export's is {expected.shape} "
                    "(a state of another export?)"
                )

    def update_state(self, state: dict[str, np.ndarray], item: Any, behavior: Any,
                     ts: int) -> dict[str, np.ndarray]:  # fmt: skip
        """The user's state after one more event, through the exported `update` program (the
        model's own step: nothing else of the history is read).

        Args:
            state: the user's state (`initial_state`, or an earlier `update_state`'s).
            item: the event's raw item id.
            behavior: its raw behavior.
            ts: its epoch seconds.

        Returns:
            The new state (the given one is left unchanged).

        Raises:
            RequestError: no incremental state in this export, a state of other tensors or
                shapes, or a malformed event.
        """
        program, specs = self._state_program("update")
        self._check_state(state)
        event_item, _ = self.vocab["item"].lookup_field("item", [item])
        event_behavior, _ = self.vocab["behavior"].lookup_field("behavior", [behavior])
        event_ts, _ = _timestamps("ts", [ts], ts)
        ids = {
            "event_item": event_item,
            "event_category": self.vocab["item"].categories(event_item),
            "event_behavior": event_behavior,
            "event_ts": event_ts,
        }
        with torch.no_grad():
            out = program(self.program_inputs(ids, specs, state))
        return {name: out[name][0].numpy().astype(np.float32) for name in self._state}

    def score_state(
        self, state: dict[str, np.ndarray], candidates: Sequence[Any], request_ts: int
    ) -> CtrScores:
        """CTR scores of `candidates` from a user's state (`update_state`), through the
        exported `score_state` program.

        Raises:
            RequestError: no incremental state in this export, a state of other tensors or
                shapes, or malformed candidates.
        """
        program, specs = self._state_program("score_state")
        self._check_state(state)
        self.limits.check("candidates", candidates, "max_candidates")
        target_item, oov = self.vocab["item"].lookup_field("candidates", candidates)
        if len(target_item) == 0:
            raise RequestError("candidates: empty; send at least one item to score")
        _, request_ts = _timestamps("history_ts", [], request_ts)
        ids = {
            "target_item": target_item,
            "target_category": self.vocab["item"].categories(target_item),
            "request_ts": np.array([request_ts], dtype=np.int64),
        }
        with torch.no_grad():
            logits = program(self.program_inputs(ids, specs, state)).numpy().astype(np.float32)
        return CtrScores(logits, 1.0 / (1.0 + np.exp(-logits)), {"candidates": oov})

    # --- sequential -------------------------------------------------------------------------

    def user_embedding(self, request: NextItemRequest) -> tuple[torch.Tensor, np.ndarray, int]:
        """(d,) user embedding of the request, the history's item ids and the OOV count.

        Raises:
            RequestError: a malformed request.
        """
        if not isinstance(request, NextItemRequest):
            raise RequestError(f"expected a NextItemRequest, got {type(request).__name__}")
        self.limits.check("history_items", request.history_items, "max_history_events")
        item_ids, oov = self.vocab["item"].lookup_field("history_items", request.history_items)
        ts, request_ts = _timestamps("history_ts", request.history_ts, request.request_ts)
        _same_length(history_items=item_ids, history_ts=ts)
        if len(item_ids) == 0:
            raise RequestError("history_items: empty; a next-item request needs a history")
        seq_ids, seq_ts = item_ids[-self.max_len :], ts[-self.max_len :]
        ids = {
            "sequence_item": seq_ids,
            "key_ts": seq_ts,
            "query_ts": np.append(seq_ts[1:], np.int64(request_ts)),
        }
        if self.needs(USER_HASH_FIELD):
            ids[USER_HASH_FIELD] = np.array([self._user_hash(request.user_id)], dtype=np.int64)
        inputs = self.program_inputs(ids)
        with torch.no_grad():
            return self._program({"length": len(seq_ids)})(inputs), item_ids, oov

    def needs(self, field_name: str) -> bool:
        """Whether a request-program input reads id field `field_name`."""
        for spec in self.request_inputs:
            name, _, field_at = spec["source"].partition(":")[2].partition("@")
            if (field_at or name) == field_name:
                return True
        return False

    def _user_hash(self, user_id: Any) -> int:
        if isinstance(user_id, bool) or not isinstance(user_id, str | numbers.Integral):
            raise RequestError(
                f"user_id: this model ({self.name}) embeds the user; send the raw user id (a "
                f"string or integer; unknown users are fine), got {user_id!r}"
            )
        return user_hash(str(user_id))

    def recommend(self, request: NextItemRequest) -> Recommendations:
        """The top-k next items (sequential exports): inner product with every item's
        L2-normalized embedding, ids below 2 (padding, OOV) and, by default, the history left out.

        A float32 pass over each index shard keeps its best max(4k, k + 64) items; those are
        re-scored with float64 accumulation (as evaluation's `top_k_items`), so the returned
        scores and order match it, ties broken by the lower id.

        Raises:
            RequestError: a malformed request, k out of range, or a CTR export.
        """
        if self.family != "sequential":
            raise RequestError(f"recommend: this export is a {self.family} model ({self.name}); "
                               "use score()")  # fmt: skip
        k = request.k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise RequestError(f"k: expected a positive integer, got {k!r}")
        if k > self.limits.max_candidates:
            raise RequestError(f"k: {k:,} exceeds the limit max_candidates="
                               f"{self.limits.max_candidates:,}; ask for fewer")  # fmt: skip
        user, history_ids, oov = self.user_embedding(request)
        query32, query64 = user.float(), user.double()
        index = self.caches["item_index"]
        excluded = np.unique(history_ids) if request.exclude_history else np.empty(0, np.int64)
        shortlist = max(4 * k, k + PRESELECT_MARGIN)
        best_ids, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
        for start, shard in zip(index.starts, index.shards, strict=True):
            rows = torch.from_numpy(shard)  # torch, not numpy BLAS: one thread pool per process
            ids = np.arange(start, start + shard.shape[0], dtype=np.int64)
            keep = np.flatnonzero((ids >= FIRST_ITEM_ID) & ~np.isin(ids, excluded))
            if keep.size > shortlist:  # a float32 pass over the shard picks a shortlist ...
                rough = (rows @ query32).numpy()
                keep = keep[np.argpartition(-rough[keep], shortlist - 1)[:shortlist]]
            exact = rows[torch.from_numpy(keep)].double() @ query64  # ... scored in float64
            best_ids = np.concatenate([best_ids, ids[keep]])
            best_scores = np.concatenate([best_scores, exact.float().numpy()])
        if best_ids.size < k:
            raise RequestError(f"k={k}: only {best_ids.size} candidate items remain; lower k")
        order = np.lexsort((best_ids, -best_scores))[:k]
        ids = best_ids[order]
        raw = self.vocab["item"].raw
        return Recommendations([raw.get(int(i), str(int(i))) for i in ids], ids,
                               best_scores[order], {"history_items": oov})  # fmt: skip


def save_state(path: str | Path, state: dict[str, np.ndarray]) -> None:
    """Write a user's state (`Scorer.update_state`) to `path` as `.npz` (plain arrays, no
    pickle)."""
    with open(path, "wb") as f:
        np.savez(f, **{name: np.asarray(array) for name, array in state.items()})


def load_state(path: str | Path) -> dict[str, np.ndarray]:
    """A user's state written by `save_state` (`allow_pickle=False`)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


__all__ = [
    "CtrRequest", "CtrScores", "ExportError", "NextItemRequest", "Recommendations",
    "RequestError", "Scorer", "load_state", "save_state",
]  # fmt: skip
