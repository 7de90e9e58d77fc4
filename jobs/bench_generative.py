"""Sequential recommendation benchmark: quality of every sequential model on MovieLens and
training speed.

Quality, per dataset (MovieLens-100K always, read out of the `recbole==1.2.1` wheel fetched
with `pip download --no-deps` into the cache, see `jobs.movielens_data`; MovieLens-1M with
`--ml1m PATH/ratings.dat`):

* `lifeseq build` with `configs/pipeline/movielens.yaml` (leave-one-out: last item = test,
  second-to-last = valid; every rating is a positive), built once and reused;
* for each model config `configs/sequential/NAME.yaml` (every file there but `base.yaml`, which
  each is merged onto; `--models` picks some), `jobs/train.py fit` (subprocesses, one after the
  other), validating every `check_val_every_n_epoch` epochs and keeping the best
  `val/ndcg@10` checkpoint, then `jobs/train.py test` on that checkpoint: HR@10/50, NDCG@10/50
  and MRR of full ranking with history items excluded, from the CSV logger.

Speed (`--skip-speed` to leave out): training steps in this process on synthetic jagged batches
(every row exactly L events, about `SPEED_TOKENS` events per batch) at L = 50, 200, 1000: the
configs' models (torch embedding backend, AdamW), median step time (forward, loss, backward,
optimizer) of `SPEED_REPEATS` steps after `SPEED_WARMUP`, and training tokens/s. Where CUDA is
present, on the GPU under bf16 autocast, also at L = 2,048 / 4,096 / 8,192, with peak memory.

Prints Markdown tables and, with `--out FILE.json`, writes
`{"ml-100k": {"sasrec": {"hr@10": .., "ndcg@10": .., "mrr": ..}, "hstu": {...}, ...}, ...}` plus
speed, settings, commit and machine. Exits nonzero when a model failed (the others still run).

    python -m lifeseq.jobs.bench_generative [--out bench_out/generative.json] [--ml1m PATH/ratings.dat]
        [--workdir bench_out/generative] [--epochs N] [--models sasrec,hstu,...] [--skip-speed]
        [--skip-quality] [--cache DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifeseq.features.batch import GenerativeBatch, collate_generative
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.jobs.bench_report import (
    configs_error,
    git_commit,
    machine_info,
    newest_csv,
    read_metrics_csv,
    run_logged,
    run_or_raise,
    tail,
    write_json,
)
from lifeseq.jobs.movielens_data import fetch_ml100k
from lifeseq.jobs.run_config import load_run_config
from lifeseq.pipeline.sample_codec import UserSample

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_CONFIG = REPO_ROOT / "configs" / "pipeline" / "movielens.yaml"
MODEL_CONFIGS = REPO_ROOT / "configs" / "sequential"
BASE_CONFIG = MODEL_CONFIGS / "base.yaml"
#: Every model config of the family (`configs/sequential/*.yaml` but the base).
MODELS = tuple(sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml") if p != BASE_CONFIG))
METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr")
#: Input formats of `configs/pipeline/movielens.yaml` per dataset.
FORMATS = {"ml-100k": "recbole_inter", "ml-1m": "movielens_dat"}

SPEED_LENGTHS = (50, 200, 1000)
#: Added on CUDA, where steps run under bf16 autocast.
GPU_SPEED_LENGTHS = (2048, 4096, 8192)
SPEED_TOKENS = 8192
SPEED_WARMUP = 2
SPEED_REPEATS = 5
SPEED_ITEMS = 3708


# --- datasets -------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_dataset(name: str, source: Path, workdir: Path, input_format: str | None = None) -> Path:
    """`lifeseq build` of `source` into `workdir/name/build` (reused when its record matches),
    read as `input_format` (default `FORMATS[name]`).

    Raises:
        RuntimeError: the build failed (stderr tail printed).
    """
    root = workdir / name
    build = root / "build"
    config_text = PIPELINE_CONFIG.read_text().replace(
        "format: recbole_inter", f"format: {input_format or FORMATS[name]}"
    )
    params = {"input_sha256": _sha256(source), "config_sha256": hashlib.sha256(
        config_text.encode()).hexdigest()}  # fmt: skip
    record = root / "dataset.json"
    if record.is_file() and json.loads(record.read_text()) == params:
        if (build / "manifest.json").is_file():
            print(f"reusing {build}", flush=True)
            return build
    root.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    config = root / "pipeline.yaml"
    config.write_text(config_text)
    print(f"building {name} from {source} into {build} ...", flush=True)
    run_or_raise(
        [sys.executable, "-m", "lifeseq.jobs.cli", "build", "--config", str(config),
         "--input", str(source), "--output", str(build), "--overwrite"],
        root / "logs" / "build",
    )  # fmt: skip
    record.write_text(json.dumps(params))
    return build


def dataset_summary(build: Path) -> dict[str, Any]:
    """Users, items, events and split sizes of a build's manifest."""
    manifest = json.loads((build / "manifest.json").read_text())
    counts = manifest.get("counts", {})
    return {
        "users": manifest.get("users"),
        "events": counts.get("events_valid"),
        "items": manifest["vocab"]["item"] - 2,
        "targets": {s: manifest["splits"][s].get("targets") for s in ("train", "valid", "test")},
    }


