"""Pipeline benchmark: the Spark build vs a single-process pandas/pyarrow build, side by side.

For each input size (synthetic events from `lifeseq synth`, seed fixed) it runs, each in a fresh
process so memory is measured per size:

* `lifeseq build` on embedded `local[2]` Spark: wall time, events/s, peak RSS of the Python
  driver and of the driver JVM (in local mode the executors live inside that JVM; the Python
  workers are counted separately), shard bytes and lifelong-table bytes per valid event;
* `jobs.bench_pipeline_baseline` (pandas/pyarrow, one process): wall time and peak RSS.

Prints Markdown tables (sizes, stage times) and the seconds per 4× step; with `--out FILE.json`
writes JSON keyed by input size, with `--png FILE.png` a plot of time and peak driver memory
against input size. The pandas baseline holds the whole input in memory (~0.65 KB per event:
10.4 GB at 16M), so it runs only up to `--baseline-max-events` (16M).

    python -m lifeseq.jobs.bench_pipeline [--sizes 1000000 4000000 16000000 64000000] \
        [--out bench.json] [--png bench.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from lifeseq.jobs.bench_report import configs_error, save_figure, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "pipeline" / "synthetic.yaml"


class PeakRss:
    """Polls a process tree and keeps the peak RSS (bytes) of the root, its JVM and the rest."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self._root = psutil.Process(pid)
        self._interval = interval
        self.peak = {
            "python_driver": 0,
            "jvm": 0,
            "executor_jvms": 0,
            "python_workers": 0,
            "total": 0,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        now = {"python_driver": 0, "jvm": 0, "executor_jvms": 0, "python_workers": 0}
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                name = proc.name()
                parent = proc.ppid()
            except psutil.NoSuchProcess:
                continue
            if proc.pid == self._root.pid:
                now["python_driver"] += rss
            elif name == "java" and parent == self._root.pid:
                now["jvm"] += rss  # the driver JVM (in local[N] mode it also runs the executors)
            elif name == "java":
                now["executor_jvms"] += rss  # local-cluster / standalone executors
            else:
                now["python_workers"] += rss
        now["total"] = sum(now.values())
        for key, value in now.items():
            self.peak[key] = max(self.peak[key], value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self._interval)

    def stop(self) -> dict[str, int]:
        """Stop polling; return the peaks."""
        self._stop.set()
        self._thread.join()
        return self.peak


def _timed(command: list[str], log_path: Path) -> tuple[float, dict[str, int], str]:
    """Run `command`, return (seconds, peak RSS by role, stdout); raise on failure."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO_ROOT
        )
        monitor = PeakRss(proc.pid)
        stdout, _ = proc.communicate()
        seconds = time.perf_counter() - start
        peak = monitor.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}); see {log_path}")
    return seconds, peak, stdout


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def shard_breakdown(shards: Path) -> dict[str, int]:
    """Bytes of the shards by what they hold: the payload of each member kind (`history.npy`,
    `targets.npy`, `meta.json`, .npy headers included) and `tar` (member headers, padding, end
    of archive), summing to the files' size. Uncompressed `.tar` shards only."""
    totals: dict[str, int] = {}
    files = sorted(shards.glob("*.tar"))
    for path in files:
        with tarfile.open(path) as tar:
            for member in tar:
                kind = member.name.split(".", 1)[1]
                totals[kind] = totals.get(kind, 0) + member.size
    totals["tar"] = sum(p.stat().st_size for p in files) - sum(totals.values())
    return totals


def uncompressed_parquet_bytes(table_dir: Path, workdir: Path) -> int:
    """Size of a Parquet table rewritten by pyarrow without compression (dictionary and RLE
    encodings kept), streamed batch by batch."""
    target = workdir / "_uncompressed.parquet"
    dataset = pq.ParquetDataset(str(table_dir))
    writer = None
    try:
        for fragment in dataset.fragments:
            for batch in fragment.to_batches(batch_size=256):
                if writer is None:
                    writer = pq.ParquetWriter(str(target), batch.schema, compression="none")
                writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    size = target.stat().st_size if target.exists() else 0
    target.unlink(missing_ok=True)
    return size


def _synth(events: int, seed: int, directory: Path) -> Path:
    marker = directory / "_synth.json"
    if marker.exists():
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lifeseq.jobs.synth",
            "--out",
            str(directory),
            "--events",
            str(events),
            "--seed",
            str(seed),
        ],
        check=True,
        cwd=REPO_ROOT,
    )
    return directory


