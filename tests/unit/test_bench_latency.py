"""The serving benchmarks keep their own request corpus out of Python's garbage collector
(`jobs.bench_serving.frozen_corpus`), and the side-by-side run (`jobs.bench_latency`) does it for
a checkout whose `bench_serving` predates that (`FROZEN_CORPUS`)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifeseq.jobs import bench_latency, bench_serving
from lifeseq.jobs.checkout_env import checkout_environment

pytestmark = pytest.mark.unit

# A checkout's `jobs.bench_serving` from before `frozen_corpus`: `main` builds the requests with
# `ctr_requests` (looked up as a module global, as `ctr_cell` does) and reports what it saw.
OLD_BENCH_SERVING = """
import gc, json

def ctr_requests(scorer, history, candidates, count, seed):
    return [[str(i)] * history for i in range(count)]

def main(argv):
    before = gc.get_freeze_count()
    requests = ctr_requests(None, 1000, 3, 20, seed=1)
    print(json.dumps({"argv": argv, "before": before, "after": gc.get_freeze_count(),
                      "requests": len(requests)}))
    return 3
"""


def test_frozen_corpus_keeps_the_requests_out_of_the_collector_while_timed() -> None:
    requests = [[str(i)] * 100 for i in range(50)]
    before = gc.get_freeze_count()
    with bench_serving.frozen_corpus(requests) as frozen:
        assert frozen is requests
        assert gc.get_freeze_count() > before
        tracked = {id(obj) for obj in gc.get_objects()}
        assert not any(id(request) in tracked for request in requests)
    assert gc.get_freeze_count() == 0
    assert any(obj is requests[0] for obj in gc.get_objects())


def _run_frozen_corpus(checkout: Path, bench_serving_source: str) -> dict:
    """What a fake checkout's `bench_serving.main` saw when run through `FROZEN_CORPUS`."""
    (checkout / "jobs").mkdir()
    (checkout / "jobs" / "__init__.py").write_text("")
    (checkout / "jobs" / "bench_serving.py").write_text(bench_serving_source)
    done = subprocess.run(
        [sys.executable, "-c", bench_latency.FROZEN_CORPUS, "--export", "E", "--requests", "2"],
        cwd=checkout, env=checkout_environment(checkout, checkout),
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # main's return value is the exit status
    return json.loads(done.stdout)


def test_frozen_corpus_runs_an_older_checkouts_benchmark_with_its_requests_frozen(
    tmp_path: Path,
) -> None:
    seen = _run_frozen_corpus(tmp_path, OLD_BENCH_SERVING)
    assert seen["argv"] == ["--export", "E", "--requests", "2"]
    assert seen["requests"] == 20
    assert seen["before"] == 0 < seen["after"]


def test_frozen_corpus_leaves_a_checkout_with_frozen_corpus_to_freeze_its_own(
    tmp_path: Path,
) -> None:
    seen = _run_frozen_corpus(tmp_path, OLD_BENCH_SERVING + "\nfrozen_corpus = None\n")
    assert seen["argv"] == ["--export", "E", "--requests", "2"]
    assert seen["before"] == 0 == seen["after"]
