"""Progress bars (rich) for the long steps outside training: Spark stages, export steps.

Training uses Lightning's `RichProgressBar` (`jobs/train.py`); this module gives the build and
export the same look. A bar is drawn only when stderr is a terminal (or `enabled=True`): logs
of a batch job or a captured test stay free of control codes. Bars are transient: once a step
ends, its one-line summary (logged by the caller) is what stays on the screen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

#: Seconds between two polls of Spark's status tracker.
POLL_S = 0.5


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _console(enabled: bool | None, console: Console | None) -> Console | None:
    """The console to draw on, or None when no bar should be drawn."""
    console = console or Console(stderr=True)
    on = console.is_terminal if enabled is None else enabled
    return console if on else None


@contextmanager
def spark_progress(
    spark: Any, enabled: bool | None = None, console: Console | None = None
) -> Iterator[None]:
    """Show one bar per active Spark stage (completed / total tasks) while the block runs.

    Polls `SparkContext.statusTracker()` (Spark's public progress API) from a daemon thread
    every `POLL_S` seconds; a stage's bar disappears when the stage ends.

    Args:
        spark: the SparkSession.
        enabled: draw even when stderr is not a terminal (True) or never (False); None: only
            on a terminal.
        console: where to draw (tests); default stderr.
    """
    console = _console(enabled, console)
    if console is None:
        yield
        return
    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()
    with _progress(console) as progress:
        bars: dict[int, Any] = {}

        def poll() -> None:
            while not stop.wait(POLL_S):
                active = set(tracker.getActiveStageIds())
                for stage_id in sorted(active):
                    info = tracker.getStageInfo(stage_id)
                    if info is None:
                        continue
                    if stage_id not in bars:
                        name = info.name.split(" at ")[0]
                        bars[stage_id] = progress.add_task(
                            f"Spark stage {stage_id} ({name})", total=info.numTasks
                        )
                    progress.update(bars[stage_id], completed=info.numCompletedTasks)
                for stage_id in [s for s in bars if s not in active]:
                    progress.remove_task(bars.pop(stage_id))

        thread = threading.Thread(target=poll, name="lifeseq-spark-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class Steps:
    """A bar over the named steps of one job (`advance(next_step)` after each)."""

    def __init__(self, progress: Progress | None, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, next_step: str) -> None:
        """Mark the running step done; the bar now names `next_step`."""
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=next_step)


@contextmanager
def step_progress(
    title: str, total: int, enabled: bool | None = None, console: Console | None = None
) -> Iterator[Steps]:
    """A transient bar of `total` steps titled `title` (drawn only on a terminal by default)."""
    console = _console(enabled, console)
    if console is None:
        yield Steps(None, None)
        return
    with _progress(console) as progress:
        yield Steps(progress, progress.add_task(title, total=total))