def _config_with(compression: str, workdir: Path) -> Path:
    """The synthetic config with `shards.compression` overridden, as a file in `workdir`."""
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    data["shards"]["compression"] = compression
    path = workdir / f"config-{compression}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bench_size(
    events: int,
    workdir: Path,
    seed: int,
    skip_baseline: bool,
    compression: str = "none",
    master: str = "local[2]",
) -> dict:
    """Run both builds on `events` synthetic events; return the measurements."""
    inputs = _synth(events, seed, workdir / f"events-{events}")
    out = workdir / f"spark-{events}"
    config = _config_with(compression, workdir)
    spark_s, spark_rss, _ = _timed(
        [
            sys.executable,
            "-m",
            "lifeseq.jobs.cli",
            "build",
            "--config",
            str(config),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--overwrite",
            "--master",
            master,
        ],
        workdir / f"spark-{events}.log",
    )
    manifest = json.loads((out / "manifest.json").read_text())
    valid = manifest["counts"]["events_valid"]
    shard_bytes = _dir_bytes(out / "shards")
    lifelong_bytes = _dir_bytes(out / "lifelong")
    plain_lifelong = uncompressed_parquet_bytes(out / "lifelong", workdir)
    breakdown = shard_breakdown(out / "shards") if compression == "none" else {}
    row = {
        "events_in": manifest["counts"]["events_in"],
        "events_valid": valid,
        "users": manifest["users"],
        "shard_compression": compression,
        "master": master,
        "spark_s": round(spark_s, 2),
        "spark_events_per_s": round(valid / spark_s),
        "spark_stage_s": manifest["timings_s"],
        "spark_peak_rss_mb": {k: round(v / 2**20) for k, v in spark_rss.items()},
        "shard_bytes_per_event": round(shard_bytes / valid, 2),
        "lifelong_bytes_per_event": round(lifelong_bytes / valid, 2),
        "input_bytes_per_event": round(_dir_bytes(inputs) / manifest["counts"]["events_in"], 2),
        "shard_to_lifelong_ratio": round(shard_bytes / lifelong_bytes, 2),
        "shard_bytes_per_event_by_part": {k: round(v / valid, 2) for k, v in breakdown.items()},
        "lifelong_uncompressed_bytes_per_event": round(plain_lifelong / valid, 2),
        "shard_to_uncompressed_lifelong_ratio": round(shard_bytes / plain_lifelong, 2),
        "targets": sum(s["targets"] for s in manifest["splits"].values()),
    }
    shutil.rmtree(out)
    if not skip_baseline:
        base_out = workdir / f"pandas-{events}"
        shutil.rmtree(base_out, ignore_errors=True)
        pandas_s, pandas_rss, stdout = _timed(
            [
                sys.executable,
                "-m",
                "lifeseq.jobs.bench_pipeline_baseline",
                "--config",
                str(CONFIG),
                "--input",
                str(inputs),
                "--output",
                str(base_out),
            ],
            workdir / f"pandas-{events}.log",
        )
        baseline = json.loads(stdout.strip().splitlines()[-1])
        row.update(
            {
                "pandas_s": round(pandas_s, 2),
                "pandas_events_per_s": round(baseline["events_valid"] / pandas_s),
                "pandas_peak_rss_mb": round(pandas_rss["total"] / 2**20),
                "pandas_same_targets": baseline["targets"] == row["targets"]
                and baseline["events_valid"] == valid,
                "spark_over_pandas": round(spark_s / pandas_s, 2),
            }
        )
        shutil.rmtree(base_out)
    return row


