"""`lifeseq demo` (`make demo`): the whole path on synthetic data with one command.

    lifeseq demo [--workdir out/demo] [--events 2000000] [--ctr-steps 150] [--hstu-epochs 6]

1. `lifeseq synth`: lifelong synthetic events (Parquet), with the CTR benchmark's long-term
   construction (16 long-term interests sharing 20% of each user's events, at most 5,000 events
   per user).
2. `lifeseq build`: the Spark build (local Spark) with `configs/pipeline/ctr_bench.yaml`:
   quarantine, vocabularies, lifelong table, time-split CTR targets (negatives drawn by
   popularity), WebDataset shards.
3. `jobs/train.py fit` + `test` (LightningCLI subprocesses, Lightning's progress bars) of TWIN
   (`configs/ctr/base.yaml` + `twin.yaml`), DIN-100 (+ `din.yaml`) for `--ctr-steps` steps and
   HSTU (`configs/sequential/base.yaml` + `hstu.yaml`) for `--hstu-epochs` epochs, on the same
   build.
4. Per-target test scores of DIN-100 and TWIN (in-process, from the checkpoints) and of the
   oracle (`pipeline.synth_oracle`: the generator's own probability, the ceiling), grouped by
   how many events back the target's category last occurred in its history.
5. `lifeseq export` of the three models, a few requests of a test user through
   `serving.Scorer`, and the scorer's latency (`jobs.bench_serving`).

Writes `WORKDIR/report.md` (the final table, also printed), `WORKDIR/report.json` and
`WORKDIR/plots/*.png` (each model's training curves; test AUC of DIN-100 vs TWIN by gap, the
oracle as a line).
Runs are short demonstrations, not tuned results: `lifeseq bench ctr` / `bench generative`
measure the models properly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifeseq.jobs import ctr_eval
from lifeseq.jobs.bench_ctr import SYNTH_LONG_TERM, SYNTH_SIZES
from lifeseq.jobs.bench_report import newest_csv, read_metrics_csv, train_throughput
from lifeseq.pipeline.config import load_config
from lifeseq.trainers.checkpoint import read_checkpoint_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = 7
#: The CTR benchmark's synthetic construction (`jobs.bench_ctr`): users of at most 5,000 events
#: with 16 long-term interests sharing 20% of their events, so many returns to an interest
#: come more than 100 events after the previous one.
SYNTH_ARGS = ("--max-events", str(SYNTH_SIZES["full"]["max_events"]),
              "--long-term-interests", str(SYNTH_LONG_TERM["long_term_interests"]),
              "--long-term-share", str(SYNTH_LONG_TERM["long_term_share"]))  # fmt: skip


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs (see the module docstring)."""

    workdir: Path
    events: int = 2_000_000
    seed: int = 7
    pipeline_config: str = "configs/pipeline/ctr_bench.yaml"
    ctr_steps: int = 150
    hstu_epochs: int = 6
    latency_requests: int = 20


class Stages:
    """Prints `[k/N] title` headers and records each stage's seconds."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, number: int, title: str) -> None:
        """Close the running stage and announce the next."""
        self.end()
        elapsed = time.monotonic() - self.started
        print(f"\n[{number}/{STAGES}] {title}   (t = {elapsed:.0f} s)", flush=True)
        self._current = (title.split(":")[0], time.monotonic())

    def end(self) -> None:
        """Record the running stage's duration."""
        if self._current is not None:
            name, start = self._current
            self.seconds[name] = round(time.monotonic() - start, 1)
            self._current = None


# --- training ---------------------------------------------------------------------------------


