"""`lifeseq serve`: the HTTP server (`serving.server`) answers like the in-process scorer and
refuses every malformed request with a 4xx naming the field.

Two small exports built like `test_export`'s (seeded random weights): DIN (CTR) and HSTU
(sequential). Most tests run in-process through Starlette's `TestClient`; one starts the real
`lifeseq serve` subprocess, one a damaged export (it must refuse to start), one a short run of
the load test (`jobs.bench_http`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from lifeseq.jobs import bench_http
from lifeseq.models.blocks.embeddings import torchrec_available
from lifeseq.serving.artifacts import read_manifest
from lifeseq.serving.compiled import compiler_missing
from lifeseq.serving.export import export_checkpoint
from lifeseq.serving.pool import InlinePool, ProcessPool, export_info
from lifeseq.serving.scorer import RequestLimits, Scorer
from lifeseq.serving.server import create_app, default_max_body_bytes
from tests.integration.test_export import (
    SIZES,
    ctr_case,
    next_item_case,
    random_checkpoint,
    write_vocabs,
)
from tests.unit.test_dataset import write_out_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SAME = 1e-6
#: A valid CTR body's fields, each replaced by each of these JSON values in the fuzz test.
ODD_VALUES = [None, True, False, 0, -1, 1.5, 2**64, "x", "", [], [None], [[]], [{}], {}, [1.5],
              ["i2", 3], [True], [2**70], float("nan"), float("inf")]  # fmt: skip


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model → export directory, for DIN and HSTU."""
    root = tmp_path_factory.mktemp("server")
    out = root / "out"
    write_out_dir(out, SIZES, history_len=120)
    write_vocabs(out)
    result = {}
    for name in ("din", "hstu"):
        ckpt = random_checkpoint(root / f"{name}.ckpt", out, name)
        export_checkpoint(ckpt, root / f"export_{name}", compiled=False)
        result[name] = root / f"export_{name}"
    return result


@pytest.fixture(scope="module")
def scorers(exports: dict[str, Path]) -> dict[str, Scorer]:
    return {name: Scorer.load(root) for name, root in exports.items()}


def worker_command(export: Path, limits: RequestLimits | None = None) -> list[str]:
    """The command line `lifeseq serve` starts a scoring worker with."""
    limits = limits or RequestLimits()
    return [sys.executable, "-m", "lifeseq.jobs.serve_worker", str(export), "--threads", "1",
            "--max-history-events", str(limits.max_history_events),
            "--max-candidates", str(limits.max_candidates)]  # fmt: skip


def process_pool(export: Path, workers: int = 2, max_queue: int = 64) -> ProcessPool:
    """Worker processes on `export`, as `lifeseq serve` starts them."""
    info = export_info(export, read_manifest(export), RequestLimits(), compiled=False)
    return ProcessPool(info, worker_command(export), workers, 1, max_queue)


def inline(scorer: Scorer, **kwargs: Any) -> Any:
    """The app on `scorer` in this process (one scoring thread)."""
    return create_app(InlinePool(scorer), **kwargs)


@pytest.fixture(scope="module", params=["threads", "processes"])
def ctr(
    request: pytest.FixtureRequest, scorers: dict[str, Scorer], exports: dict[str, Path]
) -> Iterator[TestClient]:
    """The DIN app, scoring in this process or in two worker processes (every request test
    runs on both)."""
    pool = (
        InlinePool(scorers["din"]) if request.param == "threads" else process_pool(exports["din"])
    )
    with TestClient(create_app(pool)) as client:
        yield client


@pytest.fixture(scope="module")
def seq(scorers: dict[str, Scorer]) -> Iterator[TestClient]:
    with TestClient(inline(scorers["hstu"])) as client:
        yield client


def body_of(request: Any) -> dict[str, Any]:
    return dataclasses.asdict(request)


def valid_ctr() -> dict[str, Any]:
    return body_of(ctr_case(5, 20, 6)[0])


def valid_next_item() -> dict[str, Any]:
    return body_of(next_item_case(5, 12)[0])


def post(client: TestClient, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"content-type": "application/json"})


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, (word, message)
    return message


# --- answers ----------------------------------------------------------------------------------


