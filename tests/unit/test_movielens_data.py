"""Tests of the MovieLens-100K fetcher (`jobs.movielens_data`), without the network.

A fake recbole wheel (a zip holding a small `ml-100k.inter`) is built in `tmp_path`; the tests
pass that file's own sha256 and row count, and replace `pip download` by a stub.
"""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from lifeseq.jobs import movielens_data
from lifeseq.jobs.movielens_data import ML100K_MEMBER, RECBOLE_WHEEL, fetch_ml100k, main

pytestmark = pytest.mark.unit

HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ROWS = [b"196\t242\t3\t881250949\n", b"186\t302\t3\t891717742\n", b"22\t377\t1\t878887116\n"]
INTER = HEADER + b"".join(ROWS)
INTER_SHA256 = hashlib.sha256(INTER).hexdigest()
EXPECTED = {"expected_sha256": INTER_SHA256, "expected_rows": len(ROWS)}


def write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    """A zip file at `path` holding `members` (name → content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def fake_cache(tmp_path: Path, inter: bytes = INTER) -> Path:
    """A cache directory whose `wheels/` holds a fake recbole wheel with `inter`."""
    cache = tmp_path / "cache"
    write_wheel(cache / "wheels" / RECBOLE_WHEEL, {ML100K_MEMBER: inter, "recbole/x.py": b""})
    return cache


def no_pip(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Stand-in for `subprocess.run` that fails the test if pip is called."""
    raise AssertionError(f"pip must not run here: {args}")


def test_extracts_from_the_wheel_and_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(movielens_data.subprocess, "run", no_pip)
    cache = fake_cache(tmp_path)
    path = fetch_ml100k(cache, **EXPECTED)
    assert path == cache / "ml-100k" / "ml-100k.inter"
    assert path.read_bytes() == INTER
    assert sorted(p.name for p in path.parent.iterdir()) == ["ml-100k.inter"]  # no temp files


def test_second_call_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(movielens_data.subprocess, "run", no_pip)
    cache = fake_cache(tmp_path)
    path = fetch_ml100k(cache, **EXPECTED)
    first = path.stat().st_mtime_ns
    (cache / "wheels" / RECBOLE_WHEEL).unlink()  # a re-extraction would now fail
    assert fetch_ml100k(cache, **EXPECTED) == path
    assert path.stat().st_mtime_ns == first


def test_corrupted_cache_is_extracted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(movielens_data.subprocess, "run", no_pip)
    cache = fake_cache(tmp_path)
    path = fetch_ml100k(cache, **EXPECTED)
    path.write_bytes(INTER[:-5])
    assert fetch_ml100k(cache, **EXPECTED) == path
    assert path.read_bytes() == INTER


def test_wrong_content_in_the_wheel_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(movielens_data.subprocess, "run", no_pip)
    cache = fake_cache(tmp_path, inter=INTER + b"1\t2\t3\t4\n")
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64} and 4 rows, expected sha256"):
        fetch_ml100k(cache, **EXPECTED)
    assert not (cache / "ml-100k" / "ml-100k.inter").exists()
    assert list((cache / "ml-100k").iterdir()) == []  # the temp file is gone too


def test_row_count_is_checked_even_when_the_digest_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(movielens_data.subprocess, "run", no_pip)
    cache = fake_cache(tmp_path)
    with pytest.raises(ValueError, match=r"and 3 rows, expected sha256 .* and 100000 rows"):
        fetch_ml100k(cache, expected_sha256=INTER_SHA256)


def test_missing_member_and_bad_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(movielens_data.subprocess, "run", no_pip)
    cache = tmp_path / "cache"
    wheel = write_wheel(cache / "wheels" / RECBOLE_WHEEL, {"recbole/__init__.py": b""})
    with pytest.raises(ValueError, match=r"has no member recbole/dataset_example/ml-100k"):
        fetch_ml100k(cache, **EXPECTED)
    wheel.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"is not a valid wheel \(zip\) file"):
        fetch_ml100k(cache, **EXPECTED)


def test_downloads_the_wheel_with_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        wheel_dir = Path(command[command.index("-d") + 1])
        write_wheel(wheel_dir / RECBOLE_WHEEL, {ML100K_MEMBER: INTER})
        return subprocess.CompletedProcess(command, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(movielens_data.subprocess, "run", fake_pip)
    cache = tmp_path / "cache"
    path = fetch_ml100k(cache, **EXPECTED)
    assert path.read_bytes() == INTER
    assert len(calls) == 1
    assert calls[0][1:] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "recbole==1.2.1",
        "-d",
        str(cache / "wheels"),
    ]


def test_pip_failure_says_where_to_put_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        stderr = "x" * 5000 + "\nERROR: No matching distribution found for recbole==1.2.1"
        return subprocess.CompletedProcess(command, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(movielens_data.subprocess, "run", failing_pip)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as info:
        fetch_ml100k(cache, **EXPECTED)
    message = str(info.value)
    assert "failed with exit code 1" in message
    assert "ERROR: No matching distribution found for recbole==1.2.1" in message
    assert "x" * 2001 not in message  # only the tail of stderr
    assert f"place it in {cache / 'wheels'}" in message
    assert RECBOLE_WHEEL in message


def test_pip_success_without_the_wheel_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sdist_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        wheel_dir = Path(command[command.index("-d") + 1])
        (wheel_dir / "recbole-1.2.1.tar.gz").write_bytes(b"")
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(movielens_data.subprocess, "run", sdist_pip)
    with pytest.raises(RuntimeError, match=r"left \['recbole-1.2.1.tar.gz'\], not recbole-1.2.1"):
        fetch_ml100k(tmp_path / "cache", **EXPECTED)


def test_default_cache_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFESEQ_CACHE", str(tmp_path / "env-cache"))
    assert movielens_data.default_cache_dir() == tmp_path / "env-cache"
    monkeypatch.delenv("LIFESEQ_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert movielens_data.default_cache_dir() == tmp_path / "home" / ".cache" / "lifeseq"


def test_cli_prints_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Path | None] = []

    def fake_fetch(cache_dir: Path | None = None) -> Path:
        seen.append(cache_dir)
        return tmp_path / "ml-100k.inter"

    monkeypatch.setattr(movielens_data, "fetch_ml100k", fake_fetch)
    assert main(["--cache", str(tmp_path / "c")]) == 0
    assert main([]) == 0
    assert seen == [tmp_path / "c", None]
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "ml-100k.inter")] * 2


def test_cli_reports_a_failed_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(movielens_data.subprocess, "run", no_pip)
    cache = fake_cache(tmp_path)
    path = fetch_ml100k(cache, **EXPECTED)
    # The CLI checks the pinned digest, which the fake file does not have.
    assert main(["--cache", str(cache)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: " in captured.err and "expected sha256 4edb74e2" in captured.err
    assert path.read_bytes() == INTER  # a failed re-extraction leaves the cached file alone
