"""Lifelong CTR benchmark: quality against the generator's ceiling, training throughput and
scoring latency of every CTR model.

On one fixed synthetic dataset (`jobs.synth`, seed 7, built once with the Spark pipeline and
`configs/pipeline/ctr_bench.yaml`, reused while its parameters are unchanged) it runs, for each
model config `configs/ctr/NAME.yaml` (every file there but `base.yaml`, which each is merged
onto) and each seed of `--seeds`:

* `jobs/train.py fit` for one epoch (or `--steps` steps; a subprocess per run), then
  `jobs/train.py test` on `last.ckpt`: test AUC, GAUC, logloss from the CSV logger; training
  targets/s = median of the logged `train/samples_per_sec` after the first 10% of steps; then
  every test target's logit in this process (`jobs.ctr_eval.model_logits`) for the test AUC per
  gap bucket (events since the target's category last occurred in its window) and on the far
  targets (gap >= 100: the category occurred, but before what DIN-100 sees);
* the **oracle** (`pipeline.synth_oracle`): the generator's own probability that each test
  target is the real positive, its AUC/GAUC/logloss overall and per bucket, and a Monte-Carlo
  replica of its AUC from fresh draws of the generator (they must agree);
* per-target scoring latency, in this process on 2 threads (torch embedding backend, eval mode,
  no grad, fresh weights): one request = one user with L = 1K / 10K / 100K history events and
  100 candidates, every window covering the whole history; median of 7 timed forwards after 2
  warm-ups (100K: 1 warm-up, 1 timed).

Prints a Markdown table (mean ± sd over seeds; each model's AUC minus DIN-100's; the share of
the DIN-100 → oracle gap a model closes on the far targets), writes `--out FILE.json` and
`--png FILE.png` (AUC per gap bucket per model, the oracle as a line). Exits nonzero when any
run failed (the others still run).

    python -m lifeseq.jobs.bench_ctr [--quick] [--seeds 0,1,2] [--out bench_out/ctr.json]
        [--png docs/ctr_auc_by_gap.png] [--workdir bench_out/ctr] [--models din,twin,...]
        [--steps N] [--skip-latency] [--skip-train] [--fresh]

A finished run's result is stored in `WORKDIR/results/` and reused while the dataset, the
model's configs, the training length and the seed are unchanged (`--fresh` retrains), so adding
a model trains only the new one.

Dataset: 1,000 users of at most 5,000 events (`--quick`: 300 users). Validation runs once, at
the end of training, over the whole validation split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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

from lifeseq.features.batch import CtrBatch, collate_ctr
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.jobs import ctr_eval
from lifeseq.jobs.bench_report import (
    WARMUP_FRACTION,
    config_sha256,
    configs_error,
    git_commit,
    newest_csv,
    read_metrics_csv,
    run_logged,
    run_or_raise,
    tail,
    train_throughput,
    write_json,
)
from lifeseq.jobs.run_config import load_run_config
from lifeseq.pipeline.sample_codec import UserSample

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_CONFIG = REPO_ROOT / "configs" / "pipeline" / "ctr_bench.yaml"
MODEL_CONFIGS = REPO_ROOT / "configs" / "ctr"
BASE_CONFIG = MODEL_CONFIGS / "base.yaml"
#: Every model config of the family (`configs/ctr/*.yaml` but the base): a new file is a new row.
BASELINE = "din"
#: Table order: the baseline, the long-term units, the whole models; a new file comes last.
ORDER = ("din", "sim_hard", "sim_soft", "eta", "twin", "full", "ubr4ctr", "sdim", "bst", "dien",
         "mimn")  # fmt: skip
MODELS = tuple(
    sorted(
        (p.stem for p in MODEL_CONFIGS.glob("*.yaml") if p != BASE_CONFIG),
        key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name),
    )
)
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
LATENCY_LENGTHS = (1000, 10_000, 100_000)
LATENCY_TARGETS = 100
LATENCY_WARMUP = 2
LATENCY_REPEATS = 7
#: From this history length on, one warm-up and one timed forward (full attention at 100K
#: takes seconds per request).
LATENCY_LONG = 100_000
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
    """Whether `workdir/build` holds a finished build made with `params` (`workdir/dataset.json`)
    whose item vocab has `first_ts` and `last_ts` (what `trainers.cold_items` holds new items
    out by; a build from before them is rebuilt)."""
    record = workdir / "dataset.json"
    if not (workdir / "build" / "manifest.json").is_file() or not record.is_file():
        return False
    try:
        if json.loads(record.read_text()) != params:
            return False
    except json.JSONDecodeError:
        return False
    import pyarrow.dataset as ds

    vocab = workdir / "build" / "vocab" / "item"
    names = ds.dataset(vocab, format="parquet").schema.names if vocab.is_dir() else []
    return {"first_ts", "last_ts"} <= set(names)


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
            sys.executable, "-m", "lifeseq.jobs.synth", "--out", str(events), "--overwrite",
            "--seed", str(synth["seed"]), "--users", str(synth["users"]),
            "--max-events", str(synth["max_events"]),
            "--long-term-interests", str(synth["long_term_interests"]),
            "--long-term-share", str(synth["long_term_share"]),
        ],
        workdir / "logs" / "synth",
    )  # fmt: skip
    build_s = run_or_raise(
        [
            sys.executable, "-m", "lifeseq.jobs.cli", "build", "--config", str(PIPELINE_CONFIG),
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

    from lifeseq.features.dataset import LifeseqDataset

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
    model: str,
    build: Path,
    run_dir: Path,
    steps: int | None,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
) -> tuple[list[str], list[str]]:
    """The `fit` and `test` command lines of one model and seed (model init, data order): one
    epoch (validated at its end), or `steps` steps (validated at the last one); `overrides`
    are further flags of both."""
    common = [
        *config_args(model), *overrides, "--data.root", str(build),
        "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
        "--seed_everything", str(seed), "--model.init_args.seed", str(seed),
        "--data.seed", str(seed),
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


def scorer_metrics(
    probs: np.ndarray, targets: ctr_eval.CtrTargets
) -> dict[str, float | dict[str, float | None] | None]:
    """AUC per gap bucket and on the far targets (category last seen >= 100 events back) of one
    scorer."""
    far = ctr_eval.far_mask(targets.gap)
    rows = ctr_eval.metrics_by_gap({"s": probs}, targets)
    return {
        "auc_by_gap": {row["bucket"]: row["s"] for row in rows},
        "far_auc": ctr_eval.auc(probs[far], targets.label[far]),
    }


#: Per-run numbers of `cold_item_metrics`, averaged over seeds.
COLD_KEYS = ("cold_targets", "cold_positive_rate", "cold_mean_prob", "known_auc",
             "known_mean_prob", "known_positive_rate", "cold_share_of_top_decile",
             "unknown_mean_prob", "unknown_share_of_top_decile", "new_targets",
             "new_positive_rate", "new_mean_prob", "old_cold_targets", "old_cold_positive_rate",
             "old_cold_mean_prob")  # fmt: skip
#: `jobs/train.py` flags of today's behaviour before `trainers.cold_items` (`--no-cold-items`).
NO_COLD_ITEMS = ("--model.init_args.cold_items.share", "0",
                 "--model.init_args.cold_items.untrained_as_oov", "false")  # fmt: skip


def run_variant(overrides: tuple[str, ...] | list[str]) -> str:
    """Suffix of a run's folder and result file: `-no-cold` for `--no-cold-items` runs."""
    return "-no-cold" if tuple(overrides) == NO_COLD_ITEMS else ""


