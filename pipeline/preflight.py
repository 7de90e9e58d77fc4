"""Checks a build runs before Spark does any work, and Spark's input errors in plain words.

A new user's mistakes (a wrong `--input`, CSV files under `input.format: parquet`, a truncated
Parquet file, an output path that cannot be written) should cost one line naming the path and
what to do, not a JVM stack, and must leave nothing behind. `preflight` finds them with cheap
filesystem calls (`pipeline.storage`: listings, Parquet footers, the first bytes of text files)
before the Spark session starts; `spark_errors_named` turns what only Spark can see (a Parquet
file corrupt past its footer, an input on a filesystem pyarrow cannot reach) into the same
`BuildInputError`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lifeseq.pipeline import storage
from lifeseq.pipeline.config import PipelineConfig
from lifeseq.pipeline.sample_codec import SCHEMA_VERSION
from lifeseq.pipeline.vocab import VOCAB_NAMES

log = logging.getLogger(__name__)

#: Extensions Hadoop decompresses by itself: such text files are not sniffed for binary bytes.
_COMPRESSED = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst", ".zstd")
_GLOB_CHARS = "*?[{"
_SNIFF_BYTES = 4096
_FAILED_READ_FILE = re.compile(
    r"\[FAILED_READ_FILE\.\w+\] Encountered error while reading file (\S+?)\.(?:\s|$)"
)


class BuildInputError(ValueError):
    """An input, output path or config key the build cannot use.

    The message is one line naming the path or key and what to do; nothing has been written.
    """


@dataclass(frozen=True)
class OutputState:
    """OUT as it was before the build wrote anything (`output_state`).

    Attributes:
        uri: the `--output` path or URI.
        existed: OUT existed (as a directory, empty or not).
        nonempty: OUT existed and had entries (only allowed with `--overwrite`).
        created_root: filesystem path of the topmost directory the build creates (OUT itself or
            a missing ancestor of it); None when OUT existed.
    """

    uri: str
    existed: bool
    nonempty: bool
    created_root: str | None


@dataclass(frozen=True)
class Preflight:
    """Evidence that `preflight` passed.

    Attributes:
        input_files: the input data files it checked (display names).
        base_manifest: the manifest of `--base` (an incremental build), else None.
    """

    input_files: tuple[str, ...]
    base_manifest: dict[str, Any] | None = None


def display_path(uri: str) -> str:
    """A path as a user typed it: `file:///tmp/a%20b` → `/tmp/a b`; other URIs unchanged."""
    if uri.startswith("file:"):
        return urllib.parse.unquote(re.sub(r"^file:(//)?", "", uri))
    return uri


def _spark_skips(name: str) -> bool:
    """Whether Spark's file listing skips this file or directory name (`_SUCCESS`, `.crc`, ...)."""
    underscore = name.startswith("_") and "=" not in name
    return underscore or name.startswith(".") or name.endswith("._COPYING_")


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in _GLOB_CHARS)


def _data_files(uri: str) -> list[tuple[pafs.FileSystem, pafs.FileInfo, str]] | None:
    """The data files Spark would read for one `--input` entry: `(fs, info, display name)`.

    Returns None when this entry cannot be checked here (a glob in a directory part, or a
    filesystem pyarrow cannot open); Spark then reports problems, via `spark_errors_named`.

    Raises:
        BuildInputError: the path does not exist, a glob matches nothing, or a directory holds
            no data files.
    """
    parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else ""
    if _has_glob(parent) or "{" in uri:
        return None
    try:
        fs, path = storage.resolve(uri)
        info = fs.get_file_info(path)
    except (OSError, pa.ArrowException, ValueError, NotImplementedError) as err:
        log.debug("cannot check input %s here (%s); Spark will", uri, err)
        return None
    shown = display_path(uri)
    if info.type == pafs.FileType.File:
        return [(fs, info, shown)]
    if info.type == pafs.FileType.Directory:
        files = _files_below(fs, info, shown)
        if not files:
            raise BuildInputError(
                f"input directory {shown} has no data files (names starting with '_' or '.' "
                "are skipped); check --input"
            )
        return files
    if not _has_glob(uri):
        raise BuildInputError(f"input path {shown} does not exist; check --input")
    fs_parent, pattern = path.rsplit("/", 1) if "/" in path else ("", path)
    selector = pafs.FileSelector(fs_parent, recursive=False, allow_not_found=True)
    matches = []
    for entry in sorted(fs.get_file_info(selector), key=lambda i: i.path):
        if _spark_skips(entry.base_name) or not fnmatch.fnmatch(entry.base_name, pattern):
            continue
        entry_shown = f"{display_path(parent)}/{entry.base_name}"
        if entry.type == pafs.FileType.File:
            matches.append((fs, entry, entry_shown))
        elif entry.type == pafs.FileType.Directory:  # Spark reads a matched directory whole
            matches.extend(_files_below(fs, entry, entry_shown))
    if not matches:
        raise BuildInputError(f"input glob {shown} matches no files; check --input")
    return matches