def _train(args: list[str], quiet: bool) -> None:
    """Run `jobs/train.py` with `args`; Lightning's progress bar passes through unless `quiet`.

    Raises:
        RuntimeError: a nonzero exit (the last lines of its output are printed).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), *args]
    output = subprocess.PIPE if quiet else None
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=output, text=True)
    if proc.returncode != 0:
        print((proc.stdout or "")[-3000:], (proc.stderr or "")[-3000:], file=sys.stderr)
        raise RuntimeError(f"jobs/train.py {args[0]} exited {proc.returncode}: {' '.join(args)}")


def fit_and_test(
    name: str,
    configs: list[str],
    build: Path,
    run: Path,
    length: list[str],
    checkpoint: str,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fit `configs` (a base and a model file, then `overrides`) on `build` into `run`, test
    `checkpoint` with the same configs; the logged numbers.

    Returns:
        steps, fit seconds, median training samples/s and every `test/*` metric.
    """
    shutil.rmtree(run, ignore_errors=True)
    common = [*(a for c in configs for a in ("--config", str(REPO_ROOT / c))),
              "--data.root", str(build), "--trainer.default_root_dir", str(run),
              "--trainer.enable_model_summary", "false", *overrides]  # fmt: skip
    started = time.monotonic()
    _train(["fit", *common, *length], quiet=False)
    fit_s = time.monotonic() - started
    series = read_metrics_csv(newest_csv(run))
    ckpt = run / "checkpoints" / checkpoint
    steps = int(read_checkpoint_tree(ckpt)[0]["global_step"])
    _train(["test", *common, "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"],
           quiet=True)  # fmt: skip
    tested = read_metrics_csv(newest_csv(run))
    metrics = {
        k.removeprefix("test/"): v[-1][1] for k, v in tested.items() if k.startswith("test/")
    }
    return {"name": name, "config": configs, "steps": steps, "fit_s": round(fit_s, 1),
            "train_samples_per_s": train_throughput(series, max(steps, 1)),
            "checkpoint": str(ckpt), "test": metrics, "run": str(run)}  # fmt: skip


# --- AUC by gap -------------------------------------------------------------------------------


def gap_scores(runs: dict[str, dict[str, Any]], build: Path, events: Path) -> dict[str, Any]:
    """Test targets of the build, DIN-100's and TWIN's probabilities and the oracle's."""
    from lifeseq.jobs import ctr_eval

    targets = ctr_eval.collect_targets(build, "test")
    scores = {
        name: ctr_eval.sigmoid(ctr_eval.model_logits(Path(runs[name]["checkpoint"]), build))
        for name in ("din", "twin")
    }
    scores["oracle"] = ctr_eval.oracle_scores(build, events, targets)
    return {"targets": targets, "scores": scores}


def plot_auc_by_gap(rows: list[dict[str, Any]], models: list[str], path: Path) -> None:
    """Grouped bars: each model's test AUC per gap bucket (target counts under the labels), the
    oracle as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(rows))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [r[model] if r[model] is not None else np.nan for r in rows]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
    if all("oracle" in r for r in rows):
        oracle = [r["oracle"] if r["oracle"] is not None else np.nan for r in rows]
        ax.plot(x, oracle, "k-o", lw=2, label="oracle (the generator's own probability)")
    ax.set_xticks(x, [f"{r['bucket']}\n{r['targets']:,} targets" for r in rows])
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("test AUC")
    ax.set_xlabel("events since the target's category last occurred in its history")
    ax.set_title("DIN-100 vs TWIN by gap to the last same-category event, against the oracle")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- serving ----------------------------------------------------------------------------------


def _build_raw_ids(build: Path, name: str) -> dict[int, str]:
    """vocab id → raw id of every entry of the build's `vocab/{name}` (the export's vocabulary
    leaves out the ids its model never trained)."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(build / "vocab" / name), format="parquet").to_table()
    return dict(zip(table["id"].to_pylist(), table["raw_id"].to_pylist(), strict=True))


