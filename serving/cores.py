"""How many CPU cores this process may use, and how `lifeseq serve` splits them into scoring
workers × intra-op threads by default.

`os.cpu_count()` and torch's default thread count see the machine (or the CPU affinity mask);
neither sees a container's CPU quota (cgroup `cpu.max` / `cpu.cfs_quota_us`, e.g. `docker
--cpus 1` on a 16-core host). A server sized from them starts more busy threads than it may run
at once, and under a quota or on a busy box every parallel region waits for its slowest thread:
measured on the 2-core development machine with one other busy process, TWIN at 1,000 events
served 18 req/s with 2 torch threads against 46 with 1. `cores_given()` takes the smallest of the
affinity mask and the quota (rounded down: a quota of 1.5 cores is 1 core's worth of threads
that never wait for the scheduler).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

#: `lifeseq serve` starts at most this many workers by default (each is a process holding the
#: model programs and its own interpreter); more cores become threads per worker.
MAX_DEFAULT_WORKERS = 8


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(proc_self_cgroup: str) -> dict[str, str]:
    """`{controller: path}` of `/proc/self/cgroup` (`""` for the cgroup v2 unified entry)."""
    paths = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def _ancestors(relative: str) -> list[str]:
    """`a/b/c` → [`a/b/c`, `a/b`, `a`, ``]: a limit anywhere up the tree applies."""
    parts = [p for p in relative.split("/") if p]
    return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")) -> float | None:  # fmt: skip
    """The CPU quota of this process's cgroup in cores (v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us`, the smallest up the hierarchy), or None when there is none."""
    paths = _cgroup_paths(_read(proc_self / "cgroup") or "")
    limits = []
    if "" in paths:
        for relative in _ancestors(paths[""]):
            text = _read(cgroup_root / relative / "cpu.max")
            if text and not text.startswith("max"):
                quota, period = (int(v) for v in text.split()[:2])
                limits.append(quota / period)
    relative = paths.get("cpu")
    mounts = [cgroup_root / c for c in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
    mount = next((m for m in mounts if m.is_dir()), None)
    if relative is not None and mount is not None:
        for rel in _ancestors(relative):
            quota = _read(mount / rel / "cpu.cfs_quota_us")
            period = _read(mount / rel / "cpu.cfs_period_us")
            if quota and period and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def cores_given() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (rounded
    down, at least 1)."""
    affinity = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    quota = cgroup_cpu_limit()
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.floor(quota + 1e-9)))


@dataclass(frozen=True)
class PoolSize:
    """Scoring workers and intra-op threads per worker, and the cores they were sized for.

    Attributes:
        workers: scoring processes (each scores one request at a time).
        threads_per_worker: torch intra-op threads of each worker.
        cores: the cores given to the server (`cores_given()`).
    """

    workers: int
    threads_per_worker: int
    cores: int

    @property
    def oversubscribed(self) -> bool:
        """Whether workers × threads exceed the cores given."""
        return self.workers * self.threads_per_worker > self.cores


def pool_size(cores: int, workers: int | None = None, threads_per_worker: int | None = None) -> PoolSize:  # fmt: skip
    """Workers × threads for `cores`: the given ones, else threads of 1 and one worker per core
    (at most `MAX_DEFAULT_WORKERS`, the rest as threads per worker); one of them given, the
    other fills the cores.

    Raises:
        ValueError: `workers` or `threads_per_worker` below 1 (naming the flag).
    """
    for flag, value in (("--workers", workers), ("--threads-per-worker", threads_per_worker)):
        if value is not None and value < 1:
            raise ValueError(f"{flag}: expected >= 1, got {value}")
    if workers is None and threads_per_worker is None:
        workers = min(cores, MAX_DEFAULT_WORKERS)
    if workers is None:
        workers = max(1, cores // threads_per_worker)
    if threads_per_worker is None:
        threads_per_worker = max(1, cores // workers)
    return PoolSize(workers, threads_per_worker, cores)