def _files_below(
    fs: pafs.FileSystem, directory: pafs.FileInfo, shown: str
) -> list[tuple[pafs.FileSystem, pafs.FileInfo, str]]:
    """Files below `directory` that Spark reads (no `_`/`.` name on the way), sorted by path."""
    root = directory.path.rstrip("/")
    selector = pafs.FileSelector(root, recursive=True)
    files = []
    for entry in sorted(fs.get_file_info(selector), key=lambda i: i.path):
        relative = entry.path[len(root) + 1 :]
        if entry.type != pafs.FileType.File:
            continue
        if not any(_spark_skips(part) for part in relative.split("/")):
            files.append((fs, entry, f"{shown.rstrip('/')}/{relative}"))
    return files


def _looks_like_text(head: bytes) -> bool:
    """Whether bytes look like text (UTF-8 without NUL bytes), e.g. CSV or JSON lines."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end is still text
        return err.start >= len(head) - 3
    return True


def _check_parquet_file(fs: pafs.FileSystem, info: pafs.FileInfo, shown: str) -> None:
    """Read the file's Parquet footer.

    Raises:
        BuildInputError: the file is empty, text, or not a readable Parquet file.
    """
    if info.size == 0:
        raise BuildInputError(
            f"input file {shown} is empty (0 bytes), not Parquet; remove it from the input"
        )
    with fs.open_input_file(info.path) as handle:
        head = handle.read_at(min(_SNIFF_BYTES, info.size), 0)
        try:
            pq.ParquetFile(handle).metadata  # noqa: B018 (reading the footer is the check)
            return
        except (pa.ArrowException, OSError) as err:
            reason = str(err).split(". ")[0].strip().rstrip(".")
    if not head.startswith(b"PAR1") and _looks_like_text(head):
        raise BuildInputError(
            f"input file {shown} is text (CSV or JSON lines?), not Parquet as input.format "
            "says; set input.format to the files' format, or remove the file"
        )
    raise BuildInputError(
        f"input file {shown} is not a readable Parquet file ({reason}): it is corrupt or "
        "truncated; re-export it or remove it from the input"
    )


def _check_text_file(fs: pafs.FileSystem, info: pafs.FileInfo, shown: str, fmt: str) -> None:
    """Sniff a text input's first bytes.

    Raises:
        BuildInputError: the file is Parquet or other binary data.
    """
    if not info.size or info.base_name.lower().endswith(_COMPRESSED):
        return
    with fs.open_input_file(info.path) as handle:
        head = handle.read_at(min(_SNIFF_BYTES, info.size), 0)
    if head.startswith(b"PAR1"):
        raise BuildInputError(
            f"input file {shown} is Parquet, but input.format is {fmt}; "
            "set input.format: parquet (and input.columns to its columns)"
        )
    if not _looks_like_text(head):
        raise BuildInputError(
            f"input file {shown} is binary, not {fmt} text; check input.format, "
            "or remove the file from the input"
        )


def check_inputs(inputs: list[str], fmt: str) -> list[str]:
    """Check every `--input` entry exists, holds data files, and that they look like `fmt`.

    Parquet files get their footer read; text files their first 4 KiB sniffed. Files Spark
    skips (`_SUCCESS`, `.crc`, `_temporary/`) are skipped here too.

    Returns:
        The data files checked (display names), sorted per entry.

    Raises:
        BuildInputError: naming the path or file and what to do.
    """
    checked: list[str] = []
    for uri in inputs:
        files = _data_files(uri)
        for fs, info, shown in files or []:
            if fmt == "parquet":
                _check_parquet_file(fs, info, shown)
            else:
                _check_text_file(fs, info, shown, fmt)
            checked.append(shown)
    return checked


def _nearest_existing(fs: pafs.FileSystem, path: str) -> tuple[pafs.FileInfo, str]:
    """The nearest existing ancestor of a missing `path`, and its child on the way to `path`."""
    child = path.rstrip("/")
    while True:
        parent = child.rsplit("/", 1)[0] if "/" in child else ""
        info = fs.get_file_info(parent or "/")
        if info.type != pafs.FileType.NotFound or parent in ("", "/"):
            return info, child
        child = parent


def _probe_writable(fs: pafs.FileSystem, directory: str) -> None:
    """Create and delete an empty file in `directory` (raises OSError when that fails)."""
    probe = f"{directory.rstrip('/')}/.lifeseq-write-probe-{os.getpid()}"
    with fs.open_output_stream(probe, compression=None):
        pass
    fs.delete_file(probe)


def output_state(output: str) -> OutputState:
    """OUT as it is now (read only): whether it exists, has entries, and what a build creates.

    Raises:
        BuildInputError: OUT is a file, or lies below one.
    """
    fs, path = storage.resolve(output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise BuildInputError(f"--output {output} is a file, not a directory; choose another path")
    if info.type == pafs.FileType.Directory:
        nonempty = storage.is_nonempty_dir(output)
        return OutputState(output, existed=True, nonempty=nonempty, created_root=None)
    ancestor, created_root = _nearest_existing(fs, path)
    if ancestor.type == pafs.FileType.File:
        raise BuildInputError(
            f"--output {output} cannot be created: {ancestor.path} is a file; choose another path"
        )
    return OutputState(output, existed=False, nonempty=False, created_root=created_root)


def check_output(output: str, overwrite: bool) -> None:
    """Check OUT can be written, leaving it as it was (a probe file is created and deleted).

    Raises:
        FileExistsError: OUT is a non-empty directory and `overwrite` is False.
        BuildInputError: OUT is a file, lies below a file, or cannot be created or written.
    """
    state = output_state(output)
    if state.nonempty and not overwrite:
        raise FileExistsError(
            f"output directory {output} is not empty; pass --overwrite to replace it"
        )
    fs, path = storage.resolve(output)
    try:
        if not state.existed:
            fs.create_dir(path, recursive=True)
        _probe_writable(fs, path)
    except OSError as err:
        raise BuildInputError(_not_writable(output, err)) from err
    finally:
        if state.created_root is not None:
            try:
                fs.delete_dir(state.created_root)
            except OSError:  # never created
                pass


def _not_writable(output: str, err: OSError) -> str:
    """One line for a failed create/probe: pyarrow's `Cannot ... '<path>'. Detail: [errno N] why`."""
    text = str(err).split("] ", 1)[-1] if str(err).startswith("[Errno") else str(err)
    what, _, detail = text.partition(". Detail: ")
    detail = re.sub(r"^\[errno \d+\] ", "", detail)
    reason = f"{what[:1].lower()}{what[1:]} ({detail})" if detail else what
    return (
        f"--output {output} is not writable: {reason}; choose another path or fix its permissions"
    )


