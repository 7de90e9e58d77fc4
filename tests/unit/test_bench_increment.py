"""`jobs.bench_increment`'s report and its time cut (the benchmark itself runs Spark builds)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifeseq.jobs.bench_increment import RUNS, STAGES, markdown, plot, split_by_time

pytestmark = pytest.mark.unit


def _run(seconds: float, events: int, updated: int | None) -> dict:
    return {
        "seconds": seconds,
        "stage_s": {stage: seconds / 10 for stage in STAGES},
        "peak_rss_mb": {"jvm": 1200, "python_driver": 140},
        "events_in": events,
        "users": 100,
        "users_updated": updated,
        "targets": {"train": 10, "valid": 5, "test": 1},
    }


def test_report_and_chart(tmp_path: Path) -> None:
    results = {
        "base": _run(100.0, 16_000_000, None),
        "increment": _run(30.0, 1_000_000, 90),
        "full rebuild": _run(110.0, 17_000_000, None),
        "ratio": 30.0 / 110.0,
    }
    text = markdown(results)
    assert [line.split(" | ")[0].strip("| ") for line in text.splitlines()[2:5]] == list(RUNS)
    assert "increment / full rebuild: 0.27 of the wall time (90 of 100 users extended)" in text
    plot(results, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 0


def test_split_by_time_leaves_the_newest_events_for_the_increment(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    pq.write_table(pa.table({"ts": list(range(100, 0, -1)), "user_id": ["u"] * 100}),
                   events / "part-0.parquet")  # fmt: skip
    (events / "_synth.json").write_text("{}")

    history, new, cut = split_by_time(events, 30, tmp_path / "work")

    old = pq.read_table(history).column("ts").to_pylist()
    recent = pq.read_table(new).column("ts").to_pylist()
    assert cut == 71 and len(recent) == 30 and len(old) == 70
    assert max(old) < cut <= min(recent)
    assert split_by_time(events, 30, tmp_path / "work")[2] == cut  # reused, not cut again
