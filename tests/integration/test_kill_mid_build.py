"""A build killed with SIGKILL while writing shards leaves nothing that looks complete, and a
rerun with --overwrite gives the same output as a build that was never interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and any(path.rglob("*.tar")):
            return True
        time.sleep(0.01)
    return False


def _output_files(out: Path) -> dict[str, Path]:
    """Every file below OUT by relative path, Spark's per-write UUID dropped from part names."""
    return {
        re.sub(r"part-(\d+)-[0-9a-f-]{36}", r"part-\1", str(p.relative_to(out))): p
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _assert_same_output(out: Path, reference: Path) -> None:
    """OUT equals an uninterrupted build's: the same files; shards byte for byte; the manifest
    but for its timings; Spark's Parquet tables row for row, with the same schema. Their bytes
    (and .crc checksums) are not compared: parquet-mr lists a column chunk's encodings in
    hash-set order, which differs between JVM runs (e.g. `RLE, PLAIN, BIT_PACKED` vs `PLAIN,
    BIT_PACKED, RLE` in two identical builds)."""
    files, expected = _output_files(out), _output_files(reference)
    assert sorted(files) == sorted(expected)
    for name, path in files.items():
        if name.startswith("shards/") or name.endswith("_SUCCESS"):
            assert path.read_bytes() == expected[name].read_bytes(), name
        elif name == "manifest.json":
            got, want = json.loads(path.read_text()), json.loads(expected[name].read_text())
            got.pop("timings_s"), want.pop("timings_s")
            assert got == want
        elif name.startswith("report/"):  # the build report: the same, but for the build time
            assert _without_time(path) == _without_time(expected[name]), name
        elif name.endswith(".parquet"):
            got, want = pq.read_table(path), pq.read_table(expected[name])
            assert got.schema.equals(want.schema, check_metadata=True), name
            assert got.to_pylist() == want.to_pylist(), name
        else:
            assert name.endswith(".parquet.crc") or name.endswith("_SUCCESS.crc"), name


def _without_time(path: Path) -> bytes:
    """A report file's bytes; `summary.md` without its `| time` row."""
    if path.suffix != ".md":
        return path.read_bytes()
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("| time")).encode()


def test_sigkill_during_shard_stage_then_rerun(tmp_path):
    bin_dir = Path(sys.executable).parent
    events = tmp_path / "events"
    subprocess.run(
        [str(bin_dir / "lifeseq"), "synth", "--out", str(events), "--users", "150", "--seed", "3"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    out = tmp_path / "out"
    config = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "synthetic.yaml"
    command = [
        str(bin_dir / "lifeseq"),
        "build",
        "--config",
        str(config),
        "--input",
        str(events),
        "--output",
        str(out),
        "--overwrite",
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    reference = tmp_path / "reference"
    uninterrupted = [*command[: command.index("--output") + 1], str(reference)]
    clean = subprocess.run(uninterrupted, capture_output=True, text=True, env=env, timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        started = _wait_for(out / "_tmp" / "shards", proc, timeout=240)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert started, "the build never reached the shard stage"
    assert not (out / "manifest.json").exists()
    assert not (out / "shards").exists()  # partial tars only ever live under OUT/_tmp

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (out / "manifest.json").exists() and not (out / "_tmp").exists()
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names and all(n.startswith("shard-") and n.endswith(".tar") for n in names)
    _assert_same_output(out, reference)
