"""`lifeseq` console script: one entry point for every job (argparse subcommands).

Each subcommand's flags belong to its job module (`lifeseq build --help` prints them, with an
example); this module only picks the job, sets up the terminal (`jobs.terminal`) and hands the
rest of the command line over. Only the chosen job is imported, so `lifeseq --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

from lifeseq.jobs.terminal import configure_logging


@dataclass(frozen=True)
class Command:
    """One subcommand: its job module (with `main(argv) -> int`), a summary and an example."""

    name: str
    module: str
    summary: str
    example: str


COMMANDS = (
    Command("synth", "lifeseq.jobs.synth", "synthetic lifelong events (Parquet)",
            "lifeseq synth --out data/events --users 10000 --seed 7"),
    Command("build", "lifeseq.jobs.build_lifelong",
            "Spark build: quarantine, vocab, lifelong table, shards, report",
            "lifeseq build --config configs/pipeline/synthetic.yaml --input data/events "
            "--output out/build"),
    Command("train", "lifeseq.jobs.train", "LightningCLI training: fit, validate, test",
            "lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/twin.yaml "
            "--data.root out/build --trainer.default_root_dir runs/twin"),
    Command("export", "lifeseq.jobs.export", "checkpoint → embedding shards, .pt2, manifest",
            "lifeseq export --ckpt runs/twin/checkpoints/last.ckpt --out export/twin"),
    Command("migrate", "lifeseq.jobs.migrate", "a config/checkpoint from before the model zoo → today's",
            "lifeseq migrate RUN/checkpoints/last.ckpt --out RUN/checkpoints/last.zoo.ckpt"),
    Command("demo", "lifeseq.jobs.demo", "synth → build → train → evaluate → export → serve",
            "lifeseq demo --workdir out/demo"),
    Command("serve", "lifeseq.jobs.serve", "HTTP server on an export: /score, /recommend, /health",
            "lifeseq serve export/twin --port 8000"),
)  # fmt: skip
BENCHES = (
    Command("pipeline", "lifeseq.jobs.bench_pipeline", "pipeline: Spark vs single-process, 1M-64M events",
            "lifeseq bench pipeline --sizes 1000000 4000000 --out bench_out/pipeline.json"),
    Command("ctr", "lifeseq.jobs.bench_ctr", "lifelong CTR models: quality, speed, latency",
            "lifeseq bench ctr --quick --models din,twin --out bench_out/ctr.json"),
    Command("generative", "lifeseq.jobs.bench_generative", "sequential models: MovieLens quality, speed",
            "lifeseq bench generative --models sasrec,hstu --out bench_out/generative.json"),
    Command("zoo", "lifeseq.jobs.bench_zoo", "every sequence model x seeds x both protocols",
            "lifeseq bench zoo --models sasrec,hstu --seeds 0,1,2"),
    Command("serving", "lifeseq.jobs.bench_serving", "scorer latency p50/p99 per request",
            "lifeseq bench serving --export export/twin --histories 1000 10000"),
    Command("latency", "lifeseq.jobs.bench_latency", "scorer latency side by side: baseline, eager, compiled",
            "lifeseq bench latency --export export/twin --baseline-repo ../old "
            "--baseline-export ../old-export/twin"),
    Command("http", "lifeseq.jobs.bench_http", "HTTP server load test: throughput, p50/p99, same scores",
            "lifeseq bench http --export export/twin --requests 200 --out bench_out/http.json"),
    Command("loader", "lifeseq.jobs.bench_loader", "shard loader throughput against raw tar reading",
            "lifeseq bench loader --mb 64 --out bench_out/loader.json"),
    Command("increment", "lifeseq.jobs.bench_increment", "incremental build against a full rebuild",
            "lifeseq bench increment --history-events 4000000 --new-events 1000000"),
)  # fmt: skip


#: `lifeseq train SUBCOMMAND --help` ends with these; they chain: build → fit → test → export.
TRAIN_EXAMPLES = {
    "fit": "lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/twin.yaml "
    "--data.root out/build --trainer.default_root_dir runs/twin",
    "validate": "lifeseq train validate --config configs/ctr/base.yaml --config "
    "configs/ctr/twin.yaml --data.root out/build --ckpt_path runs/twin/checkpoints/last.ckpt",
    "test": "lifeseq train test --config configs/ctr/base.yaml --config configs/ctr/twin.yaml "
    "--data.root out/build --ckpt_path runs/twin/checkpoints/last.ckpt",
}

#: How `lifeseq train --help` points at a task's and a zoo model's own flags.
TRAIN_MODEL_HELP = (
    "a task's flags (given as --model.init_args.NAME VALUE): lifeseq train fit --model.help "
    "lifeseq.trainers.tasks.ctr.CtrModule\na zoo model's: lifeseq train fit --config "
    "configs/ctr/base.yaml --model.init_args.model.help lifeseq.models.zoo.ctr.lifelong.LifelongCtr"
)


def version_line() -> str:
    """`lifeseq X (torch ..., torchrec ..., lightning ..., pyspark ...)`, from package metadata
    (nothing heavy is imported)."""

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    stack = ", ".join(
        f"{name} {installed(name)}"
        for name in ("torch", "torchrec", "fbgemm-gpu-cpu", "lightning", "pyspark", "webdataset")
    )
    return f"lifeseq {installed('lifeseq')} ({stack})"


def _add_commands(
    subparsers: argparse._SubParsersAction, commands: tuple[Command, ...], prefix: str
) -> None:
    for command in commands:
        sub = subparsers.add_parser(
            command.name,
            help=command.summary,
            description=f"{command.summary}. Flags: {prefix} {command.name} --help",
            epilog=f"example:\n  {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_help=False,
            allow_abbrev=False,
        )
        sub.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        sub.set_defaults(command=command)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: `--version`, `--verbose` and one subcommand per job.

    A subcommand's own flags are left unparsed here (`parse_known_args`) and parsed by its job.
    """
    parser = argparse.ArgumentParser(
        prog="lifeseq",
        description="lifeseq: raw events → Spark build → WebDataset shards → TorchRec/Lightning "
        "training → export and serving.",
        epilog="examples:\n" + "\n".join(f"  {c.example}" for c in COMMANDS)
        + "\n\n`lifeseq COMMAND --help` lists a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party log lines (TorchRec, FBGEMM, Lightning, Spark); "
        "also LIFESEQ_LOG_LEVEL=INFO|WARN|DEBUG",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_commands(commands, COMMANDS, "lifeseq")
    bench = commands.add_parser(
        "bench",
        help="benchmarks (tables, JSON and PNGs)",
        description="Benchmarks: each prints a table and writes JSON (and a PNG where it says).",
        epilog="example:\n  " + BENCHES[0].example,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    _add_commands(
        bench.add_subparsers(title="benchmarks", metavar="BENCH", required=True),
        BENCHES,
        "lifeseq bench",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `lifeseq [--verbose] COMMAND ...`, set up logging and run the job; exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    command: Command = args.command
    try:
        configure_logging(verbose=args.verbose)
    except ValueError as err:  # a bad LIFESEQ_LOG_LEVEL
        print(f"error: {err}", file=sys.stderr)
        return 2
    job = importlib.import_module(command.module)
    if "-h" in rest or "--help" in rest:
        return _job_help(job, command, rest)
    if command.name == "train":
        sys.argv = [f"{sys.argv[0]} train", *rest]  # LightningCLI reads sys.argv itself
        return int(job.main(None))
    return int(job.main(rest))


def _job_help(job: ModuleType, command: Command, rest: list[str]) -> int:
    """Print the job's own `--help` (its flags; `train fit --help`: the subcommand's), then the
    command's example (`TRAIN_EXAMPLES` for a `train` subcommand)."""
    example = command.example
    try:
        if command.name == "train":
            sub = next((a for a in rest if a in TRAIN_EXAMPLES), None)
            sys.argv = [f"{sys.argv[0]} train", *([sub] if sub else []), "--help"]
            example = TRAIN_EXAMPLES.get(sub or "", example)
            job.main(None)
        else:
            job.main(["--help"])
    except SystemExit as done:
        if done.code not in (0, None):
            return int(done.code) if isinstance(done.code, int) else 2
    print(f"\nexample:\n  {example}")
    if command.name == "train":
        print(f"\n{TRAIN_MODEL_HELP}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
