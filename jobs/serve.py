"""`lifeseq serve`: answer scoring requests for an export over HTTP (`serving.server` under
uvicorn) until interrupted (Ctrl-C or SIGTERM).

    lifeseq serve EXPORT --port 8000 [--host 127.0.0.1] [--max-history-events N]
        [--max-candidates N] [--max-body-bytes N] [--scoring-threads 1] [--compiled]
        [--no-checksums]
    curl -s localhost:8000/health

The export is checked against its manifest's checksums before anything listens: a missing or
damaged export prints one `error:` line naming the file and exits 1. `--port 0` picks a free
port; the startup line says which. uvicorn's access log is off unless `lifeseq --verbose serve`
(or `LIFESEQ_LOG_LEVEL=INFO`). `--compiled` serves the export's AOTInductor packages
(`compiled/*.pt2`); an export without them is refused, saying why.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from jobs.terminal import third_party_level
from serving.artifacts import ExportError
from serving.scorer import RequestLimits, Scorer
from serving.server import create_app, default_max_body_bytes

logger = logging.getLogger(__name__)
#: Seconds uvicorn waits for requests in flight when asked to stop.
GRACEFUL_SHUTDOWN_S = 5
BACKLOG = 256


class _Stopped(Exception):
    """SIGINT or SIGTERM after uvicorn's graceful shutdown: a normal end, exit code 0."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
    parser.add_argument("--scoring-threads", type=_positive, default=1,
                        help="requests scored at once, each in a worker thread (default 1: "
                        "serial scoring, torch's intra-op threads use the cores)")  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    """Load and check the export, listen, serve until stopped; the exit code (1: the export is
    missing or damaged, or the address cannot be used)."""
    args = build_parser().parse_args(argv)
    limits = RequestLimits(args.max_history_events, args.max_candidates)
    try:
        scorer = Scorer.load(
            args.export, checksums=not args.no_checksums, limits=limits, compiled=args.compiled
        )
    except (ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        sock = listen(args.host, args.port)
    except OSError as err:
        print(f"error: --host {args.host} --port {args.port}: cannot listen ({err})",
              file=sys.stderr)  # fmt: skip
        return 1
    import uvicorn  # here: `lifeseq serve --help` stays quick

    body_limit = args.max_body_bytes or default_max_body_bytes(limits)
    app = create_app(scorer, max_body_bytes=body_limit, scoring_threads=args.scoring_threads)
    config = uvicorn.Config(
        app,
        log_config=None,  # our root handler (jobs.terminal) shows uvicorn's errors
        log_level=None,
        access_log=third_party_level() <= logging.INFO,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=BACKLOG,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    kind = f"{scorer.family}, compiled" if scorer.compiled else scorer.family
    print(f"serving {scorer.name} ({kind}) from {args.export} on http://{shown}:{port}",
          flush=True)  # fmt: skip
    logger.debug("limits %s, max_body_bytes %d", limits, body_limit)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with sock:
            uvicorn.Server(config).run(sockets=[sock])
    except _Stopped:
        pass  # uvicorn finished the requests in flight, then re-raised the signal
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
