"""Tests of the Java runtime check (`pipeline.java_check`)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lifeseq.pipeline import java_check
from lifeseq.pipeline.java_check import check_java, parse_java_major

pytestmark = pytest.mark.unit

OPENJDK_17 = """openjdk version "17.0.15" 2025-04-15
OpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)
OpenJDK 64-Bit Server VM (build 17.0.15+6-Debian-1deb12u1, mixed mode, sharing)
"""
ORACLE_8 = """java version "1.8.0_381"
Java(TM) SE Runtime Environment (build 1.8.0_381-b09)
Java HotSpot(TM) 64-Bit Server VM (build 25.381-b09, mixed mode)
"""


@pytest.mark.parametrize(
    ("output", "major"),
    [
        (OPENJDK_17, 17),
        (ORACLE_8, 8),
        ('openjdk version "21" 2023-09-19\nOpenJDK Runtime Environment (build 21+35)', 21),
        ('openjdk version "21.0.2" 2024-01-16 LTS', 21),
        ('java version "21" 2023-09-19 LTS', 21),
        ('openjdk version "11.0.22" 2024-01-16', 11),
        ('openjdk version "1.7.0_95"', 7),
        ('Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nopenjdk version "17.0.2" 2022-01-18', 17),
    ],
)
def test_parse_java_major(output: str, major: int) -> None:
    assert parse_java_major(output) == major


@pytest.mark.parametrize(
    "output", ["", "bash: java: command not found", "version 17", 'version ""']
)
def test_parse_java_major_garbage_is_none(output: str) -> None:
    assert parse_java_major(output) is None


def _fake_java(java_home: Path, version_line: str) -> Path:
    """A `bin/java` under `java_home` that prints `version_line` to stderr like `java -version`."""
    binary = java_home / "bin" / "java"
    binary.parent.mkdir(parents=True)
    binary.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n", encoding="utf-8")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    return binary


def test_check_java_with_impossible_minimum_explains_how_to_install() -> None:
    # Real runtime if there is one; with none the "not found" error carries the same hint.
    with pytest.raises(RuntimeError, match=r"Java 99\+.*Install a Java 17\+ runtime.*apt-get"):
        check_java(min_major=99)


def test_check_java_uses_java_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path, 'openjdk version "21.0.1" 2023-10-17')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))

    assert check_java() == 21


def test_check_java_too_old_names_binary_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _fake_java(tmp_path, 'java version "1.8.0_381"')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))

    with pytest.raises(RuntimeError, match="Java 17\\+, but .* is Java 8") as err:
        check_java()
    assert str(binary) in str(err.value)
    assert java_check.INSTALL_HINT in str(err.value)


def test_check_java_unreadable_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path, "something else entirely")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))

    with pytest.raises(RuntimeError, match="Could not read the version"):
        check_java()


def test_check_java_without_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "missing"))
    monkeypatch.setattr(java_check.shutil, "which", lambda name: None)

    with pytest.raises(RuntimeError, match=r"no `java` was found.*openjdk-17-jre-headless"):
        check_java()