def example_requests(exports: dict[str, Path], build: Path) -> list[str]:
    """Score the first test user's first targets with each CTR export and ask HSTU for its top
    5; the printed lines."""
    from lifeseq.features.dataset import LifeseqDataset
    from lifeseq.serving.scorer import CtrRequest, NextItemRequest, Scorer

    dataset = LifeseqDataset.from_manifest(str(build), "test", batch_size=1, max_history=100_000,
                                           shuffle=False)  # fmt: skip
    batch = next(iter(dataset.iter_worker(0)))
    lines = []
    scorers = {name: Scorer.load(path) for name, path in exports.items()}
    item_raw, behavior_raw = _build_raw_ids(build, "item"), _build_raw_ids(build, "behavior")
    end = int(batch.target_hist_len[0])
    same_prefix = torch.nonzero(batch.target_hist_len == end).flatten()[:5]
    history = {k: batch.history[k].values.numpy()[:end] for k in ("item", "behavior", "ts")}
    items = [item_raw[int(i)] for i in history["item"]]
    behaviors = [behavior_raw[int(b)] for b in history["behavior"]]
    candidates = [item_raw.get(int(i), "?") for i in batch.target_item[same_prefix].tolist()]
    request_ts = int(max(history["ts"][-1], batch.target_ts[same_prefix].max()))
    lines.append(f"first test user: {len(items):,} events; candidates {candidates}, "
                 f"labels {batch.label[same_prefix].int().tolist()}")  # fmt: skip
    for name, scorer in scorers.items():
        if scorer.family == "ctr":
            scores = scorer.score(CtrRequest(items, behaviors, history["ts"].tolist(), candidates,
                                             request_ts))  # fmt: skip
            lines.append(f"  {name:8s} P(click) {np.round(scores.probabilities, 3).tolist()}")
        else:
            recs = scorer.recommend(NextItemRequest(items, history["ts"].tolist(), request_ts, k=5))
            lines.append(f"  {name:8s} top-5 next items {recs.items}")
    return lines


# --- report -----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def report_table(report: dict[str, Any]) -> str:
    """The final Markdown report."""
    data, runs = report["data"], report["runs"]
    lines = ["| | value |", "|---|---|"]
    lines.append(f"| events (synthetic) | {data['events']:,} of {data['users']:,} users |")
    lines.append(f"| vocab | item {data['vocab']['item']:,}, category {data['vocab']['category']:,}"
                 f", behavior {data['vocab']['behavior']} |")  # fmt: skip
    for split in ("train", "valid", "test"):
        s = data["splits"][split]
        lines.append(f"| {split} targets | {s['targets']:,} ({s['positives']:,} positive), "
                     f"{s['samples']:,} users |")  # fmt: skip
    lines += ["", "| model | steps | train samples/s | test | export MB | p50 / p99 ms, 1K events"
              " × 100 | p50 / p99 ms, 10K × 100 |", "|---|---:|---:|---|---:|---|---|"]  # fmt: skip
    for name, run in runs.items():
        test = run["test"]
        if "auc" in test:
            quality = f"AUC {_fmt(test['auc'])}, GAUC {_fmt(test.get('gauc'))}"
        else:
            quality = f"HR@10 {_fmt(test.get('hr@10'))}, NDCG@10 {_fmt(test.get('ndcg@10'))}"
        latency = {c["history"]: c for c in run.get("latency", [])}
        cells = [f"{_fmt(latency[h]['p50_ms'], '.1f')} / {_fmt(latency[h]['p99_ms'], '.1f')}"
                 if h in latency else "–" for h in (1000, 10_000)]  # fmt: skip
        lines.append(f"| {name} | {run['steps']} | {_fmt(run['train_samples_per_s'], ',.0f')} | "
                     f"{quality} | {_fmt(run.get('export_mb'), '.1f')} | {cells[0]} | {cells[1]} |")  # fmt: skip
    oracle = report.get("oracle") or {}
    lines.append(f"| oracle | – | – | AUC {_fmt(oracle.get('auc'))}, GAUC {_fmt(oracle.get('gauc'))}"
                 " (the generator's own probability: the ceiling) | – | – | – |")  # fmt: skip
    lines += ["", "| gap to last same-category event | targets | positives | DIN-100 AUC | TWIN AUC "
              "| oracle AUC |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in report["auc_by_gap"]:
        lines.append(f"| {row['bucket']} | {row['targets']:,} | {_fmt(row['positive_share'], '.0%')} "
                     f"| {_fmt(row.get('din'))} | {_fmt(row.get('twin'))} "
                     f"| {_fmt(row.get('oracle'))} |")  # fmt: skip
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in report["stage_seconds"].items())
    lines += ["", f"time: {report['total_s']:.0f} s ({stages})"]
    return "\n".join(lines)


