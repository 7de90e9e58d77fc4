"""Lifelong CTR benchmark: quality, training throughput and scoring latency of every CTR model.

On one fixed synthetic dataset (`jobs.synth`, seed 7, built once with the Spark pipeline and
`configs/pipeline/ctr_bench.yaml`, reused while its parameters are unchanged) it runs, for each
model config `configs/ctr/NAME.yaml` (every file there but `base.yaml`, which each is merged
onto: DIN-100 alone, or with one long-term unit):

* `jobs/train.py fit` for one epoch (or `--steps` steps; a subprocess per model, one after
  another — CTR models over-fit item ids when trained for several epochs), then
  `jobs/train.py test` on `last.ckpt`: test AUC, GAUC (and its user counts), logloss from the
  CSV logger; training targets/s = median of the logged `train/samples_per_s` after the first
  10% of steps; wall seconds of `fit`;
* per-target scoring latency, in this process on 2 threads (torch embedding backend, eval mode,
  no grad, fresh weights): one request = one user with L = 1,000 or 10,000 history events and
  100 candidate targets at request time, every window covering the whole history; median of 7
  timed forwards after 2 warm-ups, in ms per request and per target. Other jobs on the
  machine inflate these; the 1-minute load average before timing is recorded with them.

Prints a Markdown table (with the dataset counts, each model's AUC minus DIN-100's and the
full / TWIN latency ratio at 10K) and, with `--out FILE.json`, writes the numbers, settings,
commit and machine. Exits nonzero when any model failed (the others still run).

    python -m jobs.bench_ctr [--quick] [--out bench_out/ctr.json] [--workdir bench_out/ctr]
        [--models din,twin,...] [--steps N]
        [--skip-latency] [--skip-train]

Dataset: 1,000 users of at most 5,000 events (`--quick`: 300 users). Validation runs once, at
the end of training, over the whole validation split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.batch import CtrBatch, collate_ctr
from features.schema import FeatureConfig, FeatureSchema
from jobs.bench_report import (
    WARMUP_FRACTION,
    git_commit,
    newest_csv,
    read_metrics_csv,
    run_logged,
    run_or_raise,
    tail,
    train_throughput,
    write_json,
)
from jobs.run_config import load_run_config
from pipeline.sample_codec import UserSample

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_CONFIG = REPO_ROOT / "configs" / "pipeline" / "ctr_bench.yaml"
MODEL_CONFIGS = REPO_ROOT / "configs" / "ctr"
BASE_CONFIG = MODEL_CONFIGS / "base.yaml"
#: Every model config of the family (`configs/ctr/*.yaml` but the base): a new file is a new row.
MODELS = tuple(sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml") if p != BASE_CONFIG))
BASELINE = "din"
SYNTH_SEED = 7
#: `jobs.synth` sizes of the full and the `--quick` dataset.
SYNTH_SIZES = {
    "full": {"users": 1000, "max_events": 5000},
    "quick": {"users": 300, "max_events": 5000},
}
#: Long-term interests that recur rarely: 16 interest categories sharing 20% of a user's events,
#: so a return to one typically comes more than 100 events after the previous one (with the
#: synth defaults, 4 interests at 4%, most returns fall inside the last 100 events).
SYNTH_LONG_TERM = {"long_term_interests": 16, "long_term_share": 0.2}
LATENCY_LENGTHS = (1000, 10_000)
LATENCY_TARGETS = 100
LATENCY_WARMUP = 2
LATENCY_REPEATS = 7
LATENCY_THREADS = 2
#: Test metrics read from the CSV logger (`test/<name>`).
TEST_METRICS = ("auc", "gauc", "logloss", "gauc_users", "gauc_skipped_users")


# --- dataset ----------------------------------------------------------------------------------


def dataset_params(quick: bool) -> dict[str, Any]:
    """What the dataset depends on: synth arguments and the pipeline config (path and hash)."""
    return {
        "synth": {
            "seed": SYNTH_SEED,
            **SYNTH_SIZES["quick" if quick else "full"],
            **SYNTH_LONG_TERM,
        },
        "build_config": str(PIPELINE_CONFIG.relative_to(REPO_ROOT)),
        "build_config_sha256": hashlib.sha256(PIPELINE_CONFIG.read_bytes()).hexdigest(),
    }


def dataset_is_current(workdir: Path, params: dict[str, Any]) -> bool:
    """Whether `workdir/build` holds a finished build made with `params` (`workdir/dataset.json`)."""
    record = workdir / "dataset.json"
    if not (workdir / "build" / "manifest.json").is_file() or not record.is_file():
        return False
    try:
        return json.loads(record.read_text()) == params
    except json.JSONDecodeError:
        return False


def build_dataset(workdir: Path, params: dict[str, Any]) -> dict[str, float]:
    """Synthesize events into `workdir/events` and build `workdir/build`; record `params`.

    Returns:
        Wall seconds of `synth` and `build`.

    Raises:
        RuntimeError: a step failed (its stderr tail is printed).
    """
    record = workdir / "dataset.json"
    record.unlink(missing_ok=True)
    events, build = workdir / "events", workdir / "build"
    synth = params["synth"]
    synth_s = run_or_raise(
        [
            sys.executable, "-m", "jobs.synth", "--out", str(events), "--overwrite",
            "--seed", str(synth["seed"]), "--users", str(synth["users"]),
            "--max-events", str(synth["max_events"]),
            "--long-term-interests", str(synth["long_term_interests"]),
            "--long-term-share", str(synth["long_term_share"]),
        ],
        workdir / "logs" / "synth",
    )  # fmt: skip
    build_s = run_or_raise(
        [
            sys.executable, "-m", "jobs.cli", "build", "--config", str(PIPELINE_CONFIG),
            "--input", str(events), "--output", str(build), "--overwrite",
        ],
        workdir / "logs" / "build",
    )  # fmt: skip
    record.write_text(json.dumps(params, indent=2) + "\n")
    return {"synth_s": round(synth_s, 1), "build_s": round(build_s, 1)}


def dataset_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """Event, user and target counts of a build's manifest."""
    counts = manifest["counts"]
    return {
        "events_in": counts["events_in"],
        "events_valid": counts["events_valid"],
        "users": manifest["users"],
        "users_without_targets": counts.get("users_without_targets"),
        "max_user_events": manifest.get("max_user_events"),
        "vocab": manifest.get("vocab"),
        "splits": {
            name: {key: split[key] for key in ("samples", "targets", "positives")}
            for name, split in manifest["splits"].items()
        },
    }


