"""Fetch MovieLens-100K for benchmarks, without committing data to the repository.

    python -m lifeseq.jobs.movielens_data                  # prints the path of ml-100k.inter
    python -m lifeseq.jobs.movielens_data --cache /data/lifeseq-cache

The ratings come as RecBole's atomic file `ml-100k.inter` (tab-separated, header
`user_id:token item_id:token rating:float timestamp:float`, 100,000 rows), taken from the
`recbole==1.2.1` wheel on PyPI, which ships it as package data. The wheel is fetched with
`pip download` into `<cache>/wheels` (or placed there by hand on a machine without PyPI), the
file is extracted to `<cache>/ml-100k/ml-100k.inter` and checked against a pinned sha256 and
row count. Later calls return the cached file after re-checking its digest.

The cache is `$LIFESEQ_CACHE`, else `~/.cache/lifeseq`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "ML100K_INTER_ROWS",
    "ML100K_INTER_SHA256",
    "RECBOLE_WHEEL",
    "default_cache_dir",
    "fetch_ml100k",
    "main",
]

logger = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
#: File name of the wheel that holds the data, as `pip download` saves it.
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
#: Path of the ratings file inside the wheel.
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
#: sha256 of `ml-100k.inter` in recbole 1.2.1 (1,979,230 bytes), computed 2025-11-23 from
#: `pip download --no-deps recbole==1.2.1` (wheel sha256
#: 9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407).
ML100K_INTER_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
#: Data rows of `ml-100k.inter`, header line excluded.
ML100K_INTER_ROWS = 100_000
#: Environment variable that overrides the default cache directory.
CACHE_ENV = "LIFESEQ_CACHE"

_STDERR_TAIL_CHARS = 2000


def default_cache_dir() -> Path:
    """`$LIFESEQ_CACHE` if set and non-empty, else `~/.cache/lifeseq`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lifeseq"


def _digest_and_rows(path: Path) -> tuple[str, int]:
    """sha256 hex digest of a file and its number of lines after the first (header) line."""
    digest = hashlib.sha256()
    newlines = 0
    ends_with_newline = True
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            newlines += block.count(b"\n")
            ends_with_newline = block.endswith(b"\n")
    lines = newlines + (0 if ends_with_newline else 1)
    return digest.hexdigest(), max(lines - 1, 0)


def _download_wheel(wheel_dir: Path) -> Path:
    """Run `pip download --no-deps recbole==1.2.1` into `wheel_dir`; return the wheel's path.

    Raises:
        RuntimeError: if pip fails (with the tail of its stderr) or does not leave the wheel.
    """
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        f"recbole=={RECBOLE_VERSION}",
        "-d",
        str(wheel_dir),
    ]
    logger.info("downloading %s into %s", RECBOLE_WHEEL, wheel_dir)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    hint = (
        f"without PyPI access, download {RECBOLE_WHEEL} (https://pypi.org/project/recbole/"
        f"{RECBOLE_VERSION}/#files) elsewhere and place it in {wheel_dir}"
    )
    if result.returncode != 0:
        tail = (result.stderr or "").strip()[-_STDERR_TAIL_CHARS:]
        raise RuntimeError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{tail}\n{hint}"
        )
    wheel = wheel_dir / RECBOLE_WHEEL
    if not wheel.is_file():
        found = sorted(p.name for p in wheel_dir.iterdir())
        raise RuntimeError(f"pip download succeeded but left {found}, not {RECBOLE_WHEEL}; {hint}")
    return wheel


def _extract_checked(
    wheel: Path, member: str, dest: Path, expected_sha256: str, expected_rows: int
) -> None:
    """Extract `member` of the zip `wheel` to `dest`, atomically and only if it checks out.

    The member is written to a temporary file next to `dest`, its digest and row count are
    checked, and only then is it renamed onto `dest`; a failed check leaves no file behind.

    Raises:
        ValueError: if `wheel` is not a zip file, has no `member`, or the member's sha256 or
            row count differs from the expected ones.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, out)
            except zipfile.BadZipFile as err:
                raise ValueError(
                    f"{wheel} is not a valid wheel (zip) file ({err}); delete it so that it is "
                    "downloaded again"
                ) from None
            except KeyError:
                raise ValueError(
                    f"{wheel} has no member {member}; it is not the recbole {RECBOLE_VERSION} "
                    "wheel: delete it so that it is downloaded again"
                ) from None
        os.chmod(tmp, 0o644)
        sha256, rows = _digest_and_rows(tmp)
        if sha256 != expected_sha256 or rows != expected_rows:
            raise ValueError(
                f"{member} extracted from {wheel} has sha256 {sha256} and {rows} rows, expected "
                f"sha256 {expected_sha256} and {expected_rows} rows; delete the wheel so that it "
                "is downloaded again"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_ml100k(
    cache_dir: Path | None = None,
    *,
    expected_sha256: str = ML100K_INTER_SHA256,
    expected_rows: int = ML100K_INTER_ROWS,
) -> Path:
    """Path of a verified MovieLens-100K `ml-100k.inter`, fetched into the cache if needed.

    Steps: return `<cache>/ml-100k/ml-100k.inter` if it exists with the expected sha256 and
    row count; otherwise (missing or corrupted) make sure `<cache>/wheels/recbole-1.2.1-py3-
    none-any.whl` exists, running `pip download` if not, and extract and check the file again.

    Args:
        cache_dir: cache root; `default_cache_dir()` (`$LIFESEQ_CACHE` or `~/.cache/lifeseq`)
            when None.
        expected_sha256: hex sha256 the file must have; the pinned digest by default (tests
            pass their own).
        expected_rows: data lines the file must have, header excluded.

    Returns:
        Path of the checked `ml-100k.inter` file.

    Raises:
        RuntimeError: if the wheel is missing and `pip download` fails; the message has pip's
            stderr and says where to place the wheel by hand.
        ValueError: if the wheel is not a zip, lacks the file, or the extracted file's sha256
            or row count differs from the expected ones.
    """
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    inter = cache / "ml-100k" / "ml-100k.inter"
    if inter.is_file():
        sha256, rows = _digest_and_rows(inter)
        if sha256 == expected_sha256 and rows == expected_rows:
            return inter
        logger.warning(
            "cached %s has sha256 %s and %d rows, expected %s and %d; extracting it again",
            inter,
            sha256,
            rows,
            expected_sha256,
            expected_rows,
        )
    wheel = cache / "wheels" / RECBOLE_WHEEL
    if not wheel.is_file():
        wheel = _download_wheel(wheel.parent)
    logger.info("extracting %s from %s", ML100K_MEMBER, wheel)
    _extract_checked(wheel, ML100K_MEMBER, inter, expected_sha256, expected_rows)
    return inter


def main(argv: list[str] | None = None) -> int:
    """Run `python -m lifeseq.jobs.movielens_data`: fetch MovieLens-100K and print the file's path.

    Args:
        argv: arguments without the program name; `sys.argv[1:]` when None.

    Returns:
        Process exit code: 0 on success, 1 if the fetch or the checks fail.
    """
    parser = argparse.ArgumentParser(
        prog="python -m lifeseq.jobs.movielens_data",
        description="Fetch MovieLens-100K (RecBole ml-100k.inter) into a local cache and print "
        "its path.",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"cache directory (default: ${CACHE_ENV} or ~/.cache/lifeseq)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = fetch_ml100k(args.cache)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
