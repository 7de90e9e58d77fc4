"""`lifeseq export`: a training checkpoint → per-table embedding shards, the `torch.export`
dense model, vocabularies, item caches and a checksummed manifest (see `serving.export`).

    python jobs/export.py --ckpt RUN/checkpoints/last.ckpt --out EXPORT [--data OUT] [--overwrite]
    lifeseq export --ckpt RUN/checkpoints/last.ckpt --out EXPORT
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python jobs/export.py` runs this file as a script
    sys.path.insert(0, str(REPO_ROOT))

from lifeseq.serving.artifacts import ExportError  # noqa: E402
from lifeseq.serving.export import export_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and export; returns the exit code (2 with a message on bad input)."""
    parser = argparse.ArgumentParser(prog="lifeseq export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ckpt", required=True, help="checkpoint directory (RUN/checkpoints/X.ckpt)"
    )
    parser.add_argument("--out", required=True, help="export directory to create")
    parser.add_argument("--data", default=None, help="lifeseq build output (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the AOTInductor packages (compiled/*.pt2; about 10-30 s per program)",
    )
    args = parser.parse_args(argv)
    # one process reads the (maybe multi-rank) checkpoint: DCP's notice says just that
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = export_checkpoint(
            args.ckpt, args.out, args.data, overwrite=args.overwrite, compiled=not args.no_compile
        )
    except (ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    model = manifest["model"]
    print(
        f"exported {model['family']} model {model['name']} (step "
        f"{manifest['checkpoint']['global_step']}) to {args.out}: {len(manifest['files'])} "
        f"files, {size / 1e6:.1f} MB"
    )
    packages = manifest["compiled"].get("programs")
    if packages:
        seconds = sum(p["seconds"] for p in packages.values())
        print(f"compiled {len(packages)} AOTInductor package(s) in {seconds:.0f} s: "
              f"{', '.join(p['file'] for p in packages.values())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
