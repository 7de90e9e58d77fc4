"""`ship_package` zips the pipeline package for cluster executors and skips local masters."""

from __future__ import annotations

import zipfile
from types import SimpleNamespace

import pytest

from pipeline.spark_session import ship_package

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
    assert {"pipeline/__init__.py", "pipeline/build.py", "pipeline/targets.py"} <= names
    assert not any(name.startswith(("features/", "models/", "tests/")) for name in names)


def test_local_master_ships_nothing():
    context = _Context("local[2]")
    assert ship_package(SimpleNamespace(sparkContext=context)) is None
    assert context.shipped == []
