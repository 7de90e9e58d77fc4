"""`ship_package` zips the pipeline package for cluster executors and skips local masters."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import pytest

from lifeseq.pipeline.spark_session import ship_package

pytestmark = pytest.mark.unit


class _Context:
    def __init__(self, master: str) -> None:
        self.master = master
        self.shipped: list[str] = []

    def addPyFile(self, path: str) -> None:  # noqa: N802 (Spark's name)
        self.shipped.append(path)


def test_cluster_master_gets_the_package_zip():
    context = _Context("yarn")
    path = ship_package(SimpleNamespace(sparkContext=context))
    assert context.shipped == [path]
    names = set(zipfile.ZipFile(path).namelist())
    assert {
        "lifeseq/pipeline/__init__.py",
        "lifeseq/pipeline/build.py",
        "lifeseq/pipeline/targets.py",
    } <= names
    assert all(name.startswith("lifeseq/pipeline/") for name in names - {"lifeseq/__init__.py"})


def test_the_shipped_zip_imports_as_lifeseq_pipeline(tmp_path):
    """An executor's Python finds `lifeseq.pipeline` in the zip alone (zipimport), without this checkout's install."""
    context = _Context("yarn")
    path = ship_package(SimpleNamespace(sparkContext=context))
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
        "sys.path_hooks[:] = [f for f in sys.path_hooks if 'editable' not in repr(f).lower()]; "
        "import lifeseq.pipeline.targets as t; print(t.__file__)"
    )
    done = subprocess.run([sys.executable, "-c", program, path],
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(path)


def test_local_master_ships_nothing():
    context = _Context("local[2]")
    assert ship_package(SimpleNamespace(sparkContext=context)) is None
    assert context.shipped == []


def test_spark_submit_script_runs_from_a_checkout_without_lifeseq_installed(tmp_path):
    """`spark-submit jobs/build_lifelong.py` on a cluster whose Python has the dependencies but
    not lifeseq: the script maps `lifeseq.*` onto its checkout's folders."""
    import site
    import sysconfig
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "jobs" / "build_lifelong.py"
    # -S: no site-packages .pth files, so not this checkout's editable install; the
    # dependencies come from a plain path entry.
    deps = os.pathsep.join([sysconfig.get_paths()["purelib"], *site.getsitepackages()])
    done = subprocess.run([sys.executable, "-S", str(script), "--help"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": deps}, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout
