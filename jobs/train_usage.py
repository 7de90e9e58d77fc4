"""`lifeseq train`'s answer to a mistyped command line or config: one line naming the flag or
key, what it expected and what was given, and where to look, instead of jsonargparse's usage
block and nested union report (70-90 lines for one misspelt key).

    error: --model.init_args.lossx: lifeseq.trainers.tasks.ctr.CtrModule has no argument 'lossx'; its
    arguments: model, embedding, sharding, optimizer, seed
    (`lifeseq train fit --help` lists every flag; --print_config shows the merged config)

`usage_error(message, argv, flags)` condenses the message jsonargparse hands to
`ArgumentParser.error`; `jobs.train.LifeseqArgumentParser` prints it and exits 2. Messages it
does not recognize keep their first meaningful line.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import typing
from collections.abc import Sequence
from typing import Any

#: Lines of a jsonargparse union report that say nothing about the mistake itself.
_NOISE = (
    re.compile(r"^(?:- )?Does not validate against any of the Union subtypes"),
    re.compile(r"^Subtypes: "),
    re.compile(r"^Errors:$"),
    re.compile(r"^- Expected a <class 'NoneType'>$"),
    re.compile(r"^Given value type: "),
    re.compile(r"^Given value: "),
    re.compile(r"^- Expected a config path but "),
    re.compile(r"^Validation failed: No action for key "),
)
_PARSER_KEY = re.compile(r'Parser key "(?P<key>[^"]+)":?')
_CLASS_PATH = re.compile(r"Problem with given class_path '(?P<path>[^']+)'")
_UNKNOWN_KEY = re.compile(r"Key '(?P<key>[^']+)' is not expected")
_UNKNOWN_NESTED = re.compile(r"does not accept nested key '(?P<key>[^']+)'")
_UNRECOGNIZED = re.compile(
    r"Unrecognized arguments: (?P<args>.*?)(?:\. Got value: .*)?$", re.MULTILINE
)
_REQUIRED = re.compile(r'Key "(?:(?:fit|validate|test|predict)\.)?(?P<key>[^"]+)" is required')
_GIVEN_CLASS = re.compile(r"class_path='(?P<path>[\w.]+)'")
_NO_FILE = re.compile(r"File does not exist: '?(?P<path>[^'\n]+)'?")
_EXPECTED = re.compile(
    r"Expected a <class '(?P<type>[\w.]+)'>\. Got value: (?P<value>.*?)(?:\. Got value: .*)?$"
)
_IMPORT_FAILED = re.compile(
    r"Problem with given class_path '(?P<path>[^']+)':\s*\n\s*(?P<why>[^\n]+)"
)
_OWN_MESSAGE = re.compile(r"^(?:- )?(?P<text>[\w.\[\]]+: (?:expected|must|unknown|no ).*)$")
#: What jsonargparse's message says when a `class_path` does not resolve.
IMPORT_FAILURES = (
    "has no attribute", "No module named", "Import path", "not a subclass", "dot import path",
)  # fmt: skip
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def flags_in_help(help_text: str) -> list[str]:
    """The `--flag` names a parser's help text lists (argparse has no public list of them)."""
    return sorted(set(re.findall(r"(?<![\w-])(--[A-Za-z_][\w.-]*)", help_text)))


def _closest(word: str, options: Sequence[str]) -> str:
    """`; did you mean X?` for the closest option, or ''."""
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {found[0]}?" if found else ""


def _given_flag(argv: Sequence[str], key_parts: Sequence[str]) -> str | None:
    """The `--flag` of `argv` that names the key `key_parts` (its last part, the others in
    order; `init_args` and `config` levels may be left out of `key_parts`)."""
    wanted = [p for p in key_parts if p not in ("init_args", "config")]
    for token in argv:
        if not token.startswith("--") or not wanted:
            continue
        name = token[2:].split("=", 1)[0]
        parts = name.split(".")
        if parts[-1] != wanted[-1]:
            continue
        rest = iter(parts)
        if all(part in rest for part in wanted):
            return f"--{name}"
    return None