def signal_analysis(build: Path, recent: int = 100) -> dict[str, float]:
    """How much of the test split's signal lies beyond the most recent `recent` events.

    For every test target, over its whole window: whether its category occurs among the last
    `recent` events, or only earlier. Also the AUC of two simple count features: same-category
    events in the last `recent` (what DIN-100 can see), and — over the targets with none there —
    earlier same-category events that were not views (what only a long-term unit can see).
    """
    from torchmetrics.functional.classification import binary_auroc

    from features.dataset import LifeseqDataset

    dataset = LifeseqDataset.from_manifest(
        str(build), "test", batch_size=64, max_history=100_000, shuffle=False
    )
    recent_counts: list[int] = []
    labels: list[int] = []
    far_engaged: list[int] = []
    far_labels: list[int] = []
    earlier_only = {0: 0, 1: 0}
    totals = {0: 0, 1: 0}
    view_id: int | None = None
    for batch in dataset.iter_worker(0):
        categories = batch.history["category"].values.numpy()
        behaviors = batch.history["behavior"].values.numpy()
        if view_id is None and behaviors.size:
            view_id = int(np.bincount(behaviors).argmax())  # the most frequent behavior: views
        offsets = batch.history["category"].offsets.numpy()
        for j in range(batch.num_targets):
            start = offsets[int(batch.target_user[j])]
            lo, hi = start + int(batch.target_hist_start[j]), start + int(batch.target_hist_len[j])
            same = categories[lo:hi] == int(batch.target_category[j])
            label = int(batch.label[j])
            in_recent = int(same[-recent:].sum())
            recent_counts.append(in_recent)
            labels.append(label)
            totals[label] += 1
            if in_recent == 0:
                earlier_only[label] += int(same.any())
                far_engaged.append(int((same & (behaviors[lo:hi] != view_id)).sum()))
                far_labels.append(label)

    def auc(feature: list[int], target: list[int]) -> float:
        return float(binary_auroc(torch.tensor(feature, dtype=torch.float), torch.tensor(target)))

    return {
        "positives_category_only_beyond_recent": earlier_only[1] / max(totals[1], 1),
        "negatives_category_only_beyond_recent": earlier_only[0] / max(totals[0], 1),
        "auc_recent_same_category_count": auc(recent_counts, labels),
        "targets_without_recent_same_category": len(far_labels),
        "auc_earlier_engaged_count_on_those": auc(far_engaged, far_labels),
    }


