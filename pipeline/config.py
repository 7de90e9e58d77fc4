"""Typed configuration of the lifelong pipeline, loaded from YAML with strict key checking.

A config file has the sections `input`, `behaviors`, `validation`, `vocab`, `lifelong`,
`targets`, `shards` and `spark`; each maps onto one dataclass below. jsonargparse (the parser
LightningCLI uses) checks the YAML against the dataclasses' type hints: unknown keys and wrong
types are errors (a typo never silently falls back to a default), and every error is one line
naming the offending key. Timestamps (`EpochSeconds`) may be given as epoch seconds or as ISO
dates/times (UTC), e.g. `"2024-11-01"`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import yaml

from lifeseq.pipeline.yaml_files import read_yaml

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

INPUT_FORMATS = (
    "parquet",
    "csv",
    "jsonl",
    "movielens_udata",
    "movielens_dat",
    "recbole_inter",
    "taobao",
)
EVENT_FIELDS = ("user_id", "item_id", "category_id", "behavior", "ts", "value")
REQUIRED_EVENT_FIELDS = ("user_id", "item_id", "ts")


def parse_epoch_seconds(value: int | float | str, key: str) -> int:
    """Convert an int/float epoch-seconds value or an ISO date/time string (UTC) to epoch seconds.

    Raises:
        ValueError: `value` is neither, naming `key`.
    """
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected epoch seconds or an ISO date, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, dt.datetime | dt.date):
        value = value.isoformat()
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return int(parsed.timestamp())
    raise ValueError(
        f"{key}: expected epoch seconds or an ISO date like '2024-11-01', got {value!r}"
    )


class EpochSeconds(int):
    """A timestamp in epoch seconds (UTC).

    In a config it may also be written as an ISO date/time string (`"2024-11-01"`,
    `"2024-11-01T12:00:00+01:00"`) or an unquoted YAML date; the parser converts it with
    `parse_epoch_seconds`. A constructed config holds plain `int`s.
    """


def _str_keys(mapping: dict[Any, Any]) -> dict[str, Any]:
    """`mapping` with its keys as strings (YAML reads `1: click` with an int key)."""
    return {str(key): value for key, value in mapping.items()}


@dataclass(frozen=True)
class InputConfig:
    """Where raw events come from and how their columns map onto the event schema.

    Attributes:
        format: one of `INPUT_FORMATS`.
        columns: event field → source column name. Defaults depend on the format; for `csv`,
            `jsonl` and `parquet` the default is the event field's own name. Map a field to
            null to say the input has no such column (`category_id`, `behavior`, `value`).
        csv_header: whether CSV files have a header row (`csv` only).
        csv_delimiter: field separator for `csv`.
        default_behavior: behavior given to every row when the input has no behavior column
            (MovieLens: `rating`).
        ts_min: earliest valid timestamp (inclusive), epoch seconds or ISO date.
        ts_max: latest valid timestamp (exclusive), epoch seconds or ISO date.
    """

    format: str = "parquet"
    columns: dict[str, str | None] = field(default_factory=dict)
    csv_header: bool = True
    csv_delimiter: str = ","
    default_behavior: str | None = None
    ts_min: EpochSeconds = EpochSeconds(1)
    ts_max: EpochSeconds = EpochSeconds(4102444800)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", _str_keys(self.columns))
        if self.format not in INPUT_FORMATS:
            raise ValueError(f"input.format: expected one of {INPUT_FORMATS}, got {self.format!r}")
        unknown = set(self.columns) - set(EVENT_FIELDS)
        if unknown:
            raise ValueError(
                f"input.columns: unknown event field(s) {sorted(unknown)}; "
                f"expected keys among {EVENT_FIELDS}"
            )
        for name in REQUIRED_EVENT_FIELDS:
            if name in self.columns and self.columns[name] is None:
                raise ValueError(f"input.columns.{name}: this field is required and cannot be null")
        object.__setattr__(self, "ts_min", parse_epoch_seconds(self.ts_min, "input.ts_min"))
        object.__setattr__(self, "ts_max", parse_epoch_seconds(self.ts_max, "input.ts_max"))
        if self.ts_min >= self.ts_max:
            raise ValueError(
                f"input.ts_min ({self.ts_min}) must be smaller than input.ts_max ({self.ts_max})"
            )


@dataclass(frozen=True)
class BehaviorConfig:
    """Which behavior values are valid, and how raw values are renamed.

    Attributes:
        known: canonical behavior names; any other value is quarantined as `unknown_behavior`.
        mapping: raw value → canonical name, applied before the check (Taobao: `pv: view`).
    """

    known: list[str] = field(
        default_factory=lambda: ["view", "click", "cart", "fav", "buy", "rating", "impression"]
    )
    mapping: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mapping", _str_keys(self.mapping))
        if not self.known:
            raise ValueError("behaviors.known: must list at least one behavior")
        bad = {raw: name for raw, name in self.mapping.items() if name not in self.known}
        if bad:
            raise ValueError(
                f"behaviors.mapping: targets {bad} are not in behaviors.known {self.known}"
            )


@dataclass(frozen=True)
class ValidationConfig:
    """Limits on bad input.

    Attributes:
        max_bad_fraction: the job fails (after writing the quarantine) when quarantined rows
            exceed this fraction of the input rows.
    """

    max_bad_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(
                f"validation.max_bad_fraction: expected a value in [0, 1], got {self.max_bad_fraction}"
            )


@dataclass(frozen=True)
class VocabConfig:
    """Vocabulary construction.

    Attributes:
        min_count: raw ids seen fewer times than this map to the OOV id 1.
    """

    min_count: int = 1

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"vocab.min_count: expected >= 1, got {self.min_count}")


@dataclass(frozen=True)
class LifelongConfig:
    """Lifelong table construction.

    Attributes:
        max_history: keep at most this many most recent events per user; the number of dropped
            older events is reported as `counts.truncated` in the manifest.
    """

    max_history: int = 100_000

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ValueError(f"lifelong.max_history: expected >= 1, got {self.max_history}")


@dataclass(frozen=True)
class TargetConfig:
    """Targets (what to predict) and the train/valid/test split.

    Attributes:
        split: `time` (by `valid_start`/`test_start`) or `leave_one_out` (per user: last
            positive event → test, second-to-last → valid, the others after the first → train).
        valid_start: first timestamp of the valid split (`time` only).
        test_start: first timestamp of the test split (`time` only).
        positive_behaviors: behaviors that make an event a positive target (label 1).
        impression_behavior: behavior of logged impressions. Impressions never enter the
            history; an impression of an item the user never had a positive behavior on is a
            logged negative (label 0). Null: the input has no impressions.
        negatives: `auto` (logged impressions when the input has any, else sampled),
            `impressions`, `sampled` or `none`.
        negatives_per_positive: sampled negatives per positive target.
        negative_sampling: `uniform` over the item vocab or `popularity` (count^alpha).
        popularity_alpha: exponent of popularity sampling.
        min_history: a target needs at least this many earlier history events.
        max_targets_per_user: cap on logged targets (positives and logged negatives) per user
            and split, applied by a seeded sample; sampled negatives are added per kept positive.
            Null: unlimited.
        seed: seed of negative sampling and of the per-user target sample.
    """

    split: Literal["time", "leave_one_out"] = "time"
    valid_start: EpochSeconds | None = None
    test_start: EpochSeconds | None = None
    positive_behaviors: list[str] = field(default_factory=lambda: ["click", "cart", "buy"])
    impression_behavior: str | None = None
    negatives: Literal["auto", "impressions", "sampled", "none"] = "auto"
    negatives_per_positive: int = 1
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    popularity_alpha: float = 0.75
    min_history: int = 1
    max_targets_per_user: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("time", "leave_one_out"):
            raise ValueError(
                f"targets.split: expected 'time' or 'leave_one_out', got {self.split!r}"
            )
        if self.split == "time":
            if self.valid_start is None or self.test_start is None:
                raise ValueError(
                    "targets.valid_start and targets.test_start are required for split: time"
                )
            valid = parse_epoch_seconds(self.valid_start, "targets.valid_start")
            test = parse_epoch_seconds(self.test_start, "targets.test_start")
            if valid > test:
                raise ValueError(
                    f"targets.valid_start ({valid}) must not be after targets.test_start ({test})"
                )
            object.__setattr__(self, "valid_start", valid)
            object.__setattr__(self, "test_start", test)
        if not self.positive_behaviors:
            raise ValueError("targets.positive_behaviors: must list at least one behavior")
        if self.negatives not in ("auto", "impressions", "sampled", "none"):
            raise ValueError(
                "targets.negatives: expected auto, impressions, sampled or none, "
                f"got {self.negatives!r}"
            )
        if self.negatives == "impressions" and self.impression_behavior is None:
            raise ValueError(
                "targets.negatives is 'impressions' but targets.impression_behavior is null"
            )
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(
                "targets.negative_sampling: expected 'uniform' or 'popularity', "
                f"got {self.negative_sampling!r}"
            )
        if self.negatives_per_positive < 0:
            raise ValueError(
                f"targets.negatives_per_positive: expected >= 0, got {self.negatives_per_positive}"
            )
        if self.min_history < 0:
            raise ValueError(f"targets.min_history: expected >= 0, got {self.min_history}")
        if self.max_targets_per_user is not None and self.max_targets_per_user < 1:
            raise ValueError(
                f"targets.max_targets_per_user: expected >= 1 or null, got {self.max_targets_per_user}"
            )


@dataclass(frozen=True)
class ShardConfig:
    """WebDataset shard sizing.

    Attributes:
        max_samples: at most this many user samples per shard.
        max_bytes: a shard is closed before it would pass this size (a single larger sample
            gets a shard of its own).
        partitions: Spark partitions (= parallel shard writers) for the shard stage;
            0 picks one per `events_per_partition` events.
        events_per_partition: events per partition when `partitions` is 0.
        compression: `none` writes `shard-NNNNNN.tar` as DESIGN.md fixes; `gzip` writes
            `shard-NNNNNN.tar.gz` (same members; WebDataset decompresses by suffix), about 1.6x
            smaller on the synthetic data (gzip level 3; its random float values do not
            compress).
    """

    max_samples: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    partitions: int = 0
    events_per_partition: int = 2_000_000
    compression: Literal["none", "gzip"] = "none"

    def __post_init__(self) -> None:
        if self.compression not in ("none", "gzip"):
            raise ValueError(
                f"shards.compression: expected 'none' or 'gzip', got {self.compression!r}"
            )
        for name in ("max_samples", "max_bytes", "events_per_partition"):
            if getattr(self, name) < 1:
                raise ValueError(f"shards.{name}: expected >= 1, got {getattr(self, name)}")
        if self.partitions < 0:
            raise ValueError(f"shards.partitions: expected >= 0, got {self.partitions}")


@dataclass(frozen=True)
class SparkConfig:
    """Spark session settings for the embedded session (ignored under spark-submit's own).

    Attributes:
        master: Spark master when lifeseq starts the session itself (`local[2]` by default).
        conf: extra Spark configuration, e.g. `spark.driver.memory: 4g`; numbers become
            strings (`spark.sql.shuffle.partitions: 8` → `"8"`), as Spark takes them.
    """

    master: str = "local[2]"
    conf: dict[str, str | int | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        conf = {key: str(value) for key, value in _str_keys(self.conf).items()}
        object.__setattr__(self, "conf", conf)


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline configuration (one YAML file)."""

    input: InputConfig = field(default_factory=InputConfig)
    behaviors: BehaviorConfig = field(default_factory=BehaviorConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    lifelong: LifelongConfig = field(default_factory=LifelongConfig)
    targets: TargetConfig = field(default_factory=lambda: TargetConfig(split="leave_one_out"))
    shards: ShardConfig = field(default_factory=ShardConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def __post_init__(self) -> None:
        known = set(self.behaviors.known)
        missing = [b for b in self.targets.positive_behaviors if b not in known]
        if missing:
            raise ValueError(
                f"targets.positive_behaviors: {missing} not in behaviors.known {sorted(known)}"
            )
        imp = self.targets.impression_behavior
        if imp is not None and imp not in known:
            raise ValueError(
                f"targets.impression_behavior: {imp!r} not in behaviors.known {sorted(known)}"
            )
        if imp is not None and imp in self.targets.positive_behaviors:
            raise ValueError(
                f"targets.impression_behavior {imp!r} cannot also be a positive behavior"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON/YAML serializable), as stored in the manifest."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """`to_dict()` as YAML, every key with its resolved value (timestamps as epoch seconds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: Top-level sections of a config file.
_SECTIONS = tuple(f.name for f in dataclasses.fields(PipelineConfig))


@functools.cache
def _parser() -> ArgumentParser:
    """The jsonargparse parser of `PipelineConfig` (imported here: executors need not have it)."""
    from jsonargparse import ArgumentParser
    from jsonargparse.typing import register_type

    register_type(
        EpochSeconds,
        serializer=int,
        deserializer=lambda value: EpochSeconds(parse_epoch_seconds(value, "timestamp")),
    )
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_class_arguments(PipelineConfig, fail_untyped=True)
    return parser


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """Build a `PipelineConfig` from a plain mapping (e.g. parsed YAML).

    Raises:
        ValueError: unknown keys, wrong types or inconsistent values, naming the key.
    """
    from jsonargparse import ArgumentError

    if not isinstance(data, dict):
        raise ValueError(f"config: expected a mapping, got {type(data).__name__}")
    data = {key: value for key, value in data.items() if not (key in _SECTIONS and value is None)}
    for key, value in data.items():
        if key in _SECTIONS and not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
    parser = _parser()
    try:
        namespace = parser.parse_object(data)
        parser.validate(namespace, skip_none=False)  # parse_object lets `key: null` through
    except (ArgumentError, TypeError, KeyError) as err:
        message = str(err.args[0]) if isinstance(err, KeyError) else str(err)
        raise ValueError(_short_error(message, data)) from None
    sections = parser.instantiate_classes(namespace)
    return PipelineConfig(**{name: sections[name] for name in _SECTIONS})


def load_config(path: str) -> PipelineConfig:
    """Load a pipeline config YAML file.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: invalid content, naming the file and the key.
    """
    try:
        data = read_yaml(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"pipeline config not found: {path}") from None
    try:
        return config_from_dict({} if data is None else data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


_UNKNOWN_KEY = re.compile(
    r"Key '(?P<key>[^']+)' is not expected"
    r"|Group '(?P<group>[^']+)' does not accept nested key '(?P<sub>[^']+)'"
)
_BAD_VALUE = re.compile(r'Parser key "(?P<key>[^"]+)"')
_GOT_VALUE = re.compile(r"(?:Got|Given) value: (?P<value>.*)$", re.MULTILINE)
_MISSING = object()


def _short_error(message: str, data: dict[str, Any]) -> str:
    """One line naming the key of a jsonargparse error, with the expected type or allowed keys."""
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        key = unknown["key"] or f"{unknown['group']}.{unknown['sub']}"
        return _unknown_key_error(key.split("."), data)
    bad = _BAD_VALUE.search(message)
    if bad is None:
        return message.strip().splitlines()[0]
    key = bad["key"]
    hint, value = _lookup(key, data)
    got = [match["value"] for match in _GOT_VALUE.finditer(message)]
    element = _bad_element(hint, value, got[-1]) if got else None
    if element is not None:
        key, hint, value = f"{key}{element[0]}", element[1], element[2]
    got_text = "" if value is _MISSING else f", got {value!r}"
    return f"{key}: expected {_describe(hint)}{got_text}"


def _unknown_key_error(parts: list[str], data: dict[str, Any]) -> str:
    """`unknown config key(s) [...]` for every unknown key in the mapping that holds `parts`."""
    cls, prefix, mapping = PipelineConfig, [], data
    for part in parts:
        hint = typing.get_type_hints(cls).get(part)
        if not (dataclasses.is_dataclass(hint) and isinstance(mapping.get(part), dict)):
            break
        cls, mapping = hint, mapping[part]
        prefix.append(part)
    names = sorted(f.name for f in dataclasses.fields(cls))
    path = ".".join(prefix)
    unknown = sorted(".".join([*prefix, str(key)]) for key in mapping if key not in names)
    unknown = unknown or [".".join(parts)]
    return f"unknown config key(s) {unknown}; allowed under {path or 'the top level'}: {names}"


def _lookup(key: str, data: dict[str, Any]) -> tuple[Any, Any]:
    """Type hint and given value (or `_MISSING`) of dotted dataclass field path `key`."""
    hint: Any = PipelineConfig
    value: Any = data
    for part in key.split("."):
        hint = typing.get_type_hints(hint).get(part, Any) if dataclasses.is_dataclass(hint) else Any
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
    return hint, value


def _bad_element(hint: Any, value: Any, got: str) -> tuple[str, Any, Any] | None:
    """`(suffix, element hint, element)` of the list item or mapping value jsonargparse rejected.

    jsonargparse names only the list or mapping; its message ends with the rejected element's
    `str()`, `got`, which finds it (a non-string first: `3` is rejected as a str, `"3"` is not).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and isinstance(value, list):
        items = [(f"[{index}]", item) for index, item in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        items = [(f".{name}", item) for name, item in value.items()]
    else:
        return None
    found = sorted(
        (isinstance(item, str), n) for n, (_, item) in enumerate(items) if str(item) == got
    )
    if not found:
        return None
    suffix, item = items[found[0][1]]
    return suffix, args[-1], item


def _describe(hint: Any, nested: bool = False) -> str:
    """Human name of a config type hint: `int or null`, `one of ['a', 'b']`, `a list of str`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is EpochSeconds:
        text = "epoch seconds or an ISO date like '2024-11-01'"
    elif origin is Literal:
        text = f"one of {list(args)}"
    elif origin in (typing.Union, types.UnionType):
        text = " or ".join(_describe(arg) for arg in args)
    elif origin is list:
        text = f"a list of {_describe(args[0], nested=True)}"
    elif origin is dict:
        text = f"a mapping of {_describe(args[0], True)} to {_describe(args[1], True)}"
    elif dataclasses.is_dataclass(hint):
        text = "a mapping"
    elif hint is type(None):
        text = "null"
    else:
        text = getattr(hint, "__name__", str(hint))
    return f"({text})" if nested and " or " in text else text
