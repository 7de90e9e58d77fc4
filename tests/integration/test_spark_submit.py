"""`spark-submit jobs/build_lifelong.py` runs the same job as `lifeseq build`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, write_events_parquet

pytestmark = pytest.mark.integration


def _events(directory: Path) -> Path:
    rows = []
    for user in range(5):
        for step in range(6):
            rows.append(
                {
                    "user_id": user,
                    "item_id": 100 + (user * 3 + step) % 11,
                    "category_id": step % 3,
                    "behavior": "click" if step % 2 else "view",
                    "ts": 1000 + 500 * step,
                }
            )
    return write_events_parquet(directory / "events.parquet", rows)


def test_spark_submit_and_cli_give_identical_shards(tmp_path):
    inputs = _events(tmp_path / "in").parent
    config = tmp_path / "job.yaml"
    config.write_text(
        "behaviors: {known: [view, click]}\n"
        "targets: {split: time, valid_start: 2500, test_start: 3500, positive_behaviors: [click],"
        " negatives: sampled, negatives_per_positive: 1, seed: 3}\n"
        "shards: {partitions: 2}\n"
        "spark: {master: 'local[1]'}\n"
    )
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    outputs = {}
    commands = {
        "submit": [
            str(spark_submit),
            "--master",
            "local[2]",
            str(REPO_ROOT / "jobs" / "build_lifelong.py"),
        ],
        "cli": [str(Path(sys.executable).parent / "lifeseq"), "build"],
    }
    for name, command in commands.items():
        out = tmp_path / name
        proc = subprocess.run(
            [*command, "--config", str(config), "--input", str(inputs), "--output", str(out)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "events valid" in proc.stdout and "| train split" in proc.stdout
        outputs[name] = json.loads((out / "manifest.json").read_text())
    assert outputs["submit"]["counts"]["events_valid"] == 30
    for split in ("train", "valid", "test"):
        assert (
            outputs["submit"]["splits"][split]["shards"]
            == outputs["cli"]["splits"][split]["shards"]
        )
        assert outputs["submit"]["splits"][split]["samples"] > 0


def test_cli_reports_bad_config_without_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("targets: {split: time, valid_start: 1, test_start: 2, negativs: none}\n")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "lifeseq"),
            "build",
            "--config",
            str(config),
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown config key(s) ['targets.negativs']" in proc.stderr
    assert "Traceback" not in proc.stderr
