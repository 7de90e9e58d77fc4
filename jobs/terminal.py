"""What a `lifeseq` command prints: our own messages, and third-party chatter only when asked.

By default the terminal shows lifeseq's own log lines (stage headers, one-line summaries,
warnings that need the user's action) at INFO and above, and only errors from everything else:
TorchRec's planner tables, FBGEMM's kernel arguments (logged on the root logger), Lightning's
start-up notices, py4j/PySpark, `torch.fx`. `--verbose`, or `LIFESEQ_LOG_LEVEL` (`INFO`,
`WARN`, `DEBUG`, ...; it also sets Spark's JVM level, see `pipeline.spark_session`), brings
them back. The setting travels to subprocesses (the demo's training runs) through the
environment.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TextIO

from lifeseq.pipeline.log_levels import LOG_LEVEL_ENV, log_level, python_log_level
from lifeseq.trainers.legacy import PACKAGE_FOLDERS

#: First parts of the logger names that are lifeseq's own: its namespace, and a job run as a
#: script (`torchrun jobs/train.py`).
OWN_LOGGERS = ("lifeseq", "__main__")
#: Loggers of libraries that attach handlers of their own (so a root filter does not see them)
#: or log chatter at WARNING: their level is set directly.
THIRD_PARTY_LOGGERS = (
    "torch",
    "torchrec",
    "fbgemm_gpu",
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "py4j",
    "pyspark",
    "DataFrameQueryContextLogger",
    "SQLQueryContextLogger",
)
#: Third-party records at or above this level are shown even when quiet.
QUIET_THIRD_PARTY_LEVEL = logging.ERROR
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_REPO_ROOT = Path(__file__).resolve().parents[1]
#: lifeseq's package folders: warnings raised from a file in them are its own.
_OWN_DIRS = tuple(str(_REPO_ROOT / name) + os.sep for name in PACKAGE_FOLDERS)


def is_own_logger(name: str) -> bool:
    """Whether a logger name belongs to lifeseq (`lifeseq.pipeline.build`, ...)."""
    return name.split(".", 1)[0] in OWN_LOGGERS


class ChatterFilter(logging.Filter):
    """Pass lifeseq's records at `own_level`+, everyone else's at `third_party_level`+."""

    def __init__(self, own_level: int, third_party_level: int) -> None:
        super().__init__()
        self.own_level = own_level
        self.third_party_level = third_party_level

    def filter(self, record: logging.LogRecord) -> bool:
        if is_own_logger(record.name):
            return record.levelno >= self.own_level
        return record.levelno >= self.third_party_level


class CurrentStderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever `sys.stderr` is at emit time, so a progress bar
    that redirects stderr (rich's live display) prints log lines above the bar, not through it.
    Nothing of an earlier `sys.stderr` is kept (it may be closed by now)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the stream is always the current `sys.stderr`."""


def is_own_file(filename: str) -> bool:
    """Whether a source file is part of lifeseq's packages (a warning issued from our code)."""
    return os.path.abspath(filename).startswith(_OWN_DIRS)


def show_own_warnings(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """`warnings.showwarning` that prints only warnings issued from lifeseq's own files
    (a corrupt shard, a changed data layout on resume); library deprecation notices stay off."""
    if is_own_file(filename):
        text = warnings.formatwarning(message, category, filename, lineno, line)
        (file or sys.stderr).write(text)


def third_party_level() -> int:
    """The level of third-party loggers: `LIFESEQ_LOG_LEVEL` when set, else ERROR.

    Raises:
        ValueError: `LIFESEQ_LOG_LEVEL` is not a log level (names the variable).
    """
    if not os.environ.get(LOG_LEVEL_ENV, "").strip():
        return QUIET_THIRD_PARTY_LEVEL
    return min(python_log_level(log_level()), QUIET_THIRD_PARTY_LEVEL)


def configure_logging(verbose: bool = False, own_level: int = logging.INFO) -> None:
    """Set up the root handler with `ChatterFilter` and quiet the third-party loggers.

    Args:
        verbose: show third-party INFO lines too (sets `LIFESEQ_LOG_LEVEL=INFO` unless it is
            set already, so Spark and subprocesses follow).
        own_level: level of lifeseq's own loggers (WARNING on non-zero ranks).

    Raises:
        ValueError: `LIFESEQ_LOG_LEVEL` is not a log level.
    """
    if verbose and not os.environ.get(LOG_LEVEL_ENV, "").strip():
        os.environ[LOG_LEVEL_ENV] = "INFO"
    others = third_party_level()
    if others <= logging.DEBUG:
        own_level = min(own_level, logging.DEBUG)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = CurrentStderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(ChatterFilter(own_level, others))
    root.addHandler(handler)
    root.setLevel(min(own_level, others))
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(others)
        if name.startswith(("lightning", "pytorch_lightning")):
            # Lightning adds its own stdout handler when imported before any root handler.
            for own in list(logger.handlers):
                logger.removeHandler(own)
            logger.propagate = True
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own_level)
    if others > logging.WARNING:
        warnings.showwarning = show_own_warnings