def training_end(manifest: dict[str, Any]) -> int | None:
    """The build's `targets.valid_start`: the first time after training's data (None: the
    split is not by time)."""
    return (manifest.get("config") or {}).get("targets", {}).get("valid_start")


def new_item_flags(
    manifest: dict[str, Any], targets: ctr_eval.CtrTargets | None
) -> tuple[str, ...]:
    """`cold_items.new_item_days` of the benchmark's runs: the span the test scores after
    training's data ends (from `targets.valid_start` to the last test target, whole days), the
    age a test item unknown to training can reach; none for a split that is not by time."""
    valid_start = training_end(manifest)
    if targets is None or valid_start is None or len(targets) == 0:
        return ()
    days = max(1, math.ceil((int(targets.ts.max()) - int(valid_start)) / 86_400))
    return ("--model.init_args.cold_items.new_item_days", str(days))


def new_items(build: Path, targets: ctr_eval.CtrTargets) -> np.ndarray | None:
    """(T,) bool: targets whose item's first event (the item vocab's `first_ts`) is at or after
    `targets.valid_start`, the end of training's data; None without either."""
    from lifeseq.trainers.cold_items import ItemTimes

    manifest = json.loads((build / "manifest.json").read_text())
    valid_start = training_end(manifest)
    times = ItemTimes.read(str(build), int(manifest["vocab"]["item"]))
    if valid_start is None or times is None:
        return None
    return times.first.numpy()[targets.item] >= int(valid_start)


