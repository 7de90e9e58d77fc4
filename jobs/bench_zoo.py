"""Sequence-model zoo benchmark: every sequential model × seeds × two ranking protocols, with
time to a reference quality, on MovieLens-100K (or ML-1M, or any RecBole `.inter` file).

    python -m lifeseq.jobs.bench_zoo [--out bench_out/zoo.json] [--png PATH] [--workdir bench_out/zoo]
        [--models sasrec,gru4rec,...] [--seeds 0,1,2] [--epochs N] [--max-len 50]
        [--val-every 1] [--patience N] [--reference-ndcg 0.0589]
        [--ml1m PATH/ratings.dat] [--inter PATH/NAME.inter] [--cache DIR]
        [--tag NAME --override KEY=VALUE ...] [--skip-speed] [--fresh] [--stored-only]

Data: MovieLens-100K out of the `recbole==1.2.1` wheel (`jobs.movielens_data`), unless
`--ml1m` or `--inter` name other data (each gets its own table); built once per workdir with
`lifeseq build` and `configs/pipeline/movielens.yaml` (leave-one-out, every event a positive;
an `.inter` file needs `user_id`, `item_id` and `timestamp` columns).

Protocol ("RecBole", the issue's reference): every model config `configs/sequential/NAME.yaml`
(on `base.yaml`; `--models` picks some) is trained by `jobs/train.py fit` in a subprocess with
`data.max_len` = `--max-len`, `eval.include_history: true`, validation every `--val-every`
epochs, the best `val/ndcg@10` checkpoint kept (and, with `--patience`, early stopping on it).
That one checkpoint is then tested twice: history included (RecBole's protocol) and history
excluded (the HSTU reference's). Test never selects anything.

Time to quality: `trainers.quality_clock.QualityClock` evaluates the test split (RecBole
protocol) at every validation point and records the fit's wall-clock seconds there, its own
evaluations left out; the time to quality of a run is that clock at the first point whose test
NDCG@10 reaches `--reference-ndcg` (null when none does). A measurement: the clock restores the
RNG states and selects nothing.

`--seed` values replace the configs' seeds (initialisation, data order, negatives); rows show
mean ± sd over seeds. `--override KEY=VALUE` (repeatable) passes `--KEY=VALUE` to every fit and
test of this invocation, which must be named by `--tag NAME` so the variant gets its own rows
(`MODEL+NAME`). Results are kept per run in `WORKDIR/DATASET/results/ROW-seedN.json`; a re-run
with the same workdir reuses those whose settings are the same (`--fresh` re-runs them;
`--stored-only` trains nothing and tabulates what is stored, leaving missing runs out), and
the table also shows stored variants (other tags) of the chosen models and seeds — so a long
table can be filled in pieces.

Prints Markdown tables (quality per dataset, training speed at L = 50/200/1000 from
`jobs.bench_generative` unless `--skip-speed`), writes JSON and one PNG (test NDCG@10 under the
RecBole protocol, mean ± sd, RecBole's reference numbers as lines). Exits 1 when a run failed
(the others still run) or on a bad flag.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifeseq.jobs import bench_generative
from lifeseq.jobs.bench_generative import (
    BASE_CONFIG,
    METRICS,
    MODEL_CONFIGS,
    MODELS,
    best_checkpoint,
    build_dataset,
    dataset_summary,
    read_test_metrics,
    train_commands,
)
from lifeseq.jobs.bench_report import (
    config_sha256,
    configs_error,
    git_commit,
    machine_info,
    newest_csv,
    read_metrics_csv,
    run_logged,
    tail,
    write_json,
)
from lifeseq.jobs.movielens_data import fetch_ml100k

#: Test NDCG@10 of RecBole's models on ML-100K (leave-one-out, full ranking, history
#: included, selected on validation NDCG@10): RecBole 1.2.1, ML-100K, measured by the issue's
#: author on a GPU. SASRec-N: maximum sequence length N.
RECBOLE_NDCG10 = {"SASRec-50": 0.0589, "SASRec-200": 0.0613, "GRU4Rec": 0.0557, "BERT4Rec": 0.0598}
#: The dataset the reference numbers are for.
REFERENCE_DATASET = "ml-100k"
#: Our model config → its RecBole counterpart (SASRec's reference also depends on max len).
COUNTERPARTS = {
    "sasrec": "SASRec",
    "gru4rec": "GRU4Rec",
    "bert4rec": "BERT4Rec",
    "cloze": "BERT4Rec",
}
#: Default reference of time to quality: RecBole's SASRec at max len 50.
DEFAULT_REFERENCE = RECBOLE_NDCG10["SASRec-50"]
#: Test protocols of the selected checkpoint: name → `eval.include_history`.
PROTOCOLS = {"recbole": True, "history_excluded": False}
#: Keys the benchmark sets itself, and the flag that sets each (refused in `--override`).
OWN_KEYS = {
    "data.max_len": "--max-len",
    "model.init_args.eval.include_history": "the benchmark (both protocols are tested)",
    "trainer.max_epochs": "--epochs",
    "trainer.check_val_every_n_epoch": "--val-every",
    "seed_everything": "--seeds",
    "model.init_args.seed": "--seeds",
    "data.seed": "--seeds",
    "data.root": "--ml1m / --inter",
    "trainer.default_root_dir": "--workdir",
    "trainer.callbacks": "the benchmark (--patience adds early stopping)",
}
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --- arguments --------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` → [0, 1, 2].

    Raises:
        ValueError: not a comma-separated list of distinct non-negative integers.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(map(int, parts))) != len(parts):
        raise ValueError(
            f"--seeds: expected distinct non-negative integers like 0,1,2, got {text!r}"
        )
    return [int(p) for p in parts]


def parse_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
    """`KEY=VALUE` strings → (key, value) pairs.

    Raises:
        ValueError: an item without `=` or with an empty key, or a key the benchmark sets
            itself (naming the flag that does).
    """
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise ValueError(
                f"--override: expected KEY=VALUE (e.g. model.init_args.loss.full_softmax=true), "
                f"got {item!r}"
            )
        owner = next((f for k, f in OWN_KEYS.items() if key == k or key.startswith(k + ".")), None)
        if owner:
            raise ValueError(f"--override {item}: {key} is set by {owner}, not by --override")
        pairs.append((key, value))
    return pairs


def check_args(args: argparse.Namespace) -> None:
    """Check the flags' values beyond their types.

    Raises:
        ValueError: naming the flag, the value seen and what was expected.
    """
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise ValueError(
            f"--models: expected names from {list(MODELS)} (configs/sequential/*.yaml), got "
            f"{args.models!r}"
        )
    broken = configs_error(
        [
            bench_generative.PIPELINE_CONFIG,
            BASE_CONFIG,
            *(MODEL_CONFIGS / f"{m}.yaml" for m in models),
        ]
    )
    if broken:
        raise ValueError(broken.removeprefix("error: "))
    parse_seeds(args.seeds)
    for flag, value in (("--epochs", args.epochs), ("--patience", args.patience)):
        if value is not None and value < 1:
            raise ValueError(f"{flag}: expected >= 1, got {value}")
    for flag, value in (("--max-len", args.max_len), ("--val-every", args.val_every)):
        if value < 1:
            raise ValueError(f"{flag}: expected >= 1, got {value}")
    if not 0 < args.reference_ndcg <= 1:
        raise ValueError(f"--reference-ndcg: expected a value in (0, 1], got {args.reference_ndcg}")
    parse_overrides(args.override)
    if args.override and not args.tag:
        raise ValueError(
            "--override needs --tag NAME, so the variant gets its own rows instead of replacing "
            "the untagged runs"
        )
    if args.tag is not None and not TAG_PATTERN.fullmatch(args.tag):
        raise ValueError(
            f"--tag: expected letters, digits, '_', '.', '-' (starting with a letter or digit), "
            f"got {args.tag!r}"
        )
    if args.ml1m and not Path(args.ml1m).is_file():
        raise ValueError(f"--ml1m: {args.ml1m} is not a file (expected ml-1m/ratings.dat)")
    if args.inter:
        path = Path(args.inter)
        if path.suffix != ".inter" or not path.is_file():
            raise ValueError(f"--inter: {args.inter} is not a RecBole .inter file")
        if args.ml1m and path.stem == "ml-1m":
            raise ValueError("--inter: a file named ml-1m.inter clashes with --ml1m's dataset")


def row_name(model: str, tag: str | None) -> str:
    """The table row of a model's runs: `model`, or `model+tag` for a variant."""
    return f"{model}+{tag}" if tag else model


