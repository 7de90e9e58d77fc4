"""Reading a YAML config file so that a syntax error is one line naming the file and the place.

PyYAML's errors print several lines about `"<unicode string>"` and, uncaught, a traceback; every
command that reads a config (`lifeseq build`, `train`, `migrate`, `demo`, the benchmarks) reads
it here instead and answers:

    error: configs/ctr/twin.yaml: line 3, column 7: mapping values are not allowed here (not
    valid YAML); fix the file
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def yaml_error_text(path: str | Path, error: yaml.YAMLError) -> str:
    """`PATH: line L, column C: problem (not valid YAML); fix the file` for a PyYAML error
    (lines and columns counted from 1, as editors do)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    context = getattr(error, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return f"{path}: {where}{detail} (not valid YAML); fix the file"


def read_yaml(path: str | Path) -> Any:
    """The content of the YAML file at `path` (`yaml.safe_load`: plain data, no Python objects).

    Raises:
        FileNotFoundError: no such file (naming it).
        ValueError: the file is not valid YAML, or not UTF-8 text (one line naming the file,
            line and column).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"{path}: a directory, not a config file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); a config is YAML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(yaml_error_text(path, err)) from None


def yaml_file_error(path: str | Path) -> str | None:
    """Why `path` is not a readable YAML file (`read_yaml`'s message), or None when it is."""
    try:
        read_yaml(path)
    except (FileNotFoundError, ValueError) as err:
        return str(err)
    return None