def cold_item_metrics(
    probs: np.ndarray,
    targets: ctr_eval.CtrTargets,
    untrained: np.ndarray | None,
    unknown_probs: np.ndarray | None = None,
    new: np.ndarray | None = None,
) -> dict[str, Any]:
    """How test targets on items the model never trained on score (`untrained`: (T,) bool from
    its checkpoint): their count, observed positive rate and mean predicted probability, the
    highest-ranked share of them, and the AUC on the other (known) items. `unknown_probs`:
    (T,) the probabilities of the same requests with every candidate an unknown id (a request
    of new items): their mean, and the share of them that would reach the known top decile.
    `new`: (T,) bool, targets whose item was first seen after training's data (`new_*`: what
    serving meets as unknown ids); `old_cold_*`: the untrained targets of older items (none
    of their events reached a training batch as themselves)."""
    cold: dict[str, Any] = {}
    groups = {"new": new}
    if new is not None and untrained is not None:
        groups["old_cold"] = untrained & ~new
    for name, mask in groups.items():
        if mask is None:
            continue
        cold[f"{name}_targets"] = int(mask.sum())
        if mask.any():
            cold[f"{name}_positive_rate"] = float(targets.label[mask].mean())
            cold[f"{name}_mean_prob"] = float(probs[mask].mean())
    if unknown_probs is not None:
        cold["unknown_mean_prob"] = float(unknown_probs.mean())
        cold["unknown_share_of_top_decile"] = float(
            (unknown_probs >= np.quantile(probs, 0.9)).mean()
        )
    if untrained is None:
        return cold
    known = ~untrained
    cold |= {"cold_targets": int(untrained.sum()),
             "known_auc": ctr_eval.auc(probs[known], targets.label[known])}  # fmt: skip
    if untrained.any():
        cold["cold_positive_rate"] = float(targets.label[untrained].mean())
        cold["cold_mean_prob"] = float(probs[untrained].mean())
        cold["known_mean_prob"] = float(probs[known].mean())
        cold["known_positive_rate"] = float(targets.label[known].mean())
        top = probs >= np.quantile(probs, 0.9)
        cold["cold_share_of_top_decile"] = float(untrained[top].mean())
    return cold