def _init_arguments(class_path: str, nested: Sequence[str] = ()) -> list[str]:
    """The keyword arguments `class_path`'s constructor takes, or with `nested` (e.g.
    `["config"]`) the fields of the dataclass that argument holds ([] when unknown)."""
    module, _, name = class_path.rpartition(".")
    try:
        target: Any = getattr(importlib.import_module(module), name)
        for part in nested:
            hints = typing.get_type_hints(
                target.__init__
                if isinstance(target, type) and not dataclasses.is_dataclass(target)
                else target
            )
            hint = hints[part]
            options = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
            target = hint if dataclasses.is_dataclass(hint) else options[0]
        if dataclasses.is_dataclass(target):
            return [f.name for f in dataclasses.fields(target)]
        params = inspect.signature(target).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError, KeyError, IndexError, NameError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _meaningful(message: str) -> list[str]:
    """The lines of `message` that are not union-report noise, stripped."""
    lines = [line.strip() for line in message.splitlines()]
    return [line for line in lines if line and not any(p.match(line) for p in _NOISE)]


def _type_error(lines: Sequence[str], argv: Sequence[str]) -> str | None:
    """`--key: expected an integer, got 'eight'` from the innermost `Parser key` chain."""
    keys: list[str] = []
    for line in lines:
        keys += [found["key"] for found in _PARSER_KEY.finditer(line)]
        expected = _EXPECTED.search(line)
        if expected and keys:
            parts = [p for key in keys for p in key.split(".") if p != "config"]
            flag = _given_flag(argv, parts) or "--" + ".".join(parts)
            kind = _TYPE_NAMES.get(expected["type"], f"a {expected['type']}")
            return f"{flag}: expected {kind}, got {expected['value'].strip()!r}"
    return None


def usage_error(message: str, argv: Sequence[str], flags: Sequence[str]) -> str:
    """One `error: ...` line (two where a list of choices follows) for jsonargparse's
    `message` about the command line `argv`; `flags` are the valid `--flag` names."""
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        given = [t for t in unrecognized["args"].split() if t.startswith("-")]
        flag = (given or [unrecognized["args"].split()[0]])[0].split("=", 1)[0]
        owner = _GIVEN_CLASS.search(message[unrecognized.start() :])
        full = _given_flag(argv, flag[2:].split("."))
        if owner and full and full != flag:  # a key of a zoo class, named relative to it
            *nested, last = flag[2:].split(".")
            allowed = _init_arguments(owner["path"], nested)
            listed = f" (its keys: {', '.join(allowed)})" if allowed else ""
            return (
                f"error: {full}: {owner['path']} has no such key{_closest(last, allowed)}{listed}"
            )
        return f"error: {flag}: no such flag{_closest(flag, flags)}"
    missing = _NO_FILE.search(message)
    if missing:
        return f"error: --config {missing['path'].strip()}: no such file"
    required = _REQUIRED.search(message)
    if required:
        return f"error: --{required['key']} is required"
    lines = _meaningful(message)
    not_imported = _IMPORT_FAILED.search(message)
    if not_imported and any(sign in not_imported["why"] for sign in IMPORT_FAILURES):
        path = not_imported["path"]
        given = [f"{flag} " for flag, value in zip(argv, argv[1:], strict=False) if value == path]
        why = not_imported["why"].strip()
        return f"error: {given[0] if given else ''}{path}: cannot import it ({why})"
    nested = _UNKNOWN_NESTED.search(message)
    if nested:
        key = nested["key"]
        near = _closest(f"--{key}", flags).replace("--", "")
        return f"error: {key}: no such key (in a --config file){near}"
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        key = unknown["key"]
        owners = _CLASS_PATH.findall(message[: unknown.start()])
        owner = owners[-1] if owners else ""
        allowed = _init_arguments(owner) if owner else []
        flag = next(
            (t.split("=", 1)[0] for t in argv if t.startswith("--") and t.split("=", 1)[0]
             .endswith(f".{key}")),
            key,
        )  # fmt: skip
        if not allowed:
            return f"error: {flag}: no such key"
        return (
            f"error: {flag}: {owner} has no argument {key!r}{_closest(key, allowed)} (its "
            f"arguments: {', '.join(allowed)})"
        )
    typed = _type_error(lines, argv)
    if typed:
        return f"error: {typed}"
    for line in lines:
        own = _OWN_MESSAGE.match(line)
        if own and not line.startswith("Parser key"):
            return f"error: {own['text']}"
    for line in reversed(lines):
        if line.startswith("- ") and not line.startswith("- Problem with given"):
            return f"error: {line[2:]}"
    return f"error: {lines[0] if lines else message.strip()}"


def help_hint(prog: str) -> str:
    """The line after a usage error: where the flags and the merged config are shown."""
    return f"(`{prog} --help` lists every flag; --print_config shows the merged config)"
