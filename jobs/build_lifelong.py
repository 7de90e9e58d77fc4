"""Build lifelong behavior tables and WebDataset shards from raw events (Spark).

Run on the embedded local Spark:

    lifeseq build --config configs/pipeline/synthetic.yaml --input data/events --output out/build

or on any cluster (the job ships the `pipeline` package to the executors itself; they need
numpy and pyarrow installed):

    spark-submit --master yarn jobs/build_lifelong.py \
        --config configs/pipeline/synthetic.yaml --input hdfs:///events --output hdfs:///lifeseq/out

A bad input (a missing path, files not in `input.format`, a corrupt Parquet file, a column
`input.columns` names that does not exist, an output that cannot be written, no Java 17+)
prints one `error: ...` line naming it, exits 1 and leaves OUT as it was. Spark's own log
lines are off; `LIFESEQ_LOG_LEVEL=WARN` (or INFO, DEBUG) brings them back.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if __package__ in (None, ""):  # `spark-submit jobs/build_lifelong.py`, lifeseq maybe not installed
    import importlib.util
    import types

    if importlib.util.find_spec("lifeseq") is None:  # this checkout's folders are lifeseq.*
        sys.modules["lifeseq"] = types.ModuleType("lifeseq")
        sys.modules["lifeseq"].__path__ = [
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        ]

from lifeseq.jobs.terminal import configure_logging  # noqa: E402
from lifeseq.pipeline.build import run_build  # noqa: E402
from lifeseq.pipeline.config import load_config  # noqa: E402
from lifeseq.pipeline.manifest import summary_table  # noqa: E402
from lifeseq.pipeline.preflight import preflight  # noqa: E402
from lifeseq.pipeline.progress import spark_progress  # noqa: E402
from lifeseq.pipeline.spark_session import (  # noqa: E402
    get_spark,
    log_level,
    python_log_level,
    ship_package,
)

#: Python loggers of py4j and PySpark that print Spark's chatter (PySpark logs every analysis
#: error it raises as JSON, even one the build catches).
_SPARK_PYTHON_LOGGERS = ("py4j", "DataFrameQueryContextLogger", "SQLQueryContextLogger")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `lifeseq build` and `spark-submit jobs/build_lifelong.py`."""
    parser.add_argument("--config", required=True, help="pipeline YAML (configs/pipeline/*.yaml)")
    parser.add_argument(
        "--input",
        nargs="+",
        help="input files, directories or globs (local path or Hadoop URI); required unless "
        "--print-config",
    )
    parser.add_argument(
        "--output", help="output directory OUT (local path or URI); required unless --print-config"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (every key, timestamps as epoch seconds) and exit",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument(
        "--master",
        default=None,
        help="Spark master for the embedded session (default: config spark.master)",
    )
    parser.add_argument(
        "--vocab-from",
        default=None,
        metavar="OLD_OUT",
        help="reuse the vocab of an earlier build's OUT (new ids map to OOV)",
    )
    parser.add_argument(
        "--base",
        default=None,
        metavar="BASE_OUT",
        help="extend an earlier complete build with the new --input events (incremental build: "
        "vocab and lifelong tables extended, shards of the new period's targets)",
    )


def _error(err: BaseException) -> int:
    """Print `error: <message>` (no traceback) and return exit code 1."""
    print(f"error: {err}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Run the build for parsed arguments; returns a process exit code.

    0: built, or the config printed (`--print-config`). 1: a bad input, output or environment,
    named in one `error:` line (the bad-fraction error adds counts and examples), with nothing
    half-written. 2: a bad config, or `--input`/`--output` missing.
    """
    given = {"--input": args.input, "--output": args.output}
    missing = [flag for flag, value in given.items() if not value]
    if missing and not args.print_config:
        print(
            f"error: the following arguments are required: {', '.join(missing)} "
            "(only --print-config runs without them)",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = load_config(args.config)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    try:  # before Spark starts: a wrong path costs no JVM start-up
        checked = preflight(
            cfg, args.input, args.output, args.overwrite, args.vocab_from, args.base
        )
    except (FileExistsError, ValueError) as err:
        return _error(err)
    try:
        spark = get_spark(args.master or cfg.spark.master, cfg.spark.conf, app_name="lifeseq-build")
    except (RuntimeError, ValueError) as err:  # no Java 17+; a bad LIFESEQ_LOG_LEVEL
        return _error(err)
    ship_package(spark)
    try:
        with spark_progress(spark):
            result = run_build(
                spark,
                cfg,
                args.input,
                args.output,
                overwrite=args.overwrite,
                vocab_from=args.vocab_from,
                checked=checked,
                base=args.base,
            )
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        return _error(err)
    print(summary_table(result.manifest))
    print(f"wrote {args.output}/manifest.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `spark-submit jobs/build_lifelong.py ...`."""
    parser = argparse.ArgumentParser(prog="lifeseq build", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        configure_logging()
    except ValueError as err:  # a bad LIFESEQ_LOG_LEVEL
        return _error(err)
    quiet_spark_python_loggers()
    return run(args)


def quiet_spark_python_loggers() -> None:
    """Set py4j's and PySpark's Python loggers to `LIFESEQ_LOG_LEVEL` (default: silent)."""
    from pyspark.logger import PySparkLogger

    try:
        level = python_log_level(log_level())
    except ValueError:  # reported by get_spark
        return
    for name in _SPARK_PYTHON_LOGGERS:
        logger = logging.getLogger(name) if name == "py4j" else PySparkLogger.getLogger(name)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