# --- training --------------------------------------------------------------------------------


def train_commands(
    model: str, build: Path, run_dir: Path, epochs: int | None, seed: int | None = None
) -> tuple[list[str], list[str]]:
    """`fit` command of one model; the `test` command is completed once the best checkpoint is
    known (its `--ckpt_path` is the last element). `seed` replaces the configs' seeds (global,
    model initialisation, data order)."""
    config = str(MODEL_CONFIGS / f"{model}.yaml")
    common = ["--config", str(BASE_CONFIG), "--config", config, "--data.root", str(build),
              "--trainer.default_root_dir", str(run_dir),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    fit = [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), "fit", *common]
    if epochs is not None:
        fit += ["--trainer.max_epochs", str(epochs)]
    if seed is not None:
        fit += ["--seed_everything", str(seed), "--model.init_args.seed", str(seed),
                "--data.seed", str(seed)]  # fmt: skip
    test = [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), "test", *common, "--ckpt_path"]
    return fit, test


def best_checkpoint(run_dir: Path) -> Path:
    """The `best*.ckpt` checkpoint of a run (the most recently written one).

    Raises:
        FileNotFoundError: the run wrote none.
    """
    found = sorted((run_dir / "checkpoints").glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no best*.ckpt under {run_dir / 'checkpoints'}")
    return found[-1]


def train_model(
    model: str, build: Path, workdir: Path, epochs: int | None, seed: int | None = None
) -> dict[str, Any]:
    """Fit, then test the best-validation checkpoint; metrics or {"error": ...}."""
    name = model if seed is None else f"{model}-seed{seed}"
    run_dir = workdir / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    fit, test = train_commands(model, build, run_dir, epochs, seed)
    logs = workdir / "logs"
    seconds, rc = run_logged(fit, logs / f"{name}-fit")
    if rc != 0:
        print(tail(logs / f"{name}-fit.err"), file=sys.stderr)
        return {"error": f"fit exited {rc}; see {logs / name}-fit.err"}
    series = read_metrics_csv(newest_csv(run_dir))
    validation = series.get("val/ndcg@10", [])
    best_step, best_ndcg = max(validation, key=lambda sv: sv[1]) if validation else (None, None)
    steps = [s for s, _ in series.get("train/loss", [])]
    result: dict[str, Any] = {
        "fit_seconds": round(seconds, 1),
        "steps": max(steps) + 1 if steps else None,
        "best_val_step": best_step,
        "val_ndcg@10": best_ndcg,
        "val_curve": validation,
    }
    try:
        checkpoint = best_checkpoint(run_dir)
    except FileNotFoundError as err:
        return {**result, "error": str(err)}
    seconds, rc = run_logged([*test, str(checkpoint)], logs / f"{name}-test")
    if rc != 0:
        print(tail(logs / f"{name}-test.err"), file=sys.stderr)
        return {**result, "error": f"test exited {rc}; see {logs / name}-test.err"}
    result.update(read_test_metrics(run_dir))
    if "ndcg@10" not in result:
        result["error"] = "test: no test/ndcg@10 in the CSV log"
    return result


def read_test_metrics(run_dir: Path) -> dict[str, float]:
    """`METRICS` and `targets` of the newest CSV log of `run_dir` (a `test` run's), those
    logged."""
    series = read_metrics_csv(newest_csv(run_dir))
    return {m: series[f"test/{m}"][-1][1] for m in (*METRICS, "targets") if f"test/{m}" in series}


# --- speed -----------------------------------------------------------------------------------


def speed_batch(length: int, rows: int, seed: int = 0) -> GenerativeBatch:
    """`rows` users of exactly `length` events (random items, increasing timestamps), each
    followed by one positive target: every position is labelled."""
    rng = np.random.default_rng(seed)
    samples = []
    for user in range(rows):
        items = rng.integers(2, SPEED_ITEMS, length + 1)
        ts = np.cumsum(rng.integers(1, 86_400, length + 1))
        ones = np.full(length, 2)
        history = {"item": items[:length], "category": ones, "behavior": ones, "ts": ts[:length]}
        targets = {
            "target_item": items[length:],
            "target_category": np.full(1, 2),
            "target_ts": ts[length:],
            "target_label": np.ones(1, dtype=np.float32),
            "target_hist_len": np.array([length]),
        }
        samples.append(UserSample(f"u{user}", "train", history, targets))
    return collate_generative(samples, max_len=length)


def speed_module(
    model_name: str, length: int, device: torch.device, overrides: Sequence[str] = ()
) -> Any:
    """The task module of `model_name`'s config (torch embedding backend; `overrides`: more
    command-line flags) with its model built for a catalog of `SPEED_ITEMS` items and rows of
    up to `length` events."""
    run = load_run_config(
        [BASE_CONFIG, MODEL_CONFIGS / f"{model_name}.yaml"],
        [*overrides, "--model.init_args.embedding.backend", "torch", "--data.root", "unused"],
    )
    vocab = {"item": SPEED_ITEMS, "category": 3, "behavior": 3}
    features = FeatureConfig(embedding_dim=run.data["embedding_dim"], max_len=length)
    run.module.setup_model(FeatureSchema.from_vocab(vocab, features))
    return run.module.to(device).train()


def time_training_steps(
    model_name: str, length: int, device: torch.device, overrides: Sequence[str] = ()
) -> dict[str, float]:
    """Median step seconds and tokens/s of `model_name` (with `overrides`, see `speed_module`)
    at rows of `length` events."""
    module = speed_module(model_name, length, device, overrides)
    model = module.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rows = max(1, SPEED_TOKENS // length)
    batch = speed_batch(length, rows).to(device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(SPEED_WARMUP + SPEED_REPEATS):
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = module.training_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= SPEED_WARMUP:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    result = {
        "rows": rows,
        "tokens": rows * length,
        "step_ms": round(1000 * seconds, 1),
        "tokens_per_s": round(rows * length / seconds, 1),
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def speed(
    models: list[str], overrides: Sequence[str] = (), label: str = "{model}"
) -> dict[str, dict[str, dict[str, float]]]:
    """{label: {length: timings}} at `SPEED_LENGTHS`, models side by side per length; every
    model with the command-line flags `overrides`, named by `label.format(model=...)`."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out: dict[str, dict[str, dict[str, float]]] = {label.format(model=m): {} for m in models}
    lengths = SPEED_LENGTHS + (GPU_SPEED_LENGTHS if device.type == "cuda" else ())
    for length in lengths:
        for model in models:
            name = label.format(model=model)
            print(f"speed {name} L={length} ...", flush=True)
            out[name][str(length)] = time_training_steps(model, length, device, overrides)
    return out


# --- report ----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(payload: dict[str, Any]) -> str:
    """Quality tables per dataset, the HSTU / SASRec ratio, and the speed table."""
    lines: list[str] = []
    for dataset in ("ml-100k", "ml-1m"):
        results = payload.get(dataset)
        if not results:
            continue
        lines += [f"**{dataset}** (test, full ranking, history excluded)", ""]
        lines += ["| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 | MRR | best val step | fit s |"]
        lines += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in results.items():
            if name.startswith("_"):
                continue
            cells = (
                [name]
                + ["error" if "error" in r else _fmt(r.get(m), ".4f") for m in METRICS]
                + [_fmt(r.get("best_val_step"), "d"), _fmt(r.get("fit_seconds"), ".0f")]
            )
            lines.append("| " + " | ".join(cells) + " |")
        ratios = {k[1:].split("_over_")[0]: v for k, v in results.items() if "_over_" in k}
        if ratios:
            lines += [
                "",
                "NDCG@10 / SASRec's: " + ", ".join(f"{m} {r:.3f}" for m, r in ratios.items()),
            ]
        lines.append("")
    timings = payload.get("speed")
    if timings:
        lines += ["**training speed** (" + payload["machine"]["device"] + ")", ""]
        lines += ["| L | model | rows | step ms | tokens/s |", "|---:|---|---:|---:|---:|"]
        for length in SPEED_LENGTHS:
            for model, by_length in timings.items():
                t = by_length.get(str(length))
                if t:
                    lines.append(
                        f"| {length} | {model} | {t['rows']} | {t['step_ms']:.1f} | "
                        f"{t['tokens_per_s']:,.0f} |"
                    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m lifeseq.jobs.bench_generative`)."""
    parser = argparse.ArgumentParser(
        prog="lifeseq bench generative", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default=None, help="write JSON results here")
    parser.add_argument("--workdir", default="bench_out/generative", help="builds, runs, logs")
    parser.add_argument("--ml1m", default=None, help="MovieLens-1M ratings.dat (optional)")
    parser.add_argument("--cache", default=None, help="download cache (default ~/.cache/lifeseq)")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    parser.add_argument("--seed", type=int, default=None, help="override the configs' seeds")
    parser.add_argument("--models", default=",".join(MODELS), help="e.g. sasrec,hstu")
    parser.add_argument("--skip-quality", action="store_true", help="no training runs")
    parser.add_argument("--skip-speed", action="store_true", help="no speed measurement")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: expected names from {list(MODELS)}, got {args.models!r}")
    broken = configs_error(
        [PIPELINE_CONFIG, BASE_CONFIG, *(MODEL_CONFIGS / f"{m}.yaml" for m in models)]
    )
    if broken:
        print(broken, file=sys.stderr)
        return 2
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs: expected >= 1, got {args.epochs}")
    if args.ml1m and not Path(args.ml1m).is_file():
        parser.error(f"--ml1m: {args.ml1m} is not a file (expected ml-1m/ratings.dat)")
    workdir = Path(args.workdir).resolve()
    started = time.perf_counter()
    commit = git_commit()  # at the start: the code that ran, even if HEAD moves meanwhile
    payload: dict[str, Any] = {}
    failed = False
    if not args.skip_quality:
        sources = {"ml-100k": fetch_ml100k(Path(args.cache) if args.cache else None)}
        if args.ml1m:
            sources["ml-1m"] = Path(args.ml1m).resolve()
        for dataset, source in sources.items():
            try:
                build = build_dataset(dataset, source, workdir)
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            results: dict[str, Any] = {"_data": dataset_summary(build)}
            for model in models:
                print(f"{dataset}: training {model} ...", flush=True)
                results[model] = train_model(
                    model, build, workdir / dataset, args.epochs, args.seed
                )
                failed |= "error" in results[model]
                print(f"  {model}: { {m: results[model].get(m) for m in METRICS} }", flush=True)
            baseline = results.get("sasrec", {}).get("ndcg@10")
            for model in models:
                value = results[model].get("ndcg@10")
                if model != "sasrec" and value and baseline:
                    results[f"_{model}_over_sasrec_ndcg@10"] = value / baseline
            payload[dataset] = results
    payload["machine"] = machine_info()
    if not args.skip_speed:
        payload["speed"] = speed(models)
    payload["settings"] = {
        "epochs": args.epochs or "from the configs",
        "seed": args.seed if args.seed is not None else "from the configs (0)",
        "model_configs": {
            m: ["configs/sequential/base.yaml", f"configs/sequential/{m}.yaml"] for m in models
        },
        "pipeline_config": "configs/pipeline/movielens.yaml",
        "speed": {"lengths": list(SPEED_LENGTHS), "tokens_per_batch": SPEED_TOKENS,
                  "warmup": SPEED_WARMUP, "repeats": SPEED_REPEATS, "items": SPEED_ITEMS},
    }  # fmt: skip
    payload["commit"] = commit
    payload["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(payload))
    if args.out:
        write_json(args.out, payload)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
