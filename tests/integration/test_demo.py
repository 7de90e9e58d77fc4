"""`lifeseq demo` end to end at a tiny scale (20K events, 2 training steps per CTR model, one
HSTU epoch): every stage runs, and the report agrees with the build it made."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lifeseq.models.blocks.embeddings import torchrec_available
from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable"),
]


def test_demo_runs_every_stage_and_writes_its_report(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    args = ["demo", "--workdir", str(work), "--events", "20000", "--ctr-steps", "2",
            "--hstu-epochs", "1", "--latency-requests", "2"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "lifeseq.jobs.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for stage in range(1, 8):
        assert f"[{stage}/7]" in proc.stdout
    assert "twin     P(click)" in proc.stdout and "hstu     top-5 next items" in proc.stdout

    report = json.loads((work / "report.json").read_text())
    manifest = json.loads((work / "build" / "manifest.json").read_text())
    assert report["data"]["events"] == 20000
    assert report["data"]["splits"]["test"]["targets"] == manifest["splits"]["test"]["targets"]
    assert sum(r["targets"] for r in report["auc_by_gap"]) == manifest["splits"]["test"]["targets"]
    runs = report["runs"]
    assert [runs[n]["steps"] for n in ("twin", "din")] == [2, 2]
    for name in ("twin", "din"):
        assert 0.0 <= runs[name]["test"]["auc"] <= 1.0
        assert [c["history"] for c in runs[name]["latency"]] == [1000, 10_000]
    assert 0.0 <= runs["hstu"]["test"]["hr@10"] <= 1.0
    for name in ("twin", "din"):  # the oracle is the ceiling of every trained model
        assert report["oracle"]["auc"] > runs[name]["test"]["auc"]
    both_labels = [r for r in report["auc_by_gap"] if 0 < (r["positive_share"] or 0) < 1]
    assert both_labels and all(r["oracle"] is not None for r in both_labels)
    for name in runs:
        exported = json.loads((work / "export" / name / "manifest.json").read_text())
        size = sum(e["bytes"] for e in exported["files"].values()) / 1e6
        assert runs[name]["export_mb"] == pytest.approx(size)
    for png in ("auc_by_gap.png", "twin_training_curves.png", "hstu_training_curves.png"):
        assert (work / "plots" / png).stat().st_size > 1000
    table = (work / "report.md").read_text()
    assert "| twin | 2 |" in table and "| din | 2 |" in table and "| oracle |" in table
    pictures = [work / "build" / "report" / f"{name}.png" for name in
                ("history_length", "events_per_day", "quarantine", "targets_per_split")]  # fmt: skip
    pictures += [work / "plots" / f"{name}_training_curves.png" for name in runs]
    for png in pictures:
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000, png
        assert f"]({png.relative_to(work)})" in table
    output = proc.stdout + proc.stderr
    chatter = [line for line in output.splitlines() if THIRD_PARTY.search(line)]
    assert not chatter, "\n".join(chatter[:20])


#: Lines third-party libraries print at their default levels: a log record of a logger outside
#: lifeseq's packages (FBGEMM logs on `root`), TorchRec's planner table, FBGEMM's kernel
#: arguments, Lightning's start-up notices, Spark's log4j lines, torch.fx's tracing warning.
THIRD_PARTY = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ (?!lifeseq\.(pipeline|features|models|trainers|jobs|serving)\b)"
    r"|Successfully loaded|SplitTableBatchedEmbeddingBagsCodegen|Feature Gates|Planner Statistics"
    r"|GPU available|Seed set to|Initializing distributed|distributed_backend="
    r"|^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (WARN|INFO)|WindowExec|_symbolic_trace|is_fx_tracing"
    r"|^\[rank\d+\]:[WI]\d{4}"
)
