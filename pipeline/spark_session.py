"""Spark session creation: embedded local Spark by default, or the session spark-submit made."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from pyspark.sql import SparkSession

from pipeline.java_check import check_java

log = logging.getLogger(__name__)

#: Defaults for the embedded session; a config's `spark.conf` overrides them.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.driver.memory": "2g",
    "spark.sql.shuffle.partitions": "32",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.python.worker.reuse": "true",
}


def get_spark(
    master: str | None = None, conf: dict[str, str] | None = None, app_name: str = "lifeseq"
) -> SparkSession:
    """Return the active Spark session, or start one on `master` (default `local[2]`).

    Under `spark-submit` a session's master comes from the submit command; `master` and
    `conf` only apply when lifeseq starts Spark itself.

    Raises:
        RuntimeError: Java 17+ is missing (with install instructions).
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    submitted = _under_submit()
    if not submitted:
        check_java()
        # glibc's per-thread malloc arenas inflate a JVM's RSS by hundreds of MB for no gain.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        builder = builder.master(master or "local[2]")
        settings = {**LOCAL_DEFAULTS, **(conf or {})}
    else:
        settings = dict(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s on %s", spark.version, spark.sparkContext.master)
    return spark


def _under_submit() -> bool:
    """Whether this Python process was launched by spark-submit (a JVM gateway is waiting)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def ship_package(spark: SparkSession) -> str | None:
    """Make the `pipeline` package importable on cluster executors (`SparkContext.addPyFile`).

    Local masters share this machine's Python environment and need nothing. Returns the zip
    path shipped, or None.
    """
    if spark.sparkContext.master.startswith("local"):
        return None
    package_dir = Path(__file__).resolve().parent
    handle, zip_path = tempfile.mkstemp(prefix="lifeseq-pipeline-", suffix=".zip")
    os.close(handle)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(package_dir.rglob("*.py")):
            archive.write(source, Path("pipeline") / source.relative_to(package_dir))
    spark.sparkContext.addPyFile(zip_path)
    log.info("shipped %s to the executors", zip_path)
    return zip_path