def test_health_and_metadata(ctr: TestClient, seq: TestClient, exports: dict[str, Path]) -> None:
    workers = ctr.get("/metadata").json()["serving"]["workers"]
    assert ctr.get("/health").json() == {"status": "ok", "model": "LifelongCtr", "family": "ctr",
                                         "workers_ready": workers}  # fmt: skip
    assert seq.get("/health").json() == {"status": "ok", "model": "Hstu", "family": "sequential",
                                         "workers_ready": 1}  # fmt: skip
    meta = ctr.get("/metadata").json()
    manifest = read_manifest(exports["din"])
    for key in ("model", "versions", "format_version", "checkpoint"):
        assert meta[key] == manifest[key]
    defaults = RequestLimits()
    assert meta["limits"] == {
        "max_history_events": defaults.max_history_events,
        "max_candidates": defaults.max_candidates,
        "max_body_bytes": default_max_body_bytes(defaults),
    }
    assert "tables" not in meta and "files" not in meta
    serving = meta["serving"]
    assert serving["kind"] in ("threads", "processes") and serving["workers_ready"] == workers
    assert serving["max_queue"] == 64 and serving["waiting"] == serving["scoring"] == 0


@pytest.mark.parametrize(("seed", "history", "candidates"), [(0, 120, 30), (1, 0, 4), (2, 5, 1)])
def test_score_equals_the_in_process_scorer(
    ctr: TestClient, scorers: dict[str, Scorer], seed: int, history: int, candidates: int
) -> None:
    request, _ = ctr_case(seed, history, candidates)
    expected = scorers["din"].score(request)
    response = post(ctr, "/score", body_of(request))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "LifelongCtr"
    np.testing.assert_allclose(answer["probabilities"], expected.probabilities, rtol=0, atol=SAME)
    np.testing.assert_allclose(answer["logits"], expected.logits, rtol=0, atol=SAME)
    assert len(answer["logits"]) == candidates
    assert answer["oov"] == expected.oov
    assert answer["oov"] == {"history_items": int(history > 3), "history_behaviors": 0,
                             "candidates": int(candidates > 2)}  # fmt: skip


def test_recommend_equals_the_in_process_scorer(
    seq: TestClient, scorers: dict[str, Scorer]
) -> None:
    request, _ = next_item_case(3, 30)
    body = body_of(request)
    body["history_items"][4] = "never-seen"
    expected = scorers["hstu"].recommend(dataclasses.replace(request, **body))
    answer = post(seq, "/recommend", body).json()
    assert answer["items"] == expected.items and len(answer["items"]) == request.k
    np.testing.assert_allclose(answer["scores"], expected.scores, rtol=0, atol=SAME)
    assert answer["oov"] == {"history_items": 1}
    assert answer["model"] == "Hstu"
    top3 = post(seq, "/recommend", {**body, "k": 3, "exclude_history": False}).json()
    assert len(top3["items"]) == 3


def test_unknown_integer_ids_are_oov_not_errors(ctr: TestClient) -> None:
    body = {**valid_ctr(), "candidates": [10**30, 7, "i3"]}
    answer = post(ctr, "/score", body).json()
    assert answer["oov"]["candidates"] == 2 and len(answer["probabilities"]) == 3


# --- refusals ---------------------------------------------------------------------------------


def _ctr_with(**fields: Any) -> dict[str, Any]:
    return {**valid_ctr(), **fields}


