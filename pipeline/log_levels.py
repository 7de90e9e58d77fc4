"""`LIFESEQ_LOG_LEVEL`: the one setting for Spark's JVM, py4j / PySpark and third-party Python
loggers (`jobs.terminal`). Kept apart from `pipeline.spark_session` so that reading it does not
import pyspark (every `lifeseq` command and training process reads it at start-up).
"""

from __future__ import annotations

import logging
import os

#: Environment variable naming the log level of Spark's JVM (and py4j / PySpark loggers).
LOG_LEVEL_ENV = "LIFESEQ_LOG_LEVEL"
#: Log4j levels Spark accepts, most verbose first.
SPARK_LOG_LEVELS = ("ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")
#: The embedded session's level when LIFESEQ_LOG_LEVEL is unset: errors arrive as exceptions.
QUIET_LOG_LEVEL = "FATAL"
#: The level kept under spark-submit when LIFESEQ_LOG_LEVEL is unset (cluster logs stay useful).
SUBMIT_LOG_LEVEL = "WARN"


def log_level(submitted: bool = False) -> str:
    """Spark's log level: `LIFESEQ_LOG_LEVEL` if set, else quiet (embedded) or WARN (submit).

    Raises:
        ValueError: `LIFESEQ_LOG_LEVEL` is not one of `SPARK_LOG_LEVELS` (or WARNING).
    """
    raw = os.environ.get(LOG_LEVEL_ENV, "").strip()
    if not raw:
        return SUBMIT_LOG_LEVEL if submitted else QUIET_LOG_LEVEL
    level = "WARN" if raw.upper() == "WARNING" else raw.upper()
    if level not in SPARK_LOG_LEVELS:
        raise ValueError(
            f"{LOG_LEVEL_ENV}={raw!r} is not a log level; use one of {', '.join(SPARK_LOG_LEVELS)}"
        )
    return level


def python_log_level(spark_level: str) -> int:
    """The `logging` level matching a Spark log level (FATAL and OFF: above CRITICAL)."""
    return {
        "ALL": logging.DEBUG,
        "TRACE": logging.DEBUG,
        "DEBUG": logging.DEBUG,
        "INFO": logging.INFO,
        "WARN": logging.WARNING,
        "ERROR": logging.ERROR,
    }.get(spark_level, logging.CRITICAL + 1)
