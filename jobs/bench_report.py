"""Helpers shared by the benchmarks (`jobs.bench_*`): the commit a result belongs to, the JSON
file it is written to, logged subprocesses and Lightning CSV logs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifeseq.pipeline.yaml_files import read_yaml, yaml_file_error

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Logged throughput values of the first `WARMUP_FRACTION` of the steps are left out.
WARMUP_FRACTION = 0.1


def git_commit(root: Path = REPO_ROOT) -> str:
    """The checked-out commit, read from `.git` files (no git process); '' when unknown."""
    try:
        git = root / ".git"
        if git.is_file():  # a worktree: ".git" holds "gitdir: PATH"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head  # detached HEAD
        ref = head.split(":", 1)[1].strip()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except OSError:
        pass
    return ""


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a benchmark's results as indented JSON (parent directories created) and say so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_logged(command: list[str], log_stem: Path) -> tuple[float, int]:
    """Run `command` in the repo root, stdout/stderr to `log_stem`.{out,err}; (seconds, rc)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    log_stem.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{log_stem}.out", "w") as out, open(f"{log_stem}.err", "w") as err:
        start = time.perf_counter()
        proc = subprocess.run(command, stdout=out, stderr=err, env=env, cwd=REPO_ROOT)
        seconds = time.perf_counter() - start
    return seconds, proc.returncode


def run_or_raise(command: list[str], log_stem: Path) -> float:
    """`run_logged`, raising RuntimeError (stderr tail printed) on a nonzero exit; seconds."""
    seconds, rc = run_logged(command, log_stem)
    if rc != 0:
        print(tail(Path(f"{log_stem}.err")), file=sys.stderr)
        raise RuntimeError(f"{' '.join(command)} failed ({rc}); see {log_stem}.err")
    return seconds


def read_metrics_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """A Lightning `CSVLogger` `metrics.csv` as {column: [(step, value), ...]} (non-empty cells).

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row.get("step") or 0)
            for name, cell in row.items():
                if name in ("epoch", "step") or cell in (None, ""):
                    continue
                series.setdefault(name, []).append((step, float(cell)))
    return series


def train_throughput(
    series: dict[str, list[tuple[int, float]]], total_steps: int, skip: float = WARMUP_FRACTION
) -> float | None:
    """Median training targets/s of the job over the steps after the first `skip` of
    `total_steps`.

    The rate is the first of `trainers.callbacks.THROUGHPUT_KEYS` logged. Falls back to every
    logged value when none is that late; None when none was logged.
    """
    from lifeseq.trainers.callbacks import (
        THROUGHPUT_KEYS,  # here: the Spark benchmarks need no torch
    )

    values = next((series[key] for key in THROUGHPUT_KEYS if series.get(key)), [])
    late = [v for step, v in values if step >= skip * total_steps]
    chosen = late or [v for _, v in values]
    return statistics.median(chosen) if chosen else None


def newest_csv(run_dir: Path) -> Path:
    """`run_dir/logs/csv/version_K/metrics.csv` of the highest K.

    Raises:
        FileNotFoundError: no version has a `metrics.csv`.
    """
    versions = [
        p
        for p in (run_dir / "logs" / "csv").glob("version_*")
        if p.name.removeprefix("version_").isdigit() and (p / "metrics.csv").is_file()
    ]
    if not versions:
        raise FileNotFoundError(f"no {run_dir}/logs/csv/version_*/metrics.csv")
    newest = max(versions, key=lambda p: int(p.name.removeprefix("version_")))
    return newest / "metrics.csv"


def configs_error(paths: Sequence[Path]) -> str | None:
    """`error: ...` for the first of a benchmark's config files that is missing or not valid
    YAML (file, line and column), or None: a benchmark checks them before any work, so a
    broken config costs one line, not a traceback half-way."""
    for path in paths:
        error = yaml_file_error(path)
        if error:
            return f"error: {error}"
    return None


def config_sha256(*paths: Path) -> str:
    """SHA-256 of the YAML configs' parsed content, in order: a comment or a layout change
    keeps the stored runs; a changed value does not."""
    content = [read_yaml(path) for path in paths]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Lay out `fig`, write it to `path` (creating the folder), close it, and say so."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"wrote {path}")


def machine_info() -> dict[str, Any]:
    """Device, CPUs, torch threads, platform, Python and torch versions of this process (torch
    is imported here, so the Spark benchmarks that use this module stay torch-free)."""
    import platform

    import torch

    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