BAD_CTR_BODIES = [
    (b"", 400, "not valid JSON"),
    (b"{", 400, "not valid JSON"),
    (b"nul", 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    (b"1" * 5000, 400, "not valid JSON"),
    (b"[]", 422, "expected a JSON object, got a list"),
    (b'"x"', 422, "expected a JSON object"),
    (b"null", 422, "expected a JSON object, got null"),
    ({}, 422, "history_items: missing"),
    ({k: v for k, v in valid_ctr().items() if k != "request_ts"}, 422, "request_ts: missing"),
    (_ctr_with(foo=1), 422, "foo: unknown field"),
    (_ctr_with(k=3), 422, "k: unknown field"),
    (_ctr_with(history_items="i2"), 422, "history_items: expected a list, got a string"),
    (_ctr_with(candidates={"a": 1}), 422, "candidates: expected a list, got an object"),
    (_ctr_with(request_ts="now"), 422, "request_ts: expected an integer"),
    (_ctr_with(request_ts=1.5e9), 422, "request_ts: expected an integer"),
    (_ctr_with(request_ts=True), 422, "request_ts: expected an integer, got a boolean"),
    (_ctr_with(request_ts=2**70), 422, "request_ts: 1180591620717411303424 is outside int64"),
    (_ctr_with(history_items=[None] * 20), 422, "history_items[0]"),
    (_ctr_with(history_items=[[1]] * 20), 422, "history_items[0]"),
    (_ctr_with(history_behaviors=[True] * 20), 422, "history_behaviors[0]"),
    (_ctr_with(history_ts=[1.5] * 20), 422, "history_ts[0]"),
    (_ctr_with(history_ts=["1"] * 20), 422, "history_ts[0]"),
    (_ctr_with(history_ts=[2**70] * 20), 422, "history_ts: a timestamp is outside int64"),
    (_ctr_with(history_ts=list(range(20, 0, -1))), 422, "history_ts: timestamps out of order"),
    (_ctr_with(history_ts=[1] * 19), 422, "history fields differ in length"),
    (_ctr_with(request_ts=1), 422, "request_ts 1 is before the last event"),
    (_ctr_with(candidates=[]), 422, "candidates: empty"),
    (_ctr_with(candidates=[1.5]), 422, "candidates[0]"),
    (_ctr_with(candidates=[{}]), 422, "candidates[0]"),
    (json.dumps(_ctr_with(request_ts=0)).replace(": 0}", ": NaN}").encode(), 422, "request_ts"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "words"), BAD_CTR_BODIES)
def test_malformed_ctr_bodies_get_a_4xx_naming_the_field(
    ctr: TestClient, body: Any, status: int, words: str
) -> None:
    assert_error(post(ctr, "/score", body), status, words)


BAD_NEXT_ITEM_FIELDS = [
    ({"k": 0}, "k: expected a positive integer"),
    ({"k": "5"}, "k: expected an integer, got a string"),
    ({"k": True}, "k: expected an integer, got a boolean"),
    ({"k": 10**6}, "max_candidates=10,000"),
    ({"exclude_history": 1}, "exclude_history: expected true or false"),
    ({"user_id": [1]}, "user_id: expected a string or integer"),
    ({"history_items": [], "history_ts": []}, "history_items: empty"),
    ({"history_behaviors": ["b2"]}, "history_behaviors: unknown field"),
    ({"candidates": ["i2"]}, "candidates: unknown field"),
    ({"history_ts": [1]}, "history fields differ in length"),
]


@pytest.mark.parametrize(("fields", "words"), BAD_NEXT_ITEM_FIELDS)
def test_malformed_next_item_bodies_get_a_422_naming_the_field(
    seq: TestClient, fields: dict[str, Any], words: str
) -> None:
    assert_error(post(seq, "/recommend", {**valid_next_item(), **fields}), 422, words)


def test_no_odd_value_in_any_field_reaches_a_500(ctr: TestClient, seq: TestClient) -> None:
    statuses: dict[int, int] = {}
    for client, path, valid in ((ctr, "/score", valid_ctr()),
                                (seq, "/recommend", valid_next_item())):  # fmt: skip
        for name in valid:
            for value in ODD_VALUES:
                response = post(client, path, json.dumps({**valid, name: value}).encode())
                assert response.status_code in (200, 422), (path, name, value, response.text)
                if response.status_code == 422:
                    message = response.json()["error"]
                    assert name in message or "history fields" in message, (name, value, message)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses[422] > statuses.get(200, 0) > 0  # user_id: null, "x", 0 ... are valid


def test_the_wrong_family_is_a_409_naming_the_right_endpoint(
    ctr: TestClient, seq: TestClient
) -> None:
    assert_error(post(ctr, "/recommend", valid_next_item()), 409, "ctr model", "POST /score")
    assert_error(post(seq, "/score", valid_ctr()), 409, "sequential model", "POST /recommend")


def test_unknown_paths_and_methods_answer_json(ctr: TestClient) -> None:
    assert_error(ctr.get("/nope"), 404, "/nope: no such endpoint", "POST /score")
    response = ctr.get("/score")
    assert_error(response, 405, "/score: GET not allowed, use POST")
    assert response.headers["allow"] == "POST"
    assert_error(ctr.post("/health"), 405, "POST not allowed, use GET, HEAD")


def test_ten_to_the_six_events_or_five_candidates_are_refused_by_the_limits(
    scorers: dict[str, Scorer],
) -> None:
    events = 10**6
    huge = {"history_items": ["i2"] * events, "history_behaviors": ["b2"] * events,
            "history_ts": [1_700_000_000] * events, "candidates": ["i3"],
            "request_ts": 1_700_000_000}  # fmt: skip
    content = json.dumps(huge).encode()
    with TestClient(inline(scorers["din"], max_body_bytes=len(content) + 1)) as client:
        started = time.perf_counter()
        response = post(client, "/score", content)
        assert_error(response, 422, "history_items", "1,000,000 entries",
                     "max_history_events=100,000")  # fmt: skip
        assert time.perf_counter() - started < 20  # refused after parsing, never scored
    many = _ctr_with(candidates=["i3"] * 10**5)
    with TestClient(inline(scorers["din"])) as client:
        assert_error(post(client, "/score", many), 422, "candidates", "max_candidates=10,000")
        # with the default body limit, 10^6 events are refused before the body is parsed
        assert_error(post(client, "/score", content), 413, "max_body_bytes=",
                     "max_history_events=100,000")  # fmt: skip


def test_bodies_over_the_byte_limit_are_a_413_before_parsing(scorers: dict[str, Scorer]) -> None:
    content = json.dumps(valid_ctr()).encode()
    with TestClient(inline(scorers["din"], max_body_bytes=100)) as client:
        assert_error(post(client, "/score", content), 413, "max_body_bytes=100")
        chunked = client.post("/score", content=iter([content[:60], content[60:]]))  # no length
        assert "content-length" not in chunked.request.headers
        assert_error(chunked, 413, "more than", "max_body_bytes=100")
        assert_error(post(client, "/score", b"{" * 50), 400, "not valid JSON")  # under: parsed


def test_an_unexpected_exception_is_a_logged_500(
    scorers: dict[str, Scorer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Any) -> Any:
        raise RuntimeError("a bug in the scorer")

    monkeypatch.setattr(scorers["din"], "score", broken)
    with (
        TestClient(inline(scorers["din"])) as ctr,
        caplog.at_level(logging.ERROR, "lifeseq.serving.handler"),
    ):
        message = assert_error(post(ctr, "/score", valid_ctr()), 500, "internal error")
    assert "a bug in the scorer" not in message
    assert "a bug in the scorer" in caplog.text and "POST /score failed" in caplog.text


# --- the real server --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(export: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lifeseq.jobs.cli", "serve", str(export), *args]


@pytest.fixture(scope="module")
def compiled_din(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DIN export again, with its AOTInductor packages (`compiled/`)."""
    if compiler_missing() is not None:
        pytest.skip(compiler_missing())
    target = tmp_path_factory.mktemp("compiled") / "export_din"
    manifest = read_manifest(exports["din"])
    export_checkpoint(Path(manifest["checkpoint"]["path"]), target, compiled=True)
    return target


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_lifeseq_serve_answers_over_http_and_stops(
    exports: dict[str, Path], scorers: dict[str, Scorer], tmp_path: Path, compiled: bool,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """`lifeseq serve` (and `--compiled`, the AOTInductor packages) answers like the in-process
    `torch.export` scorer, refuses bad JSON, and stops cleanly on SIGTERM."""
    port = _free_port()
    log = tmp_path / "serve.log"
    export = request.getfixturevalue("compiled_din") if compiled else exports["din"]
    flags = ["--compiled"] if compiled else []
    with open(log, "w") as out:
        process = subprocess.Popen(_serve(export, "--port", str(port), *flags), cwd=REPO_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not bench_http._healthy(url):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        request, _ = ctr_case(7, 50, 9)
        answer = httpx.post(f"{url}/score", json=body_of(request), timeout=30).json()
        np.testing.assert_allclose(answer["probabilities"],
                                   scorers["din"].score(request).probabilities, atol=SAME)  # fmt: skip
        refused = httpx.post(f"{url}/score", content=b"{", timeout=30)
        assert refused.status_code == 400 and "not valid JSON" in refused.json()["error"]
        metadata = httpx.get(f"{url}/metadata", timeout=30).json()
        assert metadata["model"]["name"] == "LifelongCtr" and metadata["compiled"] is compiled
    finally:
        process.terminate()
        rc = process.wait(30)
    text = log.read_text()
    assert rc == 0, text
    kind = "ctr, compiled" if compiled else "ctr"
    assert f"serving LifelongCtr ({kind}) from {export} on {url}\n" in text
    assert "Traceback" not in text and "POST /score" not in text  # access log off by default


def test_a_damaged_or_missing_export_refuses_to_start(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(exports["din"], damaged)
    manifest = read_manifest(damaged)
    name = next(n for n in manifest["files"] if n.startswith("tables/"))
    data = bytearray((damaged / name).read_bytes())
    data[-1] ^= 0xFF
    (damaged / name).write_bytes(bytes(data))
    for export, words in ((damaged, [name, "sha256 does not match"]),
                          (tmp_path / "nowhere", ["not a lifeseq export"])):  # fmt: skip
        done = subprocess.run(_serve(export, "--port", str(_free_port())), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert all(word in lines[0] for word in words), lines[0]
        assert "serving" not in done.stdout


def test_the_load_test_finds_no_errors_and_the_same_scores(exports: dict[str, Path]) -> None:
    payload = bench_http.run(exports["din"], histories=[40], candidates=[6], requests=12,
                             concurrency=[1, 4], distinct=5, warmup=1, timeout_s=30)  # fmt: skip
    cells = payload["cells"]
    assert [c["concurrency"] for c in cells] == [1, 4]
    for cell in cells:
        assert (cell["requests"], cell["errors"]) == (12, 0), cell["error_examples"]
        assert cell["same_scores"] and cell["max_abs_diff"] <= SAME
        assert cell["throughput_rps"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0
    table = bench_http.markdown(payload)
    assert table.count("| this | 40 (40) | 6 |") == 2 and "| NO" not in table