def preflight(
    cfg: PipelineConfig,
    inputs: list[str],
    output: str,
    overwrite: bool,
    vocab_from: str | None = None,
    base: str | None = None,
) -> Preflight:
    """Every check a build can make before Spark starts; writes nothing.

    Raises:
        FileExistsError: non-empty OUT without `overwrite`.
        BuildInputError: a bad `--output`, `--input`, `--vocab-from`, `--base` or input file,
            naming it.
    """
    if base is not None and vocab_from is not None:
        raise BuildInputError(
            "--base and --vocab-from: give one (an increment extends the base's vocab)"
        )
    base_manifest = check_base(base, output, cfg) if base is not None else None
    if vocab_from is not None:
        if storage.resolve(vocab_from)[1] == storage.resolve(output)[1]:
            raise BuildInputError(
                f"--vocab-from {vocab_from} is the output directory itself; copy it first"
            )
        if not storage.exists(storage.join(vocab_from, "vocab")):
            raise BuildInputError(
                f"--vocab-from {vocab_from} has no vocab/ directory; pass the OUT of an "
                "earlier complete build"
            )
    check_output(output, overwrite)
    files = check_inputs(inputs, cfg.input.format)
    log.debug(
        "preflight: OUT %s is writable; %d input files look like %s",
        output,
        len(files),
        cfg.input.format,
    )
    return Preflight(input_files=tuple(files), base_manifest=base_manifest)