def reference_for(model: str, max_len: int) -> tuple[str, float] | None:
    """RecBole's counterpart of `model` and its NDCG@10 (SASRec's at this max len), if any."""
    name = COUNTERPARTS.get(model)
    if name == "SASRec":
        name = f"SASRec-{max_len}"
    return (name, RECBOLE_NDCG10[name]) if name in RECBOLE_NDCG10 else None


# --- one run ----------------------------------------------------------------------------------


def run_spec(
    dataset: dict[str, str], model: str, seed: int, settings: dict[str, Any]
) -> dict[str, Any]:
    """What identifies a run: the data, the model's configs (hashed), the seed and the
    benchmark settings (`tag`, `overrides`, `max_len`, `epochs`, `val_every`, `patience`). A
    stored result is reused only for the same spec."""
    configs = (BASE_CONFIG, MODEL_CONFIGS / f"{model}.yaml")
    return {**dataset, "model": model, "config_sha256": config_sha256(*configs), "seed": seed,
            **settings}  # fmt: skip


def run_commands(spec: dict[str, Any], build: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    """`fit` command of a run (RecBole protocol, `QualityClock`, early stopping with
    `patience`), and the flags of its `test` up to the protocol and checkpoint, which
    `protocol_flags` completes."""
    fit, test = train_commands(spec["model"], build, run_dir, spec["epochs"], spec["seed"])
    overrides = [f"--{key}={value}" for key, value in spec["overrides"]]
    length = ["--data.max_len", str(spec["max_len"])]
    fit += [*overrides, *length, "--model.init_args.eval.include_history", "true",
            "--trainer.check_val_every_n_epoch", str(spec["val_every"]),
            "--trainer.callbacks+=trainers.quality_clock.QualityClock",
            f"--trainer.callbacks.path={run_dir / 'quality_clock.json'}"]  # fmt: skip
    if spec["patience"]:
        fit += ["--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
                "--trainer.callbacks.monitor=val/ndcg@10", "--trainer.callbacks.mode=max",
                f"--trainer.callbacks.patience={spec['patience']}"]  # fmt: skip
    return fit, [*test[:-1], *overrides, *length]


def protocol_flags(protocol: str, checkpoint: Path) -> list[str]:
    """The end of a `test` command: `protocol`'s history setting and the checkpoint."""
    include = "true" if PROTOCOLS[protocol] else "false"
    return ["--model.init_args.eval.include_history", include, "--ckpt_path", str(checkpoint)]


def time_to_quality(points: Sequence[dict[str, Any]], reference: float) -> float | None:
    """Fit seconds at the first validation point whose test NDCG@10 reaches `reference`
    (`QualityClock` points, in order); None when none does."""
    for point in points:
        value = point.get("test", {}).get("ndcg@10")
        if value is not None and value >= reference:
            return float(point["fit_seconds"])
    return None


def train_and_test(spec: dict[str, Any], build: Path, root: Path) -> dict[str, Any]:
    """Fit one run, then test its best-validation checkpoint under both protocols. The result
    (`spec`, fit seconds — the fit subprocess's wall clock less the clock's test evaluations —,
    validation curve, best step, `clock`, metrics per protocol) or, on a failure, the same
    with `error`."""
    name = f"{row_name(spec['model'], spec['tag'])}-seed{spec['seed']}"
    run_dir, logs = root / "runs" / name, root / "logs"
    shutil.rmtree(run_dir, ignore_errors=True)
    fit, test = run_commands(spec, build, run_dir)
    result: dict[str, Any] = {"spec": spec, "commands": {"fit": fit, "test": test}}
    seconds, rc = run_logged(fit, logs / f"{name}-fit")
    result["fit_wall_seconds"] = round(seconds, 1)
    if rc != 0:
        print(tail(logs / f"{name}-fit.err"), file=sys.stderr)
        return {**result, "error": f"fit exited {rc}; see {logs / name}-fit.err"}
    validation = read_metrics_csv(newest_csv(run_dir)).get("val/ndcg@10", [])
    clock_path = run_dir / "quality_clock.json"
    result["clock"] = json.loads(clock_path.read_text()) if clock_path.is_file() else []
    clock_seconds = sum(point["test_seconds"] for point in result["clock"])
    result["fit_seconds"] = round(seconds - clock_seconds, 1)
    result["val_curve"] = validation
    if validation:
        result["best_val_step"], result["val_ndcg@10"] = max(validation, key=lambda sv: sv[1])
    try:
        checkpoint = best_checkpoint(run_dir)
    except FileNotFoundError as err:
        return {**result, "error": f"{err} (no validation point? --epochs below --val-every)"}
    for protocol in PROTOCOLS:
        log = logs / f"{name}-test-{protocol}"
        _, rc = run_logged([*test, *protocol_flags(protocol, checkpoint)], log)
        if rc != 0:
            print(tail(Path(f"{log}.err")), file=sys.stderr)
            return {**result, "error": f"test ({protocol}) exited {rc}; see {log}.err"}
        result[protocol] = read_test_metrics(run_dir)
        if "ndcg@10" not in result[protocol]:
            return {**result, "error": f"test ({protocol}): no test/ndcg@10 in the CSV log"}
    return result


# --- aggregation and report -------------------------------------------------------------------


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation of the values that are not None (`sd` None below
    two values, both None for none), the values and their count."""
    present = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "sd": statistics.stdev(present) if len(present) > 1 else None,
        "n": len(present),
        "values": list(values),
    }


def aggregate(
    runs: Sequence[dict[str, Any]], reference: float, max_len: int, dataset: str
) -> dict[str, Any]:
    """One row of a model (+ tag): mean ± sd over its runs (successful ones) of every metric
    under both protocols, fit seconds, best validation step and time to `reference`; its RecBole
    reference on `REFERENCE_DATASET`."""
    spec = runs[0]["spec"]
    good = [r for r in runs if "error" not in r]
    row: dict[str, Any] = {
        "model": spec["model"],
        "tag": spec["tag"],
        "overrides": [f"{k}={v}" for k, v in spec["overrides"]],
        "seeds": [r["spec"]["seed"] for r in good],
        "failed_seeds": [r["spec"]["seed"] for r in runs if "error" in r],
    }
    for protocol in PROTOCOLS:
        row[protocol] = {m: mean_sd([r[protocol].get(m) for r in good]) for m in METRICS}
    row["fit_seconds"] = mean_sd([r.get("fit_seconds") for r in good])
    row["best_val_step"] = mean_sd([r.get("best_val_step") for r in good])
    row["time_to_quality_s"] = mean_sd([time_to_quality(r["clock"], reference) for r in good])
    found = reference_for(spec["model"], max_len) if dataset == REFERENCE_DATASET else None
    row["reference"] = {"name": found[0], "ndcg@10": found[1]} if found else None
    return row


def _pm(stats: dict[str, Any], spec: str) -> str:
    """`mean ± sd` (or the mean alone, or – when there is none)."""
    if stats["mean"] is None:
        return "–"
    text = format(stats["mean"], spec)
    return text if stats["sd"] is None else f"{text} ± {format(stats['sd'], spec)}"


def markdown(payload: dict[str, Any]) -> str:
    """Per dataset: the quality table (both protocols, fit seconds, time to quality, RecBole's
    reference); then the speed table (`jobs.bench_generative.markdown`)."""
    settings = payload["settings"]
    lines: list[str] = []
    heads = ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "MRR")
    for dataset, block in payload["datasets"].items():
        lines += [
            f"**{dataset}** (test, full ranking; selected on validation NDCG@10 with history "
            f"included, max len {settings['max_len']}; R = RecBole protocol, history included; "
            "X = the same checkpoint, history excluded; mean ± sd over seeds)",
            "",
            "| model | seeds | " + " | ".join(f"{h} R" for h in heads) + " | "
            + " | ".join(f"{h} X" for h in heads)
            + f" | fit s | s to NDCG@10 {settings['reference_ndcg']} R (runs) | RecBole NDCG@10 |",
            "|---|---:|" + "---:|" * (2 * len(heads) + 3),
        ]  # fmt: skip
        for name, row in block["rows"].items():
            seeds = str(len(row["seeds"]))
            if row["failed_seeds"]:
                seeds += f" ({len(row['failed_seeds'])} failed)"
            ttq = row["time_to_quality_s"]
            ref = row["reference"]
            cells = [
                name,
                seeds,
                *(_pm(row[p][m], ".4f") for p in PROTOCOLS for m in METRICS),
                _pm(row["fit_seconds"], ".0f"),
                f"{_pm(ttq, '.0f')} ({ttq['n']}/{len(row['seeds'])})",
                f"{ref['ndcg@10']:.4f} ({ref['name']})" if ref else "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if payload.get("speed"):
        lines.append(bench_generative.markdown({k: payload[k] for k in ("speed", "machine")}))
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: Path) -> Path:
    """PNG: test NDCG@10 (RecBole protocol) per row, mean ± sd over seeds, one panel per
    dataset; RecBole's reference numbers as dashed lines (and a cross above the model with a
    counterpart) on `REFERENCE_DATASET`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = payload["datasets"]
    most_rows = max(len(block["rows"]) for block in datasets.values())
    width = (4.0 + 0.8 * most_rows) * len(datasets) + 2.5  # + the legend
    fig, axes = plt.subplots(1, len(datasets), figsize=(width, 4.5), squeeze=False)
    for axis, (dataset, block) in zip(axes[0], datasets.items(), strict=True):
        names = list(block["rows"])
        stats = [block["rows"][n]["recbole"]["ndcg@10"] for n in names]
        means = [s["mean"] if s["mean"] is not None else float("nan") for s in stats]
        errors = [s["sd"] or 0.0 for s in stats]
        axis.bar(range(len(names)), means, 0.6, yerr=errors, capsize=4, color="#4c72b0", alpha=0.8)
        if dataset == REFERENCE_DATASET:
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            for i, (ref, value) in enumerate(RECBOLE_NDCG10.items()):
                axis.axhline(value, ls="--", lw=1, color=colors[(i + 1) % len(colors)],
                             label=f"RecBole {ref} {value:.4f}")  # fmt: skip
            for x, name in enumerate(names):
                ref = block["rows"][name]["reference"]
                if ref:
                    axis.plot(x, ref["ndcg@10"], "x", color="black", ms=9)
            axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_ylabel("test NDCG@10, RecBole protocol (history included)")
        axis.set_title(f"{dataset}: mean ± sd over seeds (x: RecBole's counterpart)", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


# --- main -------------------------------------------------------------------------------------


def _stored(path: Path) -> dict[str, Any] | None:
    """A stored result, or None when missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stored_variants(
    results: Path, models: Sequence[str], seeds: Sequence[int], like: dict[str, Any],
    skip: set[str],
) -> list[dict[str, Any]]:  # fmt: skip
    """Stored results under `results` of other tags than this invocation's (file names not in
    `skip`), for `models` and `seeds`, whose spec equals `like`'s but for tag and overrides
    (same data, settings and model configs)."""
    shared = {k: v for k, v in like.items() if k not in ("tag", "overrides", "model", "seed",
                                                         "config_sha256")}  # fmt: skip
    found = []
    for path in sorted(results.glob("*.json")) if results.is_dir() else []:
        stored = _stored(path)
        spec = (stored or {}).get("spec") or {}
        if path.name in skip or spec.get("model") not in models or spec.get("seed") not in seeds:
            continue
        configs = (BASE_CONFIG, MODEL_CONFIGS / f"{spec['model']}.yaml")
        same = all(spec.get(k) == v for k, v in shared.items())
        if same and spec.get("config_sha256") == config_sha256(*configs):
            found.append(stored)
    return found


def run_dataset(
    dataset: str, source: Path, input_format: str, args: argparse.Namespace,
    settings: dict[str, Any], models: list[str], seeds: list[int],
) -> dict[str, Any]:  # fmt: skip
    """Build `dataset`, run (or reuse) every model × seed, and aggregate rows (this
    invocation's, then stored variants of other tags)."""
    workdir = Path(args.workdir).resolve()
    build = build_dataset(dataset, source, workdir, input_format)
    record = json.loads((workdir / dataset / "dataset.json").read_text())
    data = {"dataset": dataset, "input_sha256": record["input_sha256"],
            "pipeline_sha256": record["config_sha256"]}  # fmt: skip
    root = workdir / dataset
    results = root / "results"
    runs: dict[str, list[dict[str, Any]]] = {}
    names: set[str] = set()
    for model in models:
        row = row_name(model, settings["tag"])
        for seed in seeds:
            spec = run_spec(data, model, seed, settings)
            path = results / f"{row}-seed{seed}.json"
            names.add(path.name)
            stored = None if args.fresh else _stored(path)
            if stored and stored.get("spec") == json.loads(json.dumps(spec)):
                print(f"{dataset}: reusing {path}", flush=True)
                result = stored
            elif args.stored_only:
                print(f"{dataset}: no stored {row} seed {seed} with these settings; left out")
                continue
            else:
                if stored:
                    print(f"{dataset}: {path} has other settings; re-running", flush=True)
                print(f"{dataset}: training {row} seed {seed} ...", flush=True)
                result = train_and_test(spec, build, root)
                if "error" not in result:
                    write_json(path, result)
            summary = {p: result.get(p, {}).get("ndcg@10") for p in PROTOCOLS}
            print(f"  {row} seed {seed}: NDCG@10 {summary} {result.get('error', '')}", flush=True)
            runs.setdefault(row, []).append(result)
    like = run_spec(data, models[0], seeds[0], settings)
    for stored in stored_variants(results, models, seeds, like, names):
        spec = stored["spec"]
        runs.setdefault(row_name(spec["model"], spec["tag"]), []).append(stored)
    reference = args.reference_ndcg
    return {
        "data": dataset_summary(build),
        "rows": {n: aggregate(r, reference, args.max_len, dataset) for n, r in runs.items()},
        "runs": {f"{n}-seed{r['spec']['seed']}": r for n, rs in runs.items() for r in rs},
    }


def parser() -> argparse.ArgumentParser:
    """The command-line flags (module docstring)."""
    p = argparse.ArgumentParser(prog="lifeseq bench zoo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out/zoo.json", help="JSON results")
    p.add_argument("--png", default=None, help="plot (default: --out with .png)")
    p.add_argument("--workdir", default="bench_out/zoo", help="builds, runs, logs, results")
    p.add_argument("--models", default=",".join(MODELS), help="e.g. sasrec,gru4rec")
    p.add_argument("--seeds", default="0,1,2", help="seeds, replacing the configs' (e.g. 0,1,2)")
    p.add_argument(
        "--epochs", type=int, default=None, help="trainer.max_epochs (default: configs')"
    )
    p.add_argument("--max-len", type=int, default=50, help="data.max_len (RecBole's 50)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument(
        "--patience", type=int, default=None, help="early stop after N worse validations"
    )
    p.add_argument("--reference-ndcg", type=float, default=DEFAULT_REFERENCE,
                   help="test NDCG@10 of time to quality (RecBole protocol)")  # fmt: skip
    p.add_argument("--ml1m", default=None, help="MovieLens-1M ratings.dat instead of ML-100K")
    p.add_argument("--inter", default=None, help="a RecBole .inter file instead of ML-100K")
    p.add_argument("--cache", default=None, help="download cache (default ~/.cache/lifeseq)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="passed as --KEY=VALUE to every fit and test (needs --tag)")  # fmt: skip
    p.add_argument("--tag", default=None, help="variant name: rows MODEL+TAG")
    p.add_argument("--skip-speed", action="store_true", help="no training-speed table")
    p.add_argument("--fresh", action="store_true", help="re-run stored runs")
    p.add_argument("--stored-only", action="store_true",
                   help="train nothing: the table of the stored runs (missing ones left out)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m lifeseq.jobs.bench_zoo`, `lifeseq bench zoo`)."""
    args = parser().parse_args(argv)
    try:
        check_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = parse_seeds(args.seeds)
    overrides = parse_overrides(args.override)
    settings = {"tag": args.tag, "overrides": overrides, "max_len": args.max_len,
                "epochs": args.epochs, "val_every": args.val_every, "patience": args.patience}  # fmt: skip
    started = time.perf_counter()
    commit = git_commit()  # at the start: the code that ran, even if HEAD moves meanwhile
    sources: dict[str, tuple[Path, str]] = {}
    if args.ml1m:
        sources["ml-1m"] = (Path(args.ml1m).resolve(), "movielens_dat")
    if args.inter:
        sources[Path(args.inter).stem] = (Path(args.inter).resolve(), "recbole_inter")
    if not sources:
        try:
            sources["ml-100k"] = (fetch_ml100k(Path(args.cache) if args.cache else None),
                                  "recbole_inter")  # fmt: skip
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    payload: dict[str, Any] = {"datasets": {}}
    for dataset, (source, input_format) in sources.items():
        try:
            payload["datasets"][dataset] = run_dataset(
                dataset, source, input_format, args, settings, models, seeds
            )
        except RuntimeError as err:  # the build failed (its log's tail is printed)
            print(f"error: {err}", file=sys.stderr)
            return 1
    payload["machine"] = machine_info()
    if not args.skip_speed:
        flags = [f"--{k}={v}" for k, v in overrides]
        payload["speed"] = bench_generative.speed(models, flags, row_name("{model}", args.tag))
    payload["reference"] = {
        "recbole_ndcg@10": RECBOLE_NDCG10,
        "source": "RecBole 1.2.1, ML-100K, measured by the issue's author on a GPU",
        "time_to_quality_ndcg@10": args.reference_ndcg,
    }
    payload["settings"] = {
        **settings, "overrides": [f"{k}={v}" for k, v in overrides], "seeds": seeds,
        "models": models, "reference_ndcg": args.reference_ndcg,
        "model_configs": {m: ["configs/sequential/base.yaml", f"configs/sequential/{m}.yaml"]
                          for m in models},
        "pipeline_config": "configs/pipeline/movielens.yaml",
        "protocols": {p: {"eval.include_history": v} for p, v in PROTOCOLS.items()},
        "selection": "best validation NDCG@10 under the recbole protocol",
    }  # fmt: skip
    payload["commit"] = commit
    payload["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(payload))
    write_json(args.out, payload)
    plot(payload, Path(args.png) if args.png else Path(args.out).with_suffix(".png"))
    failed = [n for b in payload["datasets"].values() for n, r in b["runs"].items() if "error" in r]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
