"""A single user with 10^6 events goes through the build on local Spark without breaking it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.spark.helpers import build, make_config, read_split

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N_EVENTS = 1_000_000


def test_million_event_user(spark, tmp_path):
    rng = np.random.default_rng(0)
    base = 1_000_000_000
    ts = base + np.arange(N_EVENTS, dtype=np.int64)  # distinct events: no duplicates
    items = rng.integers(0, 5_000, N_EVENTS)
    behavior = np.where(rng.random(N_EVENTS) < 0.02, "click", "view")
    table = pa.table(
        {
            "user_id": pa.array(["whale"] * N_EVENTS),
            "item_id": pa.array(items.astype(str)),
            "category_id": pa.array((items % 50).astype(str)),
            "behavior": pa.array(behavior),
            "ts": pa.array(ts, pa.int64()),
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "whale.parquet")
    small = pa.table(
        {
            "user_id": ["minnow"] * 3,
            "item_id": ["1", "2", "3"],
            "category_id": ["1"] * 3,
            "behavior": ["view", "click", "click"],
            "ts": pa.array([base, base + 960_000, base + 990_000], pa.int64()),
        }
    )
    pq.write_table(small, tmp_path / "in" / "minnow.parquet")
    cfg = make_config(
        targets={
            "max_targets_per_user": 200,
            "negatives_per_positive": 1,
            "valid_start": base + 950_000,
            "test_start": base + 980_000,
        },
        shards={"max_samples": 100, "partitions": 2},
    )
    result = build(spark, [tmp_path / "in"], tmp_path / "out", cfg)
    counts = result.manifest["counts"]
    assert counts["events_valid"] == N_EVENTS + 3
    assert counts["truncated"] == N_EVENTS - 100_000
    assert result.manifest["max_user_events"] == N_EVENTS
    whale = (
        spark.read.parquet(str(tmp_path / "out" / "lifelong")).where("user_id = 'whale'").first()
    )
    assert len(whale["ts"]) == 100_000 and whale["n_events"] == N_EVENTS
    assert whale["ts"][-1] == int(ts[-1]) and whale["ts"][0] == int(ts[N_EVENTS - 100_000])
    test = {s.user: s for s in read_split(tmp_path / "out", "test")}
    assert test["whale"].history["item"].shape[0] <= 100_000
    assert (
        test["whale"].targets["target_label"] == 1
    ).sum() == 200  # capped by max_targets_per_user
