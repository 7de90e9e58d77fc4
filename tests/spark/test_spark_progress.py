"""`spark_progress` against a real Spark session: a running job's stage shows up as a bar."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from lifeseq.pipeline import progress

pytestmark = pytest.mark.spark


def test_a_running_stage_gets_a_bar(spark, monkeypatch):
    monkeypatch.setattr(progress, "POLL_S", 0.02)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with progress.spark_progress(spark, console=console):
        spark.range(0, 20_000_000, numPartitions=16).selectExpr("sum(id * id % 7)").collect()
    assert "Spark stage" in buffer.getvalue()