# --- training -----------------------------------------------------------------------------------


def final_test_metrics(series: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """The last logged `test/<name>` of each of `TEST_METRICS` that is present."""
    return {
        name: series[f"test/{name}"][-1][1] for name in TEST_METRICS if f"test/{name}" in series
    }


def train_commands(
    model: str, build: Path, run_dir: Path, steps: int | None
) -> tuple[list[str], list[str]]:
    """The `fit` and `test` command lines of one model: one epoch (validated at its end), or
    `steps` steps (validated at the last one)."""
    common = [
        *config_args(model), "--data.root", str(build),
        "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    script = [sys.executable, str(REPO_ROOT / "jobs" / "train.py")]
    if steps is None:
        length = [
            "--trainer.max_epochs", "1", "--trainer.max_steps", "-1",
            "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1",
        ]  # fmt: skip
    else:
        length = ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)]
    fit = [*script, "fit", *common, *length]
    test = [*script, "test", *common, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    return fit, test


def train_model(model: str, build: Path, workdir: Path, steps: int | None) -> dict[str, Any]:
    """Fit and test one model in subprocesses; its metrics, or {"error": ...} on a failure."""
    run_dir = workdir / "runs" / model
    shutil.rmtree(run_dir, ignore_errors=True)
    fit, test = train_commands(model, build, run_dir, steps)
    result: dict[str, Any] = {}
    for stage, command in (("fit", fit), ("test", test)):
        log_stem = workdir / "logs" / f"{model}-{stage}"
        seconds, rc = run_logged(command, log_stem)
        if rc != 0:
            print(f"--- {model} {stage} failed ({rc}); stderr tail:", file=sys.stderr)
            print(tail(Path(f"{log_stem}.err")), file=sys.stderr)
            return {**result, "error": f"{stage} exited {rc}; see {log_stem}.err"}
        try:
            series = read_metrics_csv(newest_csv(run_dir))
        except FileNotFoundError as err:
            return {**result, "error": f"{stage}: {err}"}
        if stage == "fit":
            result["fit_seconds"] = round(seconds, 1)
            logged = [step for step, _ in series.get("train/loss", [])]
            result["steps"] = max(logged) + 1 if logged else None
            rate = train_throughput(series, result["steps"] or 1)
            result["train_samples_per_s"] = round(rate, 1) if rate is not None else None
            if "val/auc" in series:
                result["val_auc"] = series["val/auc"][-1][1]
        else:
            result["test_seconds"] = round(seconds, 1)
            metrics = final_test_metrics(series)
            if "auc" not in metrics:
                return {**result, "error": "test: no test/auc in the CSV log"}
            result.update(metrics)
    return result


# --- latency -------------------------------------------------------------------------------------


def latency_batch(
    vocab: dict[str, int], length: int, targets: int = LATENCY_TARGETS, seed: int = 0
) -> CtrBatch:
    """One request: a user with `length` events and `targets` candidates at request time.

    Ids are random valid ids (>= 2, below each table's size), timestamps strictly increase and
    every target's window is the whole history [0, length).

    Args:
        vocab: rows of the `item`, `category` and `behavior` tables (ids 0, 1 reserved).
        length: history events L.
        targets: candidate targets T.
        seed: random seed.
    """
    rng = np.random.default_rng(seed)

    def ids(table: str, n: int) -> np.ndarray:
        rows = vocab[table]
        return rng.integers(min(2, rows - 1), rows, size=n).astype(np.int64)

    ts = 1_700_000_000 + np.cumsum(rng.integers(1, 3600, size=length)).astype(np.int64)
    history = {
        "item": ids("item", length),
        "category": ids("category", length),
        "behavior": ids("behavior", length),
        "ts": ts,
    }
    target_set = {
        "target_item": ids("item", targets),
        "target_category": ids("category", targets),
        "target_ts": np.full(targets, ts[-1] + 1, dtype=np.int64),
        "target_label": (np.arange(targets) % 2).astype(np.float32),
        "target_hist_len": np.full(targets, length, dtype=np.int64),
    }
    sample = UserSample(user="latency", split="test", history=history, targets=target_set)
    return collate_ctr([sample], max_history=length)


def config_args(model: str) -> list[str]:
    """`--config` arguments of a model: the family's base, then the model's file."""
    return ["--config", str(BASE_CONFIG), "--config", str(MODEL_CONFIGS / f"{model}.yaml")]


def build_model(model: str, build: Path) -> torch.nn.Module:
    """A fresh `model` (its config, the torch embedding backend) for the build's schema."""
    run = load_run_config(
        [BASE_CONFIG, MODEL_CONFIGS / f"{model}.yaml"],
        ["--model.init_args.embedding.backend", "torch", "--data.root", str(build)],
    )
    features = FeatureConfig(
        embedding_dim=run.data["embedding_dim"], max_history=run.data["max_history"]
    )
    return run.module.build_model(FeatureSchema.from_manifest(str(build), features))


def time_forward(model: torch.nn.Module, batch: CtrBatch) -> float:
    """Median seconds of `LATENCY_REPEATS` forwards after `LATENCY_WARMUP` warm-ups."""
    times = []
    with torch.no_grad():
        for repeat in range(LATENCY_WARMUP + LATENCY_REPEATS):
            start = time.perf_counter()
            model(batch)
            if repeat >= LATENCY_WARMUP:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_latency(model_name: str, build: Path) -> dict[str, dict[str, float]]:
    """ms per request and per target of a fresh `model_name` model at each `LATENCY_LENGTHS`."""
    model = build_model(model_name, build).eval()
    dims = model.dims
    vocab = {"item": dims.item_rows, "category": dims.category_rows, "behavior": dims.behavior_rows}
    per_request, per_target = {}, {}
    for length in LATENCY_LENGTHS:
        ms = 1000 * time_forward(model, latency_batch(vocab, length, seed=length))
        per_request[str(length)] = round(ms, 3)
        per_target[str(length)] = round(ms / LATENCY_TARGETS, 4)
    return {"latency_ms_per_request": per_request, "latency_ms_per_target": per_target}


# --- report ---------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(payload: dict[str, Any]) -> str:
    """The results table plus dataset, DIN-100-delta and full / TWIN lines, in Markdown."""
    models: dict[str, dict[str, Any]] = payload["models"]
    lengths = [str(n) for n in LATENCY_LENGTHS]
    head = "| model | test AUC | GAUC | logloss | train targets/s | " + " | ".join(
        f"ms/target @{int(n) // 1000}K" for n in lengths
    )
    lines = [head + " |", "|---|" + "---:|" * (head.count("|") - 1)]
    for name, r in models.items():
        latency = r.get("latency_ms_per_target", {})
        cells = [
            name,
            "error" if "error" in r else _fmt(r.get("auc"), ".4f"),
            _fmt(r.get("gauc"), ".4f"),
            _fmt(r.get("logloss"), ".4f"),
            _fmt(r.get("train_samples_per_s"), ",.0f"),
            *(_fmt(latency.get(n), ".3f") for n in lengths),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    data = payload.get("dataset")
    if data:
        splits = data["splits"]
        lines.append("")
        lines.append(
            f"dataset: {data['events_valid']:,} events, {data['users']:,} users; targets "
            + ", ".join(
                f"{s} {splits[s]['targets']:,} ({splits[s]['positives']:,} positive)"
                for s in ("train", "valid", "test")
                if s in splits
            )
        )
    signal = (data or {}).get("signal")
    if signal:
        lines.append(
            "test targets whose category occurs only beyond the last 100 events: "
            f"{signal['positives_category_only_beyond_recent']:.1%} of positives, "
            f"{signal['negatives_category_only_beyond_recent']:.1%} of negatives; AUC of the "
            f"same-category count in the last 100: {signal['auc_recent_same_category_count']:.3f};"
            " on the targets without one there, AUC of earlier non-view same-category events: "
            f"{signal['auc_earlier_engaged_count_on_those']:.3f}"
        )
    base = models.get(BASELINE, {}).get("auc")
    deltas = [
        f"{name} {r['auc'] - base:+.4f}"
        for name, r in models.items()
        if name != BASELINE and base is not None and r.get("auc") is not None
    ]
    if deltas:
        lines.append("AUC - DIN-100: " + ", ".join(deltas))
    ratio = payload.get("summary", {}).get("full_over_twin_ms_per_target_10000")
    if ratio is not None:
        lines.append(f"full / twin latency per target @10K: {ratio:.2f}x")
    return "\n".join(lines)


def summarize(models: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Side-by-side ratios: AUC deltas against DIN-100 and full / TWIN latency at 10K."""
    summary: dict[str, float] = {}
    base = models.get(BASELINE, {}).get("auc")
    for name, r in models.items():
        if name != BASELINE and base is not None and r.get("auc") is not None:
            summary[f"auc_minus_din_{name}"] = round(r["auc"] - base, 5)
    full = models.get("full", {}).get("latency_ms_per_target", {}).get("10000")
    twin = models.get("twin", {}).get("latency_ms_per_target", {}).get("10000")
    if full and twin:
        summary["full_over_twin_ms_per_target_10000"] = round(full / twin, 2)
    return summary


def _model_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(MODELS)}, got {text!r}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m jobs.bench_ctr`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 users instead of 1,000")
    parser.add_argument("--out", default=None, help="write JSON results here")
    parser.add_argument("--workdir", default="bench_out/ctr", help="dataset, runs and logs")
    parser.add_argument("--models", type=_model_list, default=list(MODELS), help="e.g. din,twin")
    parser.add_argument(
        "--steps", type=int, default=None, help="train this many steps instead of one epoch"
    )
    parser.add_argument("--skip-latency", action="store_true", help="no latency measurement")
    parser.add_argument("--skip-train", action="store_true", help="no training / test")
    args = parser.parse_args(argv)
    steps = args.steps
    if steps is not None and steps < 1:
        parser.error(f"--steps: expected >= 1, got {steps}")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    build = workdir / "build"
    started = time.perf_counter()

    params = dataset_params(args.quick)
    if dataset_is_current(workdir, params):
        print(f"reusing the dataset in {build}", flush=True)
        build_timings: dict[str, float] = {}
    else:
        print(f"building the dataset in {build} ({params['synth']}) ...", flush=True)
        try:
            build_timings = build_dataset(workdir, params)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    dataset = {**dataset_summary(json.loads((build / "manifest.json").read_text())), **params}
    dataset.update(build_timings)
    dataset["signal"] = signal_analysis(build)

    models: dict[str, dict[str, Any]] = {name: {} for name in args.models}
    if not args.skip_train:
        for name in args.models:
            print(f"training {name}: {steps or 'one epoch of'} steps ...", flush=True)
            models[name].update(train_model(name, build, workdir, steps))
            print(f"  {name}: {json.dumps(models[name])}", flush=True)
    load_before_latency = None
    if not args.skip_latency:
        torch.set_num_threads(LATENCY_THREADS)
        load_before_latency = round(os.getloadavg()[0], 2)  # other jobs inflate the latencies
        for name in args.models:
            print(f"latency {name} ...", flush=True)
            models[name].update(model_latency(name, build))

    payload = {
        "models": models,
        "summary": summarize(models),
        "dataset": dataset,
        "settings": {
            "quick": args.quick,
            "steps": steps if steps is not None else "one epoch",
            "models": args.models,
            "model_configs": {
                n: ["configs/ctr/base.yaml", f"configs/ctr/{n}.yaml"] for n in args.models
            },
            "throughput_skips_first_fraction": WARMUP_FRACTION,
            "latency": {
                "lengths": list(LATENCY_LENGTHS),
                "targets_per_request": LATENCY_TARGETS,
                "warmup": LATENCY_WARMUP,
                "repeats": LATENCY_REPEATS,
                "threads": LATENCY_THREADS,
                "backend": "torch",
            },
            "skip_train": args.skip_train,
            "skip_latency": args.skip_latency,
        },
        "commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_1m_before_latency": load_before_latency,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(markdown(payload))
    print(f"total {payload['seconds']:.0f} s")
    if args.out:
        write_json(args.out, payload)
    failed = [name for name, r in models.items() if "error" in r]
    if failed:
        print(f"error: failed models: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