#: Config keys a base must share with its increment: they decide ids, histories and targets.
SHARED_CONFIG = ("input.ts_min", "input.ts_max", "behaviors", "vocab", "lifelong", "targets")


def _config_value(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _first_difference(ours: Any, theirs: Any, path: str) -> str | None:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            found = _first_difference(ours.get(key), theirs.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    return None if ours == theirs else path


def check_base(base: str, output: str, cfg: PipelineConfig) -> dict[str, Any]:
    """Refuse a `--base` that cannot be extended; return its manifest.

    Raises:
        BuildInputError: `base` is the output itself, is not a complete build (no
            `manifest.json`, vocab or lifelong table), has another shard format, or was built
            with another value of a `SHARED_CONFIG` key (named).
    """
    if storage.resolve(base)[1] == storage.resolve(output)[1]:
        raise BuildInputError(
            f"--base {base} is the output directory itself; write the increment to a new --output"
        )
    source = storage.join(base, "manifest.json")
    if not storage.exists(source):
        raise BuildInputError(
            f"--base {base} is not a complete build (no manifest.json); pass the OUT of a "
            "finished lifeseq build"
        )
    manifest = storage.read_json(source)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BuildInputError(
            f"--base {base} has shard format {manifest.get('schema_version')!r}, not "
            f"{SCHEMA_VERSION}; rebuild it with this lifeseq first"
        )
    for part in (*(f"vocab/{name}" for name in VOCAB_NAMES), "lifelong"):
        if not storage.exists(storage.join(base, part)):
            raise BuildInputError(
                f"--base {base} is not a complete build (no {part}/); pass the OUT of a "
                "finished lifeseq build"
            )
    theirs, ours = manifest.get("config") or {}, cfg.to_dict()
    for key in SHARED_CONFIG:
        found = _first_difference(_config_value(ours, key), _config_value(theirs, key), key)
        if found:
            raise BuildInputError(
                f"--base {base} was built with another config: {found} is "
                f"{_config_value(theirs, found)!r} there and {_config_value(ours, found)!r} "
                "here; build the increment with the base's config (or rebuild from scratch)"
            )
    return manifest


def spark_input_error(err: BaseException, inputs: list[str], fmt: str) -> BuildInputError | None:
    """Spark's error about reading the input, as one line naming the path; None for others.

    Knows `[PATH_NOT_FOUND]`, `[UNABLE_TO_INFER_SCHEMA]` (no data files), `[FAILED_READ_FILE]`
    (a corrupt, truncated or wrongly formatted file) and `[UNRESOLVED_COLUMN]`.
    """
    get_condition = getattr(err, "getCondition", None)
    condition = (get_condition() or "") if callable(get_condition) else ""
    params = (err.getMessageParameters() or {}) if condition else {}
    if condition == "PATH_NOT_FOUND":
        path = display_path(params.get("path", str(inputs)))
        return BuildInputError(f"input path {path} does not exist; check --input")
    if condition == "UNABLE_TO_INFER_SCHEMA":
        return BuildInputError(
            f"input {' '.join(inputs)} has no {fmt} data files (names starting with '_' or '.' "
            "are skipped); check --input and input.format"
        )
    if condition.startswith("UNRESOLVED_COLUMN"):
        return BuildInputError(
            f"input column {params.get('objectName', '?')} not found; available: "
            f"{params.get('proposal', '?')}; check input.columns"
        )
    if type(err).__name__ != "Py4JJavaError" and not condition.startswith("FAILED_READ_FILE"):
        return None
    match = _FAILED_READ_FILE.search(str(err))
    if match is None:
        return None
    return BuildInputError(
        f"input file {display_path(match.group(1))} cannot be read as {fmt}: it is corrupt, "
        "truncated or not in that format; re-export it or remove it from the input"
    )


@contextmanager
def spark_errors_named(inputs: list[str], fmt: str) -> Iterator[None]:
    """Re-raise Spark's input errors inside the block as `BuildInputError` (others unchanged)."""
    try:
        yield
    except BuildInputError:
        raise
    except Exception as err:
        named = spark_input_error(err, inputs, fmt)
        if named is None:
            raise
        raise named from err


__all__ = [
    "BuildInputError",
    "OutputState",
    "Preflight",
    "check_inputs",
    "check_output",
    "output_state",
    "display_path",
    "preflight",
    "spark_errors_named",
    "spark_input_error",
]
