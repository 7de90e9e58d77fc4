"""`lifeseq serve`: answer scoring requests for an export over HTTP (`serving.server` under
uvicorn, scoring in a pool of worker processes: `serving.pool`) until interrupted (Ctrl-C or
SIGTERM).

    lifeseq serve EXPORT --port 8000 [--host 127.0.0.1] [--workers N] [--threads-per-worker T]
        [--max-queue 64] [--max-history-events N] [--max-candidates N] [--max-body-bytes N]
        [--compiled] [--no-checksums]
    curl -s localhost:8000/health

The export is checked against its manifest's checksums before anything listens: a missing or
damaged export prints one `error:` line naming the file and exits 1. Requests are scored by
`--workers` processes of `--threads-per-worker` torch threads each; by default one thread per
worker and one worker per core this process may use (its CPU affinity and cgroup quota,
`serving.cores`; at most 8 workers, further cores as threads), so the threads never outnumber
the cores. At most `--max-queue` requests wait for a worker; more are answered 503 with
`Retry-After`. `--port 0` picks a free port; the startup line says which. uvicorn's access log
is off unless `lifeseq --verbose serve` (or `LIFESEQ_LOG_LEVEL=INFO`). `--compiled` serves the
export's AOTInductor packages (`compiled/*.pt2`); an export without them is refused, saying
why.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from lifeseq.jobs.terminal import third_party_level
from lifeseq.serving.artifacts import ExportError, read_manifest, verify_files
from lifeseq.serving.cores import PoolSize, cores_given, pool_size
from lifeseq.serving.pool import DEFAULT_MAX_QUEUE, ProcessPool, export_info
from lifeseq.serving.scorer import RequestLimits, compiled_refusal
from lifeseq.serving.server import create_app, default_max_body_bytes

logger = logging.getLogger(__name__)
#: Seconds uvicorn waits for requests in flight when asked to stop.
GRACEFUL_SHUTDOWN_S = 5
BACKLOG = 256


class _Stopped(Exception):
    """SIGINT or SIGTERM after uvicorn's graceful shutdown: a normal end, exit code 0."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, refused as "expected `what`"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive = _at_least(1, "a positive integer")
_non_negative = _at_least(0, "an integer >= 0")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0: any free), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `lifeseq serve` flags."""
    defaults = RequestLimits()
    parser = argparse.ArgumentParser(prog="lifeseq serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="export directory (lifeseq export --out)")
    parser.add_argument("--port", type=_port, required=True, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")  # fmt: skip
    parser.add_argument("--max-history-events", type=_positive,
                        default=defaults.max_history_events,
                        help="refuse requests with more history events (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-candidates", type=_positive, default=defaults.max_candidates,
                        help="refuse CTR requests with more candidates, or a larger k "
                        "(default %(default)s)")  # fmt: skip
    parser.add_argument("--max-body-bytes", type=_positive, default=None,
                        help="refuse larger request bodies with 413 before reading them "
                        "(default: 64 bytes per value the limits allow, ~20 MB)")  # fmt: skip
    parser.add_argument("--workers", type=_positive, default=None,
                        help="scoring processes, each scoring one request at a time (default: "
                        "one per core given, at most 8)")  # fmt: skip
    parser.add_argument("--threads-per-worker", type=_positive, default=None,
                        help="torch intra-op threads of each worker (default: 1, or the cores "
                        "left per worker beyond 8 workers)")  # fmt: skip
    parser.add_argument("--max-queue", type=_non_negative, default=DEFAULT_MAX_QUEUE,
                        help="requests that may wait for a worker; more are answered 503 with "
                        "Retry-After (default %(default)s)")  # fmt: skip
    parser.add_argument("--compiled", action="store_true",
                        help="run the export's AOTInductor packages (compiled/*.pt2)")  # fmt: skip
    parser.add_argument("--no-checksums", action="store_true",
                        help="check file sizes only, not sha256 (faster start of a large export)")  # fmt: skip
    return parser


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` (0: any free port).

    Raises:
        OSError: the address does not resolve, or is in use.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _event_loop_factory() -> Any:
    """uvloop's event loop where installed (uvicorn's own choice too), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def worker_command(args: argparse.Namespace, threads: int) -> list[str]:
    """The command line of one scoring worker (`jobs.serve_worker`) for the parsed flags."""
    return [
        sys.executable, "-m", "lifeseq.jobs.serve_worker", str(args.export), "--threads", str(threads),
        "--max-history-events", str(args.max_history_events),
        "--max-candidates", str(args.max_candidates), *(["--compiled"] if args.compiled else []),
    ]  # fmt: skip


def pool_line(size: PoolSize, max_queue: int) -> str:
    """The second start-up line: how requests are scored."""
    threads = f"{size.threads_per_worker} thread{'s' if size.threads_per_worker > 1 else ''}"
    line = (
        f"scoring: {size.workers} worker process{'es' if size.workers > 1 else ''} × {threads} "
        f"on {size.cores} core{'s' if size.cores > 1 else ''}; at most {max_queue} requests wait"
    )
    if size.oversubscribed:
        line += f" (warning: {size.workers * size.threads_per_worker} threads > {size.cores} cores)"
    return line


def main(argv: list[str] | None = None) -> int:
    """Check the export, start the scoring workers, listen, serve until stopped; the exit code
    (1: the export is missing or damaged, a worker cannot start, or the address cannot be
    used)."""
    args = build_parser().parse_args(argv)
    limits = RequestLimits(args.max_history_events, args.max_candidates)
    try:
        manifest = read_manifest(args.export)
        verify_files(args.export, manifest, checksums=not args.no_checksums)
        refusal = compiled_refusal(args.export, manifest) if args.compiled else None
        if refusal:
            raise ExportError(refusal)
    except (ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = pool_size(cores_given(), args.workers, args.threads_per_worker)
    try:
        sock = listen(args.host, args.port)
    except OSError as err:
        print(f"error: --host {args.host} --port {args.port}: cannot listen ({err})",
              file=sys.stderr)  # fmt: skip
        return 1
    import uvicorn  # here: `lifeseq serve --help` stays quick

    info = export_info(args.export, manifest, limits, args.compiled)
    pool = ProcessPool(info, worker_command(args, size.threads_per_worker), size.workers,
                       size.threads_per_worker, args.max_queue)  # fmt: skip
    body_limit = args.max_body_bytes or default_max_body_bytes(limits)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    kind = f"{info.family}, compiled" if args.compiled else info.family

    def ready() -> None:
        print(f"serving {info.name} ({kind}) from {args.export} on http://{shown}:{port}",
              flush=True)  # fmt: skip
        print(pool_line(size, args.max_queue), flush=True)

    app = create_app(pool, max_body_bytes=body_limit)
    config = uvicorn.Config(
        app,
        log_config=None,  # our root handler (jobs.terminal) shows uvicorn's errors
        log_level=None,
        access_log=third_party_level() <= logging.INFO,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=BACKLOG,
    )
    logger.debug("limits %s, max_body_bytes %d", limits, body_limit)

    async def serve() -> int:
        try:
            await pool.start()
        except (RuntimeError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        ready()
        try:
            await uvicorn.Server(config).serve(sockets=[sock])
        finally:
            await pool.stop()
        return 0

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with sock, asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            return runner.run(serve())
    except _Stopped:
        return 0  # uvicorn finished the requests in flight, then re-raised the signal
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
