"""Spark session creation: embedded local Spark by default, or the session spark-submit made.

The embedded session is quiet: Spark's own log lines (`WARN WindowExec: No Partition Defined
...`, task failure stacks) stay off the terminal unless `LIFESEQ_LOG_LEVEL` (`INFO`, `WARN`,
`ERROR`, ...) asks for them; failures still reach the caller as exceptions.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import BinaryIO

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from lifeseq.pipeline.compat import spark_gateway_running
from lifeseq.pipeline.java_check import check_java
from lifeseq.pipeline.log_levels import (  # noqa: F401 (re-exported: part of this module's API)
    LOG_LEVEL_ENV,
    QUIET_LOG_LEVEL,
    SPARK_LOG_LEVELS,
    SUBMIT_LOG_LEVEL,
    log_level,
    python_log_level,
)

log = logging.getLogger(__name__)


_JDK_INCUBATOR_NOTICE = b"WARNING: Using incubator modules:"

_LOG4J2_PROPERTIES = """\
# Written by lifeseq (pipeline/spark_session.py) for the embedded Spark session.
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
# PySpark's gateway starts logging as a shell, which prints "Setting default log level to ..."
# unless the gateway's logger has a level of its own equal to the root's.
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = {level}
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
"""

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

    Spark's log level comes from `LIFESEQ_LOG_LEVEL` (default: quiet when embedded, WARN under
    spark-submit); the embedded JVM gets it from its first line on.

    Raises:
        RuntimeError: Java 17+ is missing (with install instructions).
        ValueError: `LIFESEQ_LOG_LEVEL` is not a log level.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    submitted = _under_submit()
    level = log_level(submitted)
    if not submitted:
        check_java()
        # glibc's per-thread malloc arenas inflate a JVM's RSS by hundreds of MB for no gain.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if submitted:
        builder = SparkSession.builder.appName(app_name)
        for key, value in (conf or {}).items():
            builder = builder.config(key, str(value))
        spark = builder.getOrCreate()
    else:
        settings = {**LOCAL_DEFAULTS, **(conf or {})}
        options = settings.get("spark.driver.extraJavaOptions", "")
        if "log4j2.configurationFile" not in options:  # a user's own log4j config wins
            config = _log4j2_config(level)
            settings["spark.driver.extraJavaOptions"] = (
                f'-Dlog4j2.configurationFile="{config}" {options}'.strip()
            )
        spark_conf = SparkConf().setMaster(master or "local[2]").setAppName(app_name)
        spark_conf.setAll([(key, str(value)) for key, value in settings.items()])
        _start_context(spark_conf)
        spark = SparkSession.builder.getOrCreate()
    spark.sparkContext.setLogLevel(level)
    log.info("Spark %s on %s", spark.version, spark.sparkContext.master)
    return spark


def _log4j2_config(level: str) -> str:
    """Path of a log4j2 properties file setting the root level, written once per level."""
    path = Path(tempfile.gettempdir()) / f"lifeseq-log4j2-{level.lower()}.properties"
    text = _LOG4J2_PROPERTIES.format(level=level.lower())
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    return str(path)


def _start_context(conf: SparkConf) -> SparkContext:
    """Start the embedded SparkContext; its JVM's stderr is relayed minus the JDK's notice.

    Spark's launcher always adds `--add-modules=jdk.incubator.vector`, so every JVM start
    prints `WARNING: Using incubator modules: jdk.incubator.vector`; no JVM flag turns it off.
    Everything else the JVM (and the Python workers it starts) writes to stderr is copied to
    this process's stderr unchanged.
    """
    from pyspark.java_gateway import launch_gateway

    if spark_gateway_running():  # a stopped session's JVM: PySpark reuses it
        return SparkContext(conf=conf)
    gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE})
    relay = threading.Thread(
        target=_relay_stderr, args=(gateway.proc.stderr,), name="spark-jvm-stderr", daemon=True
    )
    relay.start()
    return SparkContext(conf=conf, gateway=gateway)


def _relay_stderr(stream: BinaryIO) -> None:
    """Copy the JVM's stderr to fd 2 line by line, dropping the incubator-module notice.

    Keeps reading until the JVM closes the pipe, whatever fd 2 does: a JVM whose stderr pipe
    fills up would block.
    """
    for line in iter(stream.readline, b""):
        if line.startswith(_JDK_INCUBATOR_NOTICE):
            continue
        try:
            os.write(2, line)
        except OSError:
            pass


def _under_submit() -> bool:
    """Whether this Python process was launched by spark-submit (a JVM gateway is waiting)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


#: `lifeseq/__init__.py` of the executors' zip: a pkgutil-style namespace package.
_NAMESPACE_INIT = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"


def ship_package(spark: SparkSession) -> str | None:
    """Make the `lifeseq.pipeline` package importable on cluster executors
    (`SparkContext.addPyFile`): a zip of `lifeseq/pipeline/*.py` whose `lifeseq/__init__.py` is a
    pkgutil-style namespace (zipimport does not do implicit ones), so an executor's own
    lifeseq install still adds its other packages.

    Local masters share this machine's Python environment and need nothing. Returns the zip
    path shipped, or None.
    """
    if spark.sparkContext.master.startswith("local"):
        return None
    package_dir = Path(__file__).resolve().parent
    handle, zip_path = tempfile.mkstemp(prefix="lifeseq-pipeline-", suffix=".zip")
    os.close(handle)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("lifeseq/__init__.py", _NAMESPACE_INIT)
        for source in sorted(package_dir.rglob("*.py")):
            archive.write(source, Path("lifeseq/pipeline") / source.relative_to(package_dir))
    spark.sparkContext.addPyFile(zip_path)
    log.info("shipped %s to the executors", zip_path)
    return zip_path
