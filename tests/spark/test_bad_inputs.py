"""Every bad input to `lifeseq build` is one `error:` line naming it, exit 1, nothing written.

The cases run the real CLI function (`jobs.build_lifelong.main`) on the shared Spark session;
two tests run the `lifeseq` console script itself, to see what a user's terminal gets.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lifeseq.jobs import build_lifelong
from lifeseq.pipeline.preflight import check_inputs
from tests.conftest import write_events_parquet, write_text
from tests.spark.helpers import BASE_CONFIG

pytestmark = pytest.mark.spark

ROWS = [
    {"user_id": f"u{i % 3}", "item_id": f"i{i}", "behavior": "click", "ts": 100 + i}
    for i in range(200)
]
CSV_LINES = ["user_id,item_id,behavior,ts", "u1,i1,click,100", "u1,i2,view,200"]


@dataclass
class Case:
    """A bad build: its `--input` entries, `--output`, config overrides and expected message."""

    inputs: list[str]
    out: Path
    message: list[str]  # substrings of the one error line
    input_cfg: dict | None = None


def _good_parquet(path: Path) -> Path:
    return write_events_parquet(path, ROWS, {"ts": "int64"})


def _missing_path(tmp: Path) -> Case:
    path = tmp / "DOES_NOT_EXIST"
    return Case([str(path)], tmp / "out", [f"input path {path} does not exist", "--input"])


def _empty_directory(tmp: Path) -> Case:
    (tmp / "in").mkdir()
    (tmp / "in" / "_SUCCESS").write_text("")  # skipped, as Spark skips it
    return Case([str(tmp / "in")], tmp / "out", [f"input directory {tmp / 'in'} has no data files"])


def _glob_matching_nothing(tmp: Path) -> Case:
    write_text(tmp / "in" / "a.csv", CSV_LINES)
    pattern = str(tmp / "in" / "*.parquet")
    return Case([pattern], tmp / "out", [f"input glob {pattern} matches no files"])


def _csv_files_as_parquet(tmp: Path) -> Case:
    _good_parquet(tmp / "in" / "a.parquet")
    path = write_text(tmp / "in" / "b.csv", CSV_LINES)
    return Case(
        [str(tmp / "in")],
        tmp / "out",
        [f"input file {path} is text", "not Parquet as input.format says", "input.format"],
    )


def _parquet_files_as_csv(tmp: Path) -> Case:
    path = _good_parquet(tmp / "in" / "a.parquet")
    return Case(
        [str(tmp / "in")],
        tmp / "out",
        [f"input file {path} is Parquet, but input.format is csv"],
        {"format": "csv"},
    )


def _truncated_parquet(tmp: Path) -> Case:
    _good_parquet(tmp / "in" / "a.parquet")
    data = _good_parquet(tmp / "in" / "b.parquet").read_bytes()
    (tmp / "in" / "b.parquet").write_bytes(data[: len(data) // 2])
    return Case(
        [str(tmp / "in")],
        tmp / "out",
        [f"input file {tmp / 'in' / 'b.parquet'} is not a readable Parquet file", "truncated"],
    )


def _corrupt_parquet_pages(tmp: Path) -> Case:
    """The footer is intact (so only Spark's scan finds it): the data pages are overwritten."""
    path = tmp / "in" / "a.parquet"
    path.parent.mkdir(parents=True)
    table = pa.table({k: [r[k] for r in ROWS] for k in ROWS[0]})
    pq.write_table(table, path, compression="none")
    data = bytearray(path.read_bytes())
    data[4:200] = b"\xab" * 196
    path.write_bytes(bytes(data))
    return Case(
        [str(path)], tmp / "out", [f"input file {path} cannot be read as parquet", "corrupt"]
    )


def _missing_column(tmp: Path) -> Case:
    _good_parquet(tmp / "in" / "a.parquet")
    return Case(
        [str(tmp / "in")],
        tmp / "out",
        [
            "input.columns: source column(s) {'value': 'dwell'} not found",
            "available columns: ['behavior', 'item_id', 'ts', 'user_id']",
        ],
        {"columns": {"value": "dwell"}},
    )


def _csv_files_as_jsonl(tmp: Path) -> Case:
    path = write_text(tmp / "in" / "a.jsonl", CSV_LINES)
    return Case(
        [str(tmp / "in")],
        tmp / "out",
        ["none of the 3 input rows could be parsed as jsonl", str(path), "input.format"],
        {"format": "jsonl"},
    )


def _output_below_a_file(tmp: Path) -> Case:
    _good_parquet(tmp / "in" / "a.parquet")
    (tmp / "afile").write_text("not a directory")
    out = tmp / "afile" / "out"
    return Case(
        [str(tmp / "in")], out, [f"--output {out} cannot be created: {tmp / 'afile'} is a file"]
    )


def _output_is_a_file(tmp: Path) -> Case:
    _good_parquet(tmp / "in" / "a.parquet")
    out = tmp / "out.txt"
    out.write_text("a file")
    return Case([str(tmp / "in")], out, [f"--output {out} is a file, not a directory"])


def _output_not_writable(tmp: Path) -> Case:
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc (Linux): a path even root cannot create")
    _good_parquet(tmp / "in" / "a.parquet")
    out = Path("/proc/lifeseq-test/out")
    return Case([str(tmp / "in")], out, [f"--output {out} is not writable", "/proc/lifeseq-test"])


def _output_without_permission(tmp: Path) -> Case:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    _good_parquet(tmp / "in" / "a.parquet")
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    out = locked / "out"
    return Case([str(tmp / "in")], out, [f"--output {out} is not writable", "Permission denied"])


CASES: dict[str, Callable[[Path], Case]] = {
    "missing_path": _missing_path,
    "empty_directory": _empty_directory,
    "glob_matching_nothing": _glob_matching_nothing,
    "csv_files_as_parquet": _csv_files_as_parquet,
    "parquet_files_as_csv": _parquet_files_as_csv,
    "truncated_parquet": _truncated_parquet,
    "corrupt_parquet_pages": _corrupt_parquet_pages,
    "missing_column": _missing_column,
    "csv_files_as_jsonl": _csv_files_as_jsonl,
    "output_below_a_file": _output_below_a_file,
    "output_is_a_file": _output_is_a_file,
    "output_not_writable": _output_not_writable,
    "output_without_permission": _output_without_permission,
}


def _config_file(tmp: Path, input_cfg: dict | None = None) -> Path:
    data = copy.deepcopy(BASE_CONFIG)
    data["input"].update(input_cfg or {})
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _run_cli(capsys, config: Path, inputs: list[str], out: Path, *extra: str) -> tuple[int, str]:
    """`lifeseq build ...` in this process; returns (exit code, stdout + stderr)."""
    argv = ["--config", str(config), "--input", *inputs, "--output", str(out), *extra]
    code = build_lifelong.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _assert_one_error_line(output: str, expected: list[str]) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in output and "Exception" not in output and "\tat " not in output


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_1_and_nothing_written(spark, tmp_path, capsys, name):
    case = CASES[name](tmp_path)
    output_before = case.out.read_bytes() if case.out.is_file() else None
    config = _config_file(tmp_path, case.input_cfg)
    code, output = _run_cli(capsys, config, case.inputs, case.out)
    assert code == 1
    _assert_one_error_line(output, case.message)
    if output_before is None:
        assert not case.out.exists()
    else:
        assert case.out.read_bytes() == output_before
    assert not list(tmp_path.glob("**/.lifeseq-write-probe-*"))


def test_bad_input_leaves_an_existing_output_as_it_was(spark, tmp_path, capsys):
    """With --overwrite the old build stays until the new input has passed every check; an empty
    OUT stays empty."""
    case = _truncated_parquet(tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text('{"old": true}')
    empty = tmp_path / "empty"
    empty.mkdir()
    config = _config_file(tmp_path)
    for out in (old, empty):
        code, output = _run_cli(capsys, config, case.inputs, out, "--overwrite")
        assert code == 1
        _assert_one_error_line(output, case.message)
    assert [p.name for p in old.iterdir()] == ["manifest.json"]
    assert (old / "manifest.json").read_text() == '{"old": true}'
    assert list(empty.iterdir()) == []


def test_a_failing_later_stage_removes_what_it_wrote(spark, tmp_path, capsys, monkeypatch):
    """A failure after OUT was written (here: the shard stage) removes OUT again, parents the
    build created included; the error itself still reaches the caller."""
    _good_parquet(tmp_path / "in" / "a.parquet")

    def broken_shards(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("lifeseq.pipeline.build.write_shards", broken_shards)
    out = tmp_path / "new" / "out"
    with pytest.raises(OSError, match="simulated"):
        _run_cli(capsys, _config_file(tmp_path), [str(tmp_path / "in")], out)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("java", "message"),
    [
        (None, "Spark needs Java 17+, but no `java` was found"),
        ('java version "1.8.0_381"', "is Java 8"),
    ],
    ids=["missing", "too_old"],
)
def test_java_missing_or_too_old(spark, tmp_path, capsys, monkeypatch, java, message):
    """No JVM is running when lifeseq starts Spark itself: the check speaks before Spark does."""
    from pyspark.sql import SparkSession

    _good_parquet(tmp_path / "in" / "a.parquet")
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if java is None:
        monkeypatch.delenv("JAVA_HOME", raising=False)
    else:
        script = bin_dir / "java"
        script.write_text(f"#!/bin/sh\necho '{java}' >&2\n")
        script.chmod(0o755)
        monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "out"
    code, output = _run_cli(capsys, _config_file(tmp_path), [str(tmp_path / "in")], out)
    assert code == 1
    _assert_one_error_line(output, [message, "JAVA_HOME"])
    assert not out.exists()


def test_preflight_reads_the_files_spark_reads(tmp_path):
    """Partition directories matched by a glob are read whole; `_SUCCESS`, `.crc` files and
    `_temporary/` are skipped, as Spark skips them; a glob in a directory part is Spark's."""
    a = _good_parquet(tmp_path / "day=1" / "a.parquet")
    b = _good_parquet(tmp_path / "day=2" / "b.parquet")
    (tmp_path / "day=2" / "_SUCCESS").write_text("")
    (tmp_path / "day=2" / ".b.parquet.crc").write_bytes(b"not parquet")
    write_text(tmp_path / "_temporary" / "0" / "part.csv", CSV_LINES)
    assert check_inputs([str(tmp_path / "day=*")], "parquet") == [str(a), str(b)]
    assert check_inputs([str(tmp_path)], "parquet") == [str(a), str(b)]
    assert check_inputs([str(tmp_path / "*" / "a.parquet")], "parquet") == []


@pytest.mark.parametrize(
    ("env", "level"),
    [(None, "FATAL"), ("WARN", "WARN"), ("warning", "WARN"), ("info", "INFO")],
)
def test_log_level_comes_from_lifeseq_log_level(monkeypatch, env, level):
    from lifeseq.pipeline.spark_session import _log4j2_config, log_level

    if env is None:
        monkeypatch.delenv("LIFESEQ_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("LIFESEQ_LOG_LEVEL", env)
    assert log_level() == level
    assert f"rootLogger.level = {level.lower()}\n" in Path(_log4j2_config(level)).read_text()


def test_bad_lifeseq_log_level_is_named(monkeypatch):
    from lifeseq.pipeline.spark_session import log_level

    monkeypatch.setenv("LIFESEQ_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match=r"LIFESEQ_LOG_LEVEL='loud' is not a log level; use one"):
        log_level()


def _lifeseq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "lifeseq"), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


@pytest.mark.integration
def test_console_script_missing_input_is_one_line(tmp_path):
    """What the terminal shows: one line, and no JVM was started for a wrong path."""
    config = _config_file(tmp_path)
    missing = tmp_path / "DOES_NOT_EXIST"
    result = _lifeseq(
        "build", "--config", str(config), "--input", str(missing), "--output", str(tmp_path / "o")
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"error: input path {missing} does not exist; check --input\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_console_script_build_keeps_spark_logs_off_the_terminal(tmp_path):
    """A real build's stderr holds lifeseq's own log lines only: no Spark log line (e.g. `WARN
    WindowExec: No Partition Defined`, which the build triggers at Spark's default level), no
    JVM notice."""
    _good_parquet(tmp_path / "in" / "a.parquet")
    config = _config_file(tmp_path)
    result = _lifeseq(
        "build", "--config", str(config), "--input", str(tmp_path / "in"),
        "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "manifest.json").exists()
    own_log = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO lifeseq\.(pipeline|jobs)\.\w+: ")
    assert [line for line in result.stderr.splitlines() if not own_log.match(line)] == []
    assert "build finished" in result.stderr