def train_model(
    model: str,
    build: Path,
    workdir: Path,
    steps: int | None,
    seed: int = 0,
    targets: ctr_eval.CtrTargets | None = None,
    overrides: tuple[str, ...] = (),
    new: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit and test one model at one seed in subprocesses, then score `targets` (the test
    split) from its checkpoint; its metrics, or {"error": ...} on a failure. `new`: (T,) bool,
    the targets on items first seen after training's data (`new_items`)."""
    run_dir = workdir / "runs" / f"{model}-s{seed}{run_variant(overrides)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    fit, test = train_commands(model, build, run_dir, steps, seed, overrides)
    result: dict[str, Any] = {}
    for stage, command in (("fit", fit), ("test", test)):
        log_stem = workdir / "logs" / f"{model}-s{seed}-{stage}"
        seconds, rc = run_logged(command, log_stem)
        if rc != 0:
            print(f"--- {model} seed {seed} {stage} failed ({rc}); stderr tail:", file=sys.stderr)
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
    if targets is not None:
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        probs = ctr_eval.sigmoid(ctr_eval.model_logits(ckpt, build))
        result.update(scorer_metrics(probs, targets))
        unknown = ctr_eval.sigmoid(ctr_eval.model_logits(ckpt, build, unknown_targets=True))
        untrained = ctr_eval.untrained_items(ckpt, targets)
        result.update(cold_item_metrics(probs, targets, untrained, unknown, new))
    return result


def run_spec(
    model: str,
    dataset: dict[str, Any],
    steps: int | None,
    seed: int,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What identifies a run: the dataset's parameters, the model's configs (parsed YAML,
    hashed), further flags, the training length and the seed. A stored result is reused only
    for the same spec (model code changes are not in it: `--fresh` retrains)."""
    sha = config_sha256(BASE_CONFIG, MODEL_CONFIGS / f"{model}.yaml")
    spec = {"dataset": dataset, "model": model, "config_sha256": sha, "steps": steps, "seed": seed}
    return {**spec, "overrides": list(overrides)} if overrides else spec


def result_path(workdir: Path, spec: dict[str, Any]) -> Path:
    """`workdir/results/MODEL-sSEED-LENGTH-CONFIG.json` (LENGTH: `epoch` or the steps; CONFIG:
    the configs' hash prefix), so runs of another length or config never replace each other."""
    length = "epoch" if spec["steps"] is None else f"{spec['steps']}steps"
    variant = run_variant(spec.get("overrides") or ())
    name = f"{spec['model']}-s{spec['seed']}-{length}{variant}-{spec['config_sha256'][:10]}.json"
    return workdir / "results" / name


def stored_result(workdir: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The result stored for `spec` by an earlier run (`result_path`)."""
    path = result_path(workdir, spec)
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored["result"] if stored.get("spec") == spec else None


def store_result(workdir: Path, spec: dict[str, Any], result: dict[str, Any]) -> None:
    """Keep a finished run's result for `stored_result` (failed runs are not kept)."""
    if "error" in result:
        return
    path = result_path(workdir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": spec, "result": result}, indent=1) + "\n")


def oracle_metrics(build: Path, synth_dir: Path, targets: ctr_eval.CtrTargets) -> dict[str, Any]:
    """The oracle's metrics on the test split, and its Monte-Carlo AUC from fresh draws."""
    scores, fresh, fresh_labels = ctr_eval.oracle_scores(
        build, synth_dir, targets, fresh_positives=np.random.default_rng(SYNTH_SEED)
    )
    return {
        **ctr_eval.ctr_metrics(scores, targets),
        **scorer_metrics(scores, targets),
        "monte_carlo_auc": ctr_eval.auc(fresh, fresh_labels),
    }


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


def time_forward(model: torch.nn.Module, batch: CtrBatch, warmup: int, repeats: int) -> float:
    """Median seconds of `repeats` forwards after `warmup` warm-ups (on CUDA: bf16 autocast,
    synchronized)."""
    cuda = next(model.parameters()).is_cuda
    times = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for repeat in range(warmup + repeats):
            start = time.perf_counter()
            model(batch)
            if cuda:
                torch.cuda.synchronize()
            if repeat >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_latency(
    model_name: str,
    build: Path,
    lengths: tuple[int, ...] = LATENCY_LENGTHS,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """ms per request and per target of a fresh `model_name` model at each of `lengths` on
    `device` (`cuda`: bf16 autocast)."""
    model = build_model(model_name, build).eval().to(device)
    dims = model.dims
    vocab = {"item": dims.item_rows, "category": dims.category_rows, "behavior": dims.behavior_rows}
    per_request, per_target = {}, {}
    for length in lengths:
        warmup, repeats = (1, 1) if length >= LATENCY_LONG else (LATENCY_WARMUP, LATENCY_REPEATS)
        batch = latency_batch(vocab, length, seed=length).to(device)
        ms = 1000 * time_forward(model, batch, warmup, repeats)
        per_request[str(length)] = round(ms, 3)
        per_target[str(length)] = round(ms / LATENCY_TARGETS, 4)
    return {"latency_ms_per_request": per_request, "latency_ms_per_target": per_target}


# --- report ---------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def mean_sd(values: list[float | None]) -> dict[str, float] | None:
    """Mean and sample sd (0 for one value) of the values that are present, and their count."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    sd = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": statistics.fmean(present), "sd": sd, "n": len(present)}


def aggregate(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over a model's seeds (`runs`: seed → result) of every quality number."""
    ok = [r for r in runs.values() if "error" not in r]
    out: dict[str, Any] = {"seeds": len(ok), "errors": len(runs) - len(ok)}
    for key in ("auc", "gauc", "logloss", "far_auc", "train_samples_per_s", "fit_seconds",
                *COLD_KEYS):  # fmt: skip
        out[key] = mean_sd([r.get(key) for r in ok])
    buckets = {b for r in ok for b in r.get("auc_by_gap", {})}
    out["auc_by_gap"] = {
        b: mean_sd([r.get("auc_by_gap", {}).get(b) for r in ok]) for b in sorted(buckets)
    }
    return out


def _ms(entry: dict[str, float] | None, spec: str = ".4f") -> str:
    if entry is None:
        return "-"
    if entry["n"] == 1:
        return format(entry["mean"], spec)
    return f"{format(entry['mean'], spec)} ± {format(entry['sd'], spec)}"


def gap_closed(
    model_far: float | None, din_far: float | None, oracle_far: float | None
) -> float | None:
    """Share of the DIN-100 → oracle far-target AUC gap a model closes (None without both)."""
    if None in (model_far, din_far, oracle_far) or oracle_far <= din_far:
        return None
    return (model_far - din_far) / (oracle_far - din_far)


def summarize(payload: dict[str, Any]) -> dict[str, Any]:
    """Side-by-side numbers: AUC minus DIN-100's, the share of the far-target gap to the oracle
    each model closes, and full / TWIN latency at 10K."""
    models: dict[str, dict[str, Any]] = payload["models"]
    summary: dict[str, Any] = {}
    base = (models.get(BASELINE, {}).get("quality") or {}).get("auc")
    base_far = (models.get(BASELINE, {}).get("quality") or {}).get("far_auc")
    oracle_far = (payload.get("oracle") or {}).get("far_auc")
    for name, r in models.items():
        quality = r.get("quality") or {}
        if name != BASELINE and base and quality.get("auc"):
            summary[f"auc_minus_din_{name}"] = round(quality["auc"]["mean"] - base["mean"], 5)
        if base_far and quality.get("far_auc"):
            closed = gap_closed(quality["far_auc"]["mean"], base_far["mean"], oracle_far)
            if closed is not None:
                summary[f"far_gap_closed_{name}"] = round(closed, 3)
    oracle_auc = (payload.get("oracle") or {}).get("auc")
    trained = [(r.get("quality") or {}).get("auc") for r in models.values()]
    trained = [a["mean"] for a in trained if a]
    if oracle_auc is not None and trained:
        summary["oracle_minus_best_model_auc"] = round(oracle_auc - max(trained), 5)
    full = models.get("full", {}).get("latency_ms_per_target", {}).get("10000")
    twin = models.get("twin", {}).get("latency_ms_per_target", {}).get("10000")
    if full and twin:
        summary["full_over_twin_ms_per_target_10000"] = round(full / twin, 2)
    return summary


def markdown(payload: dict[str, Any]) -> str:
    """The results table (mean ± sd over seeds) plus dataset, oracle and delta lines."""
    models: dict[str, dict[str, Any]] = payload["models"]
    summary = payload.get("summary", {})
    lengths = [str(n) for n in LATENCY_LENGTHS]
    buckets = [name for _, _, name in ctr_eval.GAP_BUCKETS] + [ctr_eval.NO_SAME_CATEGORY]
    head = (
        "| model | test AUC | GAUC | logloss | "
        + " | ".join(f"AUC gap {ctr_eval.SHORT_NAMES[b]}" for b in buckets)
        + " | far AUC | far gap closed | train targets/s | "
        + " | ".join(f"ms/target @{int(n) // 1000}K" for n in lengths)
    )
    lines = [head + " |", "|---|" + "---:|" * (head.count("|") - 1)]
    oracle = payload.get("oracle")
    if oracle:
        cells = ["oracle", _fmt(oracle.get("auc"), ".4f"), _fmt(oracle.get("gauc"), ".4f"),
                 _fmt(oracle.get("logloss"), ".4f"),
                 *(_fmt(oracle["auc_by_gap"].get(b), ".4f") for b in buckets),
                 _fmt(oracle.get("far_auc"), ".4f"), "1", "-", *("-" for _ in lengths)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for name, r in models.items():
        q = r.get("quality") or {}
        latency = r.get("latency_ms_per_target", {})
        closed = summary.get(f"far_gap_closed_{name}")
        quality_cells = [
            _ms(q.get("auc")) if q.get("seeds") else ("error" if q.get("errors") else "-"),
            _ms(q.get("gauc")),
            _ms(q.get("logloss")),
            *(_ms((q.get("auc_by_gap") or {}).get(b)) for b in buckets),
            _ms(q.get("far_auc")),
            "0" if name == BASELINE and q.get("seeds") else _fmt(closed, ".2f"),
            _fmt((q.get("train_samples_per_s") or {}).get("mean"), ",.0f"),
        ]
        cells = [name, *quality_cells, *(_fmt(latency.get(n), ".3f") for n in lengths)]
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
    if oracle and oracle.get("monte_carlo_auc") is not None:
        lines.append(
            f"oracle AUC on the test targets {oracle['auc']:.4f}; on a Monte-Carlo replica "
            f"(fresh draws of the generator at the same request times) {oracle['monte_carlo_auc']:.4f}"
        )
    if "oracle_minus_best_model_auc" in summary:
        lines.append(
            f"oracle AUC minus the best model's: {summary['oracle_minus_best_model_auc']:+.4f}"
        )
    deltas = [f"{k.removeprefix('auc_minus_din_')} {v:+.4f}" for k, v in summary.items()
              if k.startswith("auc_minus_din_")]  # fmt: skip
    if deltas:
        lines.append("AUC - DIN-100 (means): " + ", ".join(deltas))
    for name, r in models.items():
        q = r.get("quality") or {}
        if (q.get("cold_targets") or {}).get("mean"):
            lines.append(
                f"{name}: {q['cold_targets']['mean']:.0f} test targets on untrained items, "
                f"positive rate {_ms(q.get('cold_positive_rate'))}, mean probability "
                f"{_ms(q.get('cold_mean_prob'))} (known items: {_ms(q.get('known_positive_rate'))}"
                f" / {_ms(q.get('known_mean_prob'))}), share of the top decile "
                f"{_ms(q.get('cold_share_of_top_decile'))}; AUC on known items {_ms(q.get('known_auc'))}"
            )
        if (q.get("new_targets") or {}).get("mean"):
            lines.append(
                f"{name}: {q['new_targets']['mean']:.0f} test targets on items first seen after "
                f"training's data, positive rate {_ms(q.get('new_positive_rate'))}, mean "
                f"probability {_ms(q.get('new_mean_prob'))}; untrained older items: "
                f"{_ms(q.get('old_cold_targets'))} targets, positive rate "
                f"{_ms(q.get('old_cold_positive_rate'))}, mean probability "
                f"{_ms(q.get('old_cold_mean_prob'))}"
            )
        if q.get("unknown_mean_prob"):
            lines.append(
                f"{name}: every candidate an unknown id: mean probability "
                f"{_ms(q.get('unknown_mean_prob'))}, share above the top-decile threshold "
                f"{_ms(q.get('unknown_share_of_top_decile'))}"
            )
    ratio = summary.get("full_over_twin_ms_per_target_10000")
    if ratio is not None:
        lines.append(f"full / twin latency per target @10K: {ratio:.2f}x")
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: Path) -> Path:
    """AUC per gap bucket per model (mean over seeds, sd as error bars), the oracle as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [name for _, _, name in ctr_eval.GAP_BUCKETS] + [ctr_eval.NO_SAME_CATEGORY]
    models = {
        n: r["quality"]
        for n, r in payload["models"].items()
        if (r.get("quality") or {}).get("seeds")
    }
    fig, ax = plt.subplots(figsize=(12, 4.8))
    x = np.arange(len(buckets))
    width = 0.8 / max(len(models), 1)
    colors = plt.get_cmap("tab20")(np.arange(len(models)) % 20)
    for i, (name, q) in enumerate(models.items()):
        stats = [q["auc_by_gap"].get(b) or {"mean": np.nan, "sd": 0.0} for b in buckets]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, [s["mean"] for s in stats], width,
               yerr=[s["sd"] for s in stats], label=name, capsize=2, color=colors[i])  # fmt: skip
    oracle = payload.get("oracle")
    if oracle:
        values = [oracle["auc_by_gap"].get(b) for b in buckets]
        ax.plot(x, [np.nan if v is None else v for v in values], "k-o", lw=2, label="oracle")
    counts = payload.get("gap_targets", {})
    ax.set_xticks(x, [f"{b}\n{counts.get(b, 0):,} targets" for b in buckets])
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("test AUC")
    ax.set_xlabel("events since the target's category last occurred in its window")
    ax.set_title("Lifelong CTR models by gap, against the generator's oracle")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _model_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(MODELS)}, got {text!r}"
        )
    return names


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds >= 0, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m lifeseq.jobs.bench_ctr`)."""
    parser = argparse.ArgumentParser(prog="lifeseq bench ctr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 users instead of 1,000")
    parser.add_argument("--out", default=None, help="write JSON results here")
    parser.add_argument("--png", default=None, help="write the AUC-by-gap plot here")
    parser.add_argument("--workdir", default="bench_out/ctr", help="dataset, runs and logs")
    parser.add_argument("--models", type=_model_list, default=list(MODELS), help="e.g. din,twin")
    parser.add_argument("--seeds", type=_seed_list, default=[0], help="e.g. 0,1,2")
    parser.add_argument(
        "--steps", type=int, default=None, help="train this many steps instead of one epoch"
    )
    parser.add_argument("--skip-latency", action="store_true", help="no latency measurement")
    parser.add_argument("--skip-train", action="store_true", help="no training / test")
    parser.add_argument("--skip-oracle", action="store_true", help="no oracle")
    parser.add_argument(
        "--device", default="cpu", help="latency on this device (cuda: bf16 autocast)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="retrain runs whose results are stored in WORKDIR"
    )
    parser.add_argument(
        "--no-cold-items", action="store_true",
        help="train as before trainers.cold_items: no held-out OOV targets, untrained ids kept",
    )  # fmt: skip
    args = parser.parse_args(argv)
    steps = args.steps
    broken = configs_error(
        [PIPELINE_CONFIG, BASE_CONFIG, *(MODEL_CONFIGS / f"{m}.yaml" for m in args.models)]
    )
    if broken:
        print(broken, file=sys.stderr)
        return 2
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
    targets, gap_targets, oracle = None, {}, None
    if not (args.skip_train and args.skip_oracle):  # a latency-only run reads the manifest only
        dataset["signal"] = signal_analysis(build)
        targets = ctr_eval.collect_targets(build, "test")
        gap_targets = {n: int(m.sum()) for n, m in ctr_eval.bucket_masks(targets.gap).items()}
    if not args.skip_oracle:
        print("oracle ...", flush=True)
        oracle = oracle_metrics(build, workdir / "events", targets)
        print(f"  oracle: {json.dumps(oracle)}", flush=True)

    models: dict[str, dict[str, Any]] = {name: {"runs": {}} for name in args.models}
    new_items_flags = new_item_flags(json.loads((build / "manifest.json").read_text()), targets)
    new_mask = new_items(build, targets) if targets is not None else None
    if not args.skip_train:
        for name in args.models:
            for seed in args.seeds:
                overrides = NO_COLD_ITEMS if args.no_cold_items else new_items_flags
                spec = run_spec(name, params, steps, seed, overrides)
                result = None if args.fresh else stored_result(workdir, spec)
                if result is None:
                    print(f"training {name} seed {seed}: {steps or 'one epoch of'} steps ...",
                          flush=True)  # fmt: skip
                    result = train_model(
                        name, build, workdir, steps, seed, targets, overrides, new_mask
                    )
                    store_result(workdir, spec, result)
                else:
                    print(f"reusing the stored run of {name} seed {seed}", flush=True)
                models[name]["runs"][str(seed)] = result
                print(f"  {name} seed {seed}: {json.dumps(result)}", flush=True)
            models[name]["quality"] = aggregate(models[name]["runs"])
    load_before_latency = None
    if not args.skip_latency:
        torch.set_num_threads(LATENCY_THREADS)
        load_before_latency = round(os.getloadavg()[0], 2)  # other jobs inflate the latencies
        for name in args.models:
            print(f"latency {name} ...", flush=True)
            models[name].update(model_latency(name, build, device=args.device))

    payload = {
        "models": models,
        "oracle": oracle,
        "gap_targets": gap_targets,
        "dataset": dataset,
        "settings": {
            "quick": args.quick,
            "steps": steps if steps is not None else "one epoch",
            "seeds": args.seeds,
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
                "long_from": LATENCY_LONG,
                "threads": LATENCY_THREADS,
                "backend": "torch",
                "device": args.device,
            },
            "skip_train": args.skip_train,
            "cold_items": not args.no_cold_items,
            "skip_latency": args.skip_latency,
        },
        "commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_1m_before_latency": load_before_latency,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
    }
    payload["summary"] = summarize(payload)
    payload["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(payload))
    print(f"total {payload['seconds']:.0f} s")
    if args.out:
        write_json(args.out, payload)
    if args.png and not args.skip_train:
        print(f"wrote {plot(payload, Path(args.png))}")
    failed = [name for name, r in models.items() if (r.get("quality") or {}).get("errors")]
    if failed:
        print(f"error: failed models: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
