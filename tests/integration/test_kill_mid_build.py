"""A build killed with SIGKILL while writing shards leaves nothing that looks complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and any(path.rglob("*.tar")):
            return True
        time.sleep(0.01)
    return False


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
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["test", "train", "valid"]
