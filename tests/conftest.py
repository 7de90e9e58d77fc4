"""Shared fixtures: one local Spark session per test run, and small event-file writers."""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lifeseq.pipeline.log_levels import LOG_LEVEL_ENV
from lifeseq.trainers.legacy import PACKAGE_FOLDERS

REPO_ROOT = Path(__file__).resolve().parents[1]


class _OldTopLevelNames(importlib.abc.MetaPathFinder):
    """Refuses `import models` (and the other folders' bare names) inside the test run. The
    repository root is on `sys.path` for `tests.*`, which would otherwise make `models` import
    as a second copy of `lifeseq.models`: a test could pass on code that fails once installed."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in PACKAGE_FOLDERS:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (lifeseq's packages are lifeseq.{fullname})",
                name=fullname,
            )


sys.meta_path.insert(0, _OldTopLevelNames())


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--compile-all`: compile every zoo config's AOTInductor packages in the conformance
    suite, not only the representatives (one C++ compile per program: ~10 min more on 2 cores)."""
    parser.addoption(
        "--compile-all", action="store_true",
        help="conformance: compile every zoo config's export, not only the representatives",
    )  # fmt: skip


@pytest.fixture(scope="session")
def spark() -> Iterator[pyspark.sql.SparkSession]:  # noqa: F821
    """A `local[2]` Spark session shared by all Spark tests (starting one costs ~8 s)."""
    from lifeseq.pipeline.spark_session import get_spark

    session = get_spark(
        "local[2]",
        {"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "4"},
        app_name="lifeseq-tests",
    )
    yield session
    session.stop()


def write_events_parquet(
    path: Path, rows: Sequence[dict], schema: dict[str, str] | None = None
) -> Path:
    """Write event dicts to one Parquet file (column types inferred by pyarrow unless given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = sorted({key for row in rows for key in row}) if rows else []
    data = {col: [row.get(col) for row in rows] for col in columns}
    if schema:
        table = pa.table(
            {
                c: pa.array(data[c], type=pa.type_for_alias(schema[c]))
                if c in schema
                else pa.array(data[c])
                for c in columns
            }
        )
    else:
        table = pa.table(data)
    pq.write_table(table, path)
    return path


def write_text(path: Path, lines: Sequence[str]) -> Path:
    """Write lines to a text file (creating parents)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _logging_as_before() -> Iterator[None]:
    """Undo what a job's `main()` run in-process (`jobs.terminal.configure_logging`) does to
    the process: root handlers and level, every logger's level and propagation,
    `warnings.showwarning`, and `LIFESEQ_LOG_LEVEL` (`--verbose` sets it, for subprocesses).
    Without this, one test's job would silence another test's library logs, or turn on
    `lifeseq serve`'s access log in a later test."""
    env = os.environ.get(LOG_LEVEL_ENV)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {
        name: (logger.level, logger.propagate, list(logger.handlers))
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    show = warnings.showwarning
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            logger_level, propagate, logger_handlers = loggers.get(
                name, (logging.NOTSET, logger.propagate, logger.handlers)
            )  # a logger created during the test loses only a level set on it
            logger.setLevel(logger_level)
            logger.propagate = propagate
            logger.handlers[:] = logger_handlers
    warnings.showwarning = show
    if env is None:
        os.environ.pop(LOG_LEVEL_ENV, None)
    else:
        os.environ[LOG_LEVEL_ENV] = env
