"""`lifeseq synth`: write synthetic lifelong behavior events as Parquet.

    lifeseq synth --out data/events --users 10000 --seed 7
    lifeseq synth --out data/events-10m --events 10000000 --seed 7 --overwrite
    python -m lifeseq.jobs.synth --help

Every `pipeline.synth.SynthConfig` field is a flag (`--median-events`, `--no-value`, ...).
The output is `OUT/events-NNNNN.parquet` plus `OUT/_synth.json` (resolved config and counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from datetime import UTC, datetime

from lifeseq.pipeline.synth import SynthConfig, config_field_docs, write_synthetic

_HELP_DEFAULTS = {"users": None, "events": None}


def _parse_time(text: str) -> int:
    """Epoch seconds from an integer or an ISO date/time (UTC unless it names a zone)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected epoch seconds or an ISO date such as 2025-01-01, got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def build_parser() -> argparse.ArgumentParser:
    """Parser with `--out`, `--overwrite` and one flag per `SynthConfig` field.

    Returns:
        The argument parser; flags are the field names with dashes.
    """
    parser = argparse.ArgumentParser(
        prog="lifeseq synth",
        description="Synthetic lifelong user-behavior events (Parquet) with planted long-term "
        "interests. Give --users or --events.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory (local path)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace earlier `lifeseq synth` output in a non-empty --out",
    )
    docs = config_field_docs()
    defaults = SynthConfig(users=1)
    for field in dataclasses.fields(SynthConfig):
        flag = "--" + field.name.replace("_", "-")
        default = _HELP_DEFAULTS.get(field.name, getattr(defaults, field.name))
        help_text = docs[field.name].replace("``", "").replace("%", "%%")
        if field.type == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        if field.name == "end_ts":
            kind = _parse_time
            help_text += " Accepts epoch seconds or an ISO date/time (UTC), e.g. 2025-01-01."
        elif field.type in ("int", "int | None"):
            kind = int
        else:
            kind = float
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `lifeseq synth`.

    Args:
        argv: Arguments without the program name; `sys.argv[1:]` when None.

    Returns:
        Process exit code: 0 on success, 1 if --out cannot be written, 2 for bad arguments.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)}
    try:
        cfg = SynthConfig(**values)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        summary = write_synthetic(cfg, args.out, overwrite=args.overwrite)
    except (FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    behaviors = ", ".join(f"{name} {count:,}" for name, count in summary["behaviors"].items())
    print(
        f"wrote {summary['events']:,} events of {summary['users']:,} users in "
        f"{len(summary['files'])} files to {args.out} in {seconds:.1f} s "
        f"({summary['events'] / max(seconds, 1e-9) / 1e6:.2f} M events/s)"
    )
    print(f"behaviors: {behaviors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
