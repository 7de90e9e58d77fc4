"""`lifeseq` console script: one entry point for every job.

lifeseq synth --out DIR --users N --seed S       synthetic lifelong events (Parquet)
lifeseq build --config C --input IN --output OUT  Spark build: quarantine, vocab, lifelong, shards
lifeseq train {fit,validate,test} ...           LightningCLI training (see jobs/train.py)
lifeseq export --ckpt CKPT --out DIR              checkpoint → embedding shards, .pt2, manifest
lifeseq migrate PATH --out NEW                    a config/checkpoint from before the model zoo → today's
lifeseq demo [--workdir DIR]                      synth → build → train → evaluate → export → serve
lifeseq bench pipeline [...]                      pipeline benchmark (Spark vs single-process)
lifeseq bench ctr [...]                           lifelong CTR models: quality, speed, latency
lifeseq bench generative [...]                    sequential models: MovieLens quality, speed
lifeseq bench zoo [...]                           every sequence model x seeds x both protocols
lifeseq bench serving --export DIR [...]          scorer latency p50/p99 per request
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch `lifeseq <command> ...` to the job modules."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("synth", "build", "train", "export", "migrate", "demo", "bench")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"error: unknown command {argv[0]!r}; expected one of {commands}", file=sys.stderr
            )
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    if command == "synth":
        from jobs import synth

        return synth.main(rest)
    if command == "build":
        from jobs import build_lifelong

        return build_lifelong.main(rest)
    if command == "train":
        from jobs import train

        sys.argv = [f"{sys.argv[0]} train", *rest]  # LightningCLI reads sys.argv itself
        return train.main(None)
    if command == "export":
        from jobs import export

        return export.main(rest)
    if command == "migrate":
        from jobs import migrate

        return migrate.main(rest)
    if command == "demo":
        logging.basicConfig(level=logging.WARNING)
        from jobs import demo

        return demo.main(rest)
    if rest[:1] == ["pipeline"]:
        from jobs import bench_pipeline

        return bench_pipeline.main(rest[1:])
    if rest[:1] == ["ctr"]:
        from jobs import bench_ctr

        return bench_ctr.main(rest[1:])
    if rest[:1] == ["generative"]:
        from jobs import bench_generative

        return bench_generative.main(rest[1:])
    if rest[:1] == ["zoo"]:
        from jobs import bench_zoo

        return bench_zoo.main(rest[1:])
    if rest[:1] == ["serving"]:
        from jobs import bench_serving

        return bench_serving.main(rest[1:])
    print("error: usage: lifeseq bench pipeline|ctr|generative|zoo|serving [...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