def stage_markdown(results: dict[str, dict]) -> str:
    """The Spark job's stage times (seconds) per input size, in Markdown."""
    stages = list(next(iter(results.values()))["spark_stage_s"]) if results else []
    head = "| events | " + " | ".join(stages) + " |"
    lines = [head, "|" + "---:|" * (len(stages) + 1)]
    for size, r in results.items():
        cells = [f"{r['spark_stage_s'].get(stage, float('nan')):.1f}" for stage in stages]
        lines.append(f"| {int(size):,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling(results: dict[str, dict]) -> dict[str, float]:
    """Wall-time ratio between consecutive sizes, keyed `"B/A"` with the event-count ratio it
    should stay under for linear time (`{"16000000/4000000": 2.3, ...}`)."""
    sizes = sorted(results, key=int)
    return {
        f"{b}/{a}": round(results[b]["spark_s"] / results[a]["spark_s"], 2)
        for a, b in zip(sizes, sizes[1:], strict=False)
    }


def plot(results: dict[str, dict], path: str) -> None:
    """Two panels against input events (log-log): Spark wall time with a linear-time line
    through the smallest size, and the peak RSS of the Python driver and the driver JVM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results, key=int)
    events = [int(s) for s in sizes]
    seconds = [results[s]["spark_s"] for s in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    left.plot(events, seconds, "o-", label="Spark build")
    left.plot(events, [seconds[0] * e / events[0] for e in events], "--", color="grey",
              label="linear from the smallest size")  # fmt: skip
    left.set(xscale="log", yscale="log", xlabel="input events", ylabel="wall seconds",
             title="time")  # fmt: skip
    left.legend()
    for key, label in (("python_driver", "Python driver"), ("jvm", "driver JVM")):
        right.plot(events, [results[s]["spark_peak_rss_mb"][key] for s in sizes], "o-",
                   label=label)  # fmt: skip
    right.set(xscale="log", xlabel="input events", ylabel="peak RSS (MiB)",
              title="driver memory")  # fmt: skip
    right.set_ylim(bottom=0)
    right.legend()
    save_figure(fig, path)


def _baseline_cells(row: dict) -> str:
    """The pandas columns of a table row, `- | - | -` where the baseline did not run."""
    if "pandas_s" not in row:
        return "- | - | -"
    return f"{row['pandas_s']:.1f} | {row['pandas_events_per_s']:,} | {row['pandas_peak_rss_mb']:,}"


def markdown(results: dict[str, dict]) -> str:
    """The benchmark table in Markdown."""
    head = (
        "| events | Spark s | Spark ev/s | driver RSS MB (python / JVM) | shard B/ev | "
        "lifelong B/ev | shard/lifelong | pandas s | pandas ev/s | pandas RSS MB | same targets |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for size, r in results.items():
        rss = r["spark_peak_rss_mb"]
        lines.append(
            f"| {int(size):,} | {r['spark_s']:.1f} | {r['spark_events_per_s']:,} | "
            f"{rss['python_driver']:,} / {rss['jvm']:,} | {r['shard_bytes_per_event']:.1f} | "
            f"{r['lifelong_bytes_per_event']:.1f} | {r['shard_to_lifelong_ratio']:.2f} | "
            f"{_baseline_cells(r)} | {r.get('pandas_same_targets', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m lifeseq.jobs.bench_pipeline`, `lifeseq bench pipeline`)."""
    parser = argparse.ArgumentParser(
        prog="lifeseq bench pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000, 64_000_000]
    )
    parser.add_argument("--workdir", default="bench_out/pipeline", help="data and scratch outputs")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--skip-baseline", action="store_true", help="only run Spark")
    parser.add_argument(
        "--baseline-max-events",
        type=int,
        default=16_000_000,
        help="run the in-memory pandas baseline only up to this size (it needs ~0.65 KB/event)",
    )
    parser.add_argument(
        "--shard-compression",
        choices=["none", "gzip"],
        default="none",
        help="override shards.compression of the synthetic config",
    )
    parser.add_argument(
        "--master",
        default="local[2]",
        help="Spark master; local-cluster[2,1,1024] runs the executors in JVMs of their own, "
        "so that the driver JVM's memory is measured alone",
    )
    parser.add_argument("--out", default=None, help="write JSON results here")
    parser.add_argument("--png", default=None, help="write the time and memory plot here")
    args = parser.parse_args(argv)
    broken = configs_error([CONFIG])
    if broken:
        print(broken, file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for size in args.sizes:
        print(f"benchmarking {size:,} events ...", flush=True)
        skip_baseline = args.skip_baseline or size > args.baseline_max_events
        results[str(size)] = bench_size(
            size, workdir, args.seed, skip_baseline, args.shard_compression, args.master
        )
        print(json.dumps(results[str(size)]), flush=True)
    sizes = [str(s) for s in args.sizes]
    summary: dict[str, object] = {"spark_time_ratio": scaling(results)}
    summary["max_driver_python_rss_mb"] = max(
        r["spark_peak_rss_mb"]["python_driver"] for r in results.values()
    )
    summary["max_driver_jvm_rss_mb"] = max(r["spark_peak_rss_mb"]["jvm"] for r in results.values())
    print(markdown(results))
    print()
    print(stage_markdown(results))
    print(json.dumps(summary))
    if args.png:
        plot(results, args.png)
    if args.out:
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
        )
        payload = {
            **{s: results[s] for s in sizes},
            "summary": summary,
            "meta": {
                "commit": git.stdout.strip(),
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "config": str(CONFIG.relative_to(REPO_ROOT)),
                "seed": args.seed,
            },
        }
        write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
