"""`jobs.bench_pipeline`'s report: the scaling ratios, the stage table and the plot, on fixed
measurements (the benchmark itself runs Spark builds and is not a unit test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeseq.jobs.bench_pipeline import markdown, plot, scaling, stage_markdown

pytestmark = pytest.mark.unit


def _row(seconds: float, stages: dict[str, float], baseline: bool) -> dict:
    row = {
        "spark_s": seconds,
        "spark_events_per_s": 1000,
        "spark_stage_s": stages,
        "spark_peak_rss_mb": {"python_driver": 140, "jvm": 1500},
        "shard_bytes_per_event": 120.0,
        "lifelong_bytes_per_event": 11.5,
        "shard_to_lifelong_ratio": 10.4,
    }
    if baseline:
        row.update(pandas_s=2.0, pandas_events_per_s=500, pandas_peak_rss_mb=900)
        row["pandas_same_targets"] = True
    return row


RESULTS = {
    "1000000": _row(30.0, {"validate": 5.0, "dedupe": 9.0}, baseline=True),
    "4000000": _row(75.0, {"validate": 9.0, "dedupe": 24.0}, baseline=True),
    "16000000": _row(150.0, {"validate": 14.0, "dedupe": 79.0}, baseline=False),
}


def test_scaling_is_the_wall_time_ratio_of_consecutive_sizes() -> None:
    assert scaling(RESULTS) == {"4000000/1000000": 2.5, "16000000/4000000": 2.0}


def test_stage_table_has_a_row_per_size_and_a_column_per_stage() -> None:
    lines = stage_markdown(RESULTS).splitlines()
    assert lines[0] == "| events | validate | dedupe |"
    assert lines[2] == "| 1,000,000 | 5.0 | 9.0 |"
    assert lines[4] == "| 16,000,000 | 14.0 | 79.0 |"


def test_a_size_without_the_baseline_still_tabulates() -> None:
    last = markdown(RESULTS).splitlines()[-1]
    assert last.startswith("| 16,000,000 | 150.0 |") and last.endswith("| - | - | - | - |")
    assert markdown(RESULTS).splitlines()[2].endswith("| 2.0 | 500 | 900 | True |")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.png"
    plot(RESULTS, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_shard_breakdown_sums_to_the_files_and_parquet_is_rewritten_uncompressed(
    tmp_path: Path,
) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lifeseq.jobs.bench_pipeline import shard_breakdown, uncompressed_parquet_bytes
    from lifeseq.pipeline.sample_codec import RecordLayout, UserRecord
    from lifeseq.pipeline.shard_writer import ShardWriter

    n = 300
    history = {
        name: np.arange(n, dtype=np.int64) % 200 for name in ("item", "category", "behavior")
    }
    history["ts"] = np.arange(n, dtype=np.int64)
    targets = {
        "target_item": np.array([3]), "target_category": np.array([4]), "target_ts": np.array([n]),
        "target_label": np.array([1.0], dtype=np.float32), "target_hist_len": np.array([n]),
        "target_split": np.array([0]),
    }  # fmt: skip
    layout = RecordLayout.for_build(
        {"item": 200, "category": 200, "behavior": 200}, n, 10**6, False
    )
    writer = ShardWriter(str(tmp_path / "shards"), "part", 2, 1 << 30, layout)
    for user in range(3):
        writer.write(f"u{user}", UserRecord(f"user{user}", history, targets))
    files = writer.close()

    parts = shard_breakdown(tmp_path / "shards")

    assert sum(parts.values()) == sum(f.bytes for f in files)
    assert set(parts) == {"meta.json", "targets.npy", "history.npy", "tar"}
    header = parts["history.npy"] // 3 - n * (1 + 1 + 1 + 4)  # packed records of 7 bytes
    assert layout.history_dtype().itemsize == 7 and header % 64 == 0 and 0 < header <= 256

    table = pa.table({"x": pa.array([list(range(1000))] * 50, pa.list_(pa.int64()))})
    (tmp_path / "t").mkdir()
    pq.write_table(table, tmp_path / "t" / "part-0.parquet", compression="snappy")
    plain = uncompressed_parquet_bytes(tmp_path / "t", tmp_path)
    assert plain > (tmp_path / "t" / "part-0.parquet").stat().st_size
    assert not (tmp_path / "_uncompressed.parquet").exists()
