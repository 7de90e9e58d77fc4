"""`lifeseq serve`'s pool is sized to the cores the process may use (`serving.cores`): the CPU
affinity mask capped by a cgroup v1 or v2 CPU quota, split into workers × threads that never
outnumber those cores by default; the worker frames round-trip (`serving.worker_protocol`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lifeseq.serving.cores import MAX_DEFAULT_WORKERS, cgroup_cpu_limit, pool_size
from lifeseq.serving.worker_protocol import (
    ANSWER_HEADER,
    HELLO,
    answer_frame,
    request_frame,
    serve_requests,
)

pytestmark = pytest.mark.unit


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_cgroup_v2_quota_is_read_up_the_hierarchy(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    cgroup = tmp_path / "cgroup"
    _tree(proc, {"cgroup": "0::/kubepods/pod1/ctr\n"})
    _tree(cgroup, {"kubepods/pod1/ctr/cpu.max": "max 100000\n",
                   "kubepods/pod1/cpu.max": "150000 100000\n",
                   "kubepods/cpu.max": "400000 100000\n"})  # fmt: skip
    assert cgroup_cpu_limit(cgroup, proc) == pytest.approx(1.5)


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    cgroup = tmp_path / "cgroup"
    _tree(proc, {"cgroup": "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n"})
    _tree(cgroup, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
                   "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                   "cpu,cpuacct/docker/cpu.cfs_quota_us": "-1\n",
                   "cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n"})  # fmt: skip
    assert cgroup_cpu_limit(cgroup, proc) == pytest.approx(1.0)
    _tree(cgroup, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n"})
    assert cgroup_cpu_limit(cgroup, proc) is None
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "none") is None


@pytest.mark.parametrize(
    ("cores", "workers", "threads", "expected"),
    [
        (2, None, None, (2, 1)),  # the development machine: one single-threaded worker per core
        (1, None, None, (1, 1)),  # a quota of one core: nothing oversubscribed
        (32, None, None, (MAX_DEFAULT_WORKERS, 4)),  # more cores: threads per worker
        (8, 2, None, (2, 4)),
        (8, None, 2, (4, 2)),
        (2, 4, 2, (4, 2)),  # given: kept, and flagged as oversubscribed
    ],
)
def test_pool_size(
    cores: int, workers: int | None, threads: int | None, expected: tuple[int, int]
) -> None:
    size = pool_size(cores, workers, threads)
    assert (size.workers, size.threads_per_worker) == expected
    assert size.oversubscribed == (cores == 2 and workers == 4)  # only when asked for


def test_pool_size_refuses_zero() -> None:
    with pytest.raises(ValueError, match="--workers: expected >= 1, got 0"):
        pool_size(2, workers=0)


class _EchoScorer:
    """Stands in for a `Scorer`: `serve_requests` hands each body to `handle`."""

    family, name = "ctr", "Echo"


def test_frames_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    from lifeseq.serving import handler, worker_protocol

    def echo(scorer: object, endpoint: str, body: bytes) -> handler.Answer:
        return handler.Answer(200 if endpoint == "/score" else 409, endpoint.encode() + body)

    monkeypatch.setattr(worker_protocol, "handle", echo)
    requests = io.BytesIO(request_frame("/score", b"abc") + request_frame("/recommend", b""))
    answers = io.BytesIO()
    served = serve_requests(_EchoScorer(), requests, answers, {"family": "ctr"})  # type: ignore[arg-type]
    assert served == 2
    data = answers.getvalue()
    frames = []
    while data:
        length, status = ANSWER_HEADER.unpack(data[: ANSWER_HEADER.size])
        frames.append((status, data[ANSWER_HEADER.size : ANSWER_HEADER.size + length]))
        data = data[ANSWER_HEADER.size + length :]
    assert frames == [(HELLO, b'{"family":"ctr"}'), (200, b"/scoreabc"), (409, b"/recommend")]
    assert answer_frame(200, b"x") == ANSWER_HEADER.pack(1, 200) + b"x"
    assert json.loads(frames[0][1]) == {"family": "ctr"}


def test_a_truncated_request_frame_is_an_error() -> None:
    requests = io.BytesIO(request_frame("/score", b"abcdef")[:-2])
    with pytest.raises(EOFError, match="2 bytes before the end of a frame"):
        serve_requests(_EchoScorer(), requests, io.BytesIO(), {})  # type: ignore[arg-type]
