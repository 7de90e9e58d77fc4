"""One scoring worker of `lifeseq serve` (`serving.pool.ProcessPool` starts them): loads the
export with its own torch threads, then answers request frames on stdin with answer frames on
stdout (`serving.worker_protocol`) until stdin closes.

    python -m lifeseq.jobs.serve_worker EXPORT --threads 1 [--compiled] [--max-history-events N]
        [--max-candidates N]

Not a command for people: the server starts it with `OMP_NUM_THREADS` set to `--threads`. The
protocol owns the real stdout; anything a library prints goes to stderr (the server's log).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from pathlib import Path


def _protocol_stdout() -> object:
    """The real stdout as a binary stream for frames; file descriptor 1 then points at stderr,
    so a stray print cannot corrupt a frame."""
    frames = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return frames


def main(argv: list[str] | None = None) -> int:
    """Load the export and serve frames; exit code (1: the export cannot be loaded)."""
    frames = _protocol_stdout()
    # Ctrl-C reaches the whole process group: the server stops its workers by closing stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m lifeseq.jobs.serve_worker")
    parser.add_argument("export", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--max-history-events", type=int, required=True)
    parser.add_argument("--max-candidates", type=int, required=True)
    args = parser.parse_args(argv)

    import torch

    from lifeseq.jobs.terminal import configure_logging
    from lifeseq.serving.artifacts import ExportError
    from lifeseq.serving.scorer import RequestLimits, Scorer
    from lifeseq.serving.worker_protocol import serve_requests

    configure_logging()
    torch.set_num_threads(args.threads)
    limits = RequestLimits(args.max_history_events, args.max_candidates)
    try:  # the server checked every file's sha256 before starting any worker
        scorer = Scorer.load(args.export, checksums=False, limits=limits, compiled=args.compiled)
    except (ExportError, FileNotFoundError) as err:
        print(f"error: scoring worker: {err}", file=sys.stderr)
        return 1
    gc.collect()
    gc.freeze()  # the loaded export is never garbage: later collections skip it
    hello = {"name": scorer.name, "family": scorer.family, "threads": torch.get_num_threads(),
             "pid": os.getpid()}  # fmt: skip
    try:
        serve_requests(scorer, sys.stdin.buffer, frames, hello)  # type: ignore[arg-type]
    except (BrokenPipeError, EOFError):  # the server went away
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