def pictures_section(work: Path) -> str:
    """Markdown links (relative to `work`) to the demo's pictures that exist: the build report,
    each model's training curves and the AUC-by-gap chart."""
    lines = ["pictures:"]
    report = work / "build" / "report"
    if (report / "summary.md").is_file():
        lines.append(f"- build report: [summary]({(report / 'summary.md').relative_to(work)})"
                     + "".join(f", [{p.stem}]({p.relative_to(work)})"
                               for p in sorted(report.glob("*.png"))))  # fmt: skip
    for png in sorted((work / "plots").glob("*.png")):
        lines.append(f"- {png.stem.replace('_', ' ')}: [{png.name}]({png.relative_to(work)})")
    return "\n".join(lines)


def run(settings: DemoSettings) -> dict[str, Any]:
    """Run every stage (see the module docstring); the report."""
    from lifeseq.jobs import bench_serving, build_lifelong, synth
    from lifeseq.serving.export import export_checkpoint

    work = settings.workdir
    events, build, plots = work / "events", work / "build", work / "plots"
    stages = Stages()
    stages.begin(1, f"synth: lifeseq synth --events {settings.events:,} --seed {settings.seed} "
                    f"{' '.join(SYNTH_ARGS)}")  # fmt: skip
    if synth.main(["--out", str(events), "--events", str(settings.events), "--seed",
                   str(settings.seed), "--overwrite", *SYNTH_ARGS]):  # fmt: skip
        raise RuntimeError("lifeseq synth failed")
    stages.begin(2, f"build: lifeseq build --config {settings.pipeline_config} (local Spark)")
    if build_lifelong.main(["--config", settings.pipeline_config, "--input", str(events),
                            "--output", str(build), "--overwrite"]):  # fmt: skip
        raise RuntimeError("lifeseq build failed")
    steps = str(settings.ctr_steps)
    ctr_length = ["--trainer.max_steps", steps, "--trainer.val_check_interval", steps]
    hstu_length = ["--trainer.max_epochs", str(settings.hstu_epochs),
                   "--trainer.check_val_every_n_epoch", str(settings.hstu_epochs)]  # fmt: skip
    # The synthetic catalog (100,000 items) is above base.yaml's full-softmax limit (refused at
    # start-up), and the demo's time budget holds the most recent max_len events per user.
    hstu_overrides = (
        "--model.init_args.loss.full_softmax",
        "false",
        "--data.train_windows",
        "null",
    )
    runs: dict[str, dict[str, Any]] = {}
    stages.begin(3, f"train: TWIN and DIN-100 ({steps} steps each), HSTU "
                    f"({settings.hstu_epochs} epochs); test each")  # fmt: skip
    for name, configs, length, ckpt, overrides in (
        ("twin", ["configs/ctr/base.yaml", "configs/ctr/twin.yaml"], ctr_length, "last.ckpt", ()),
        ("din", ["configs/ctr/base.yaml", "configs/ctr/din.yaml"], ctr_length, "last.ckpt", ()),
        ("hstu", ["configs/sequential/base.yaml", "configs/sequential/hstu.yaml"], hstu_length,
         "last.ckpt", hstu_overrides),
    ):  # fmt: skip
        flags = " ".join(f"--config {c}" for c in configs)
        print(f"--- {name}: jobs/train.py fit {flags} {' '.join([*length, *overrides])}",
              flush=True)  # fmt: skip
        runs[name] = fit_and_test(
            name, configs, build, work / "runs" / name, length, ckpt, overrides
        )
        print(f"--- {name}: test {json.dumps(runs[name]['test'])}", flush=True)
        curves = newest_csv(Path(runs[name]["run"])).parent.parent / "version_0"
        if (curves / "training_curves.png").is_file():
            plots.mkdir(parents=True, exist_ok=True)
            shutil.copy(curves / "training_curves.png", plots / f"{name}_training_curves.png")
    stages.begin(4, "evaluate: DIN-100, TWIN and the oracle: test AUC by gap to the last "
                    "same-category event")  # fmt: skip
    scored = gap_scores(runs, build, events)
    gap_rows = ctr_eval.metrics_by_gap(scored["scores"], scored["targets"])
    oracle = ctr_eval.ctr_metrics(scored["scores"]["oracle"], scored["targets"])
    plot_auc_by_gap(gap_rows, ["din", "twin"], plots / "auc_by_gap.png")
    stages.begin(5, "export: lifeseq export of TWIN, DIN-100, HSTU")
    exports = {}
    for name, result in runs.items():
        exports[name] = work / "export" / name
        manifest = export_checkpoint(  # the AOTInductor packages would add ~1 min per model
            result["checkpoint"], exports[name], str(build), overwrite=True, compiled=False
        )
        result["export_mb"] = sum(e["bytes"] for e in manifest["files"].values()) / 1e6
        print(f"exported {name} to {exports[name]} ({result['export_mb']:.1f} MB)", flush=True)
    stages.begin(6, "serve: a test user's requests through serving.Scorer")
    for line in example_requests(exports, build):
        print(line)
    stages.begin(7, f"latency: serving.Scorer p50/p99, {settings.latency_requests} requests per "
                    "cell")  # fmt: skip
    latency = bench_serving.run(list(exports.values()), [1000, 10_000], [100],
                                requests=settings.latency_requests, warmup=3)  # fmt: skip
    for name, result in zip(exports, latency["results"], strict=True):
        runs[name]["latency"] = result["cells"]
    stages.end()
    manifest = json.loads((build / "manifest.json").read_text())
    report = {
        "settings": {k: str(v) for k, v in asdict(settings).items()},
        "data": {
            "events": settings.events,
            "users": manifest["splits"]["train"]["samples"],
            "vocab": manifest["vocab"],
            "splits": {
                s: {k: manifest["splits"][s][k] for k in ("samples", "targets", "positives")}
                for s in ("train", "valid", "test")
            },  # fmt: skip
        },
        "runs": runs,
        "auc_by_gap": gap_rows,
        "oracle": oracle,
        "stage_seconds": stages.seconds,
        "total_s": round(time.monotonic() - stages.started, 1),
        "latency_settings": latency["settings"],
    }
    table = report_table(report) + "\n\n" + pictures_section(work)
    (work / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (work / "report.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nwrote {work / 'report.md'}, {work / 'report.json'}, {plots}/*.png, "
          f"{build / 'report'}/*.png")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the demo; exit code."""
    parser = argparse.ArgumentParser(prog="lifeseq demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="out/demo", type=Path)
    parser.add_argument("--events", type=int, default=DemoSettings.events)
    parser.add_argument("--seed", type=int, default=DemoSettings.seed)
    parser.add_argument("--config", default=DemoSettings.pipeline_config, help="pipeline config")
    parser.add_argument("--ctr-steps", type=int, default=DemoSettings.ctr_steps)
    parser.add_argument("--hstu-epochs", type=int, default=DemoSettings.hstu_epochs)
    parser.add_argument("--latency-requests", type=int, default=DemoSettings.latency_requests)
    args = parser.parse_args(argv)
    try:  # before any stage: a broken config costs one line, not a synth run
        load_config(args.config)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # one process reads the (maybe multi-rank) checkpoint: DCP's notice says just that
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    settings = DemoSettings(args.workdir, args.events, args.seed, args.config, args.ctr_steps,
                            args.hstu_epochs, args.latency_requests)  # fmt: skip
    try:
        run(settings)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
