"""Progress bars outside training: drawn only on a terminal unless asked; Spark stages polled
from the status tracker."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from lifeseq.pipeline import progress

pytestmark = pytest.mark.unit


def _console(buffer: io.StringIO, terminal: bool) -> Console:
    return Console(file=buffer, force_terminal=terminal, width=100)


def test_step_progress_draws_only_on_a_terminal():
    quiet = io.StringIO()
    with progress.step_progress("export x: vocab", 2, console=_console(quiet, False)) as steps:
        steps.advance("export x: tables")
        steps.advance("export x: done")
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    with progress.step_progress("export x: vocab", 2, console=_console(shown, True)) as steps:
        steps.advance("export x: tables")
    assert "export x:" in shown.getvalue()


class _Tracker:
    """A Spark status tracker with one stage that finishes its 4 tasks, one per poll."""

    def __init__(self) -> None:
        self.polls = 0

    def getActiveStageIds(self) -> list[int]:  # noqa: N802 (Spark's API)
        self.polls += 1
        return [3] if self.polls <= 4 else []

    def getStageInfo(self, stage_id: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(name="collect at build.py:10", numTasks=4,
                               numCompletedTasks=min(self.polls, 4))  # fmt: skip


def test_spark_progress_shows_each_active_stage(monkeypatch):
    monkeypatch.setattr(progress, "POLL_S", 0.01)
    tracker = _Tracker()
    spark = SimpleNamespace(sparkContext=SimpleNamespace(statusTracker=lambda: tracker))
    buffer = io.StringIO()
    with progress.spark_progress(spark, console=_console(buffer, True)):
        deadline = time.monotonic() + 5
        while tracker.polls < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert tracker.polls >= 6
    assert "Spark stage 3 (collect)" in buffer.getvalue()


def test_spark_progress_off_without_a_terminal():
    spark = SimpleNamespace(sparkContext=None)  # never touched
    with progress.spark_progress(spark, console=_console(io.StringIO(), False)):
        pass
