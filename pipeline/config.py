"""Typed configuration of the lifelong pipeline, loaded from YAML with strict key checking.

A config file has the sections `input`, `behaviors`, `validation`, `vocab`, `lifelong`,
`targets`, `shards` and `spark`; each maps onto one dataclass below. Unknown keys are errors
(a typo never silently falls back to a default), and every error names the offending key.
Timestamps may be given as epoch seconds or as ISO dates/times (UTC), e.g. `"2024-11-01"`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

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
    ts_min: int = 1
    ts_max: int = 4102444800

    def __post_init__(self) -> None:
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
    valid_start: int | None = None
    test_start: int | None = None
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
        conf: extra Spark configuration, e.g. `spark.driver.memory: 4g`.
    """

    master: str = "local[2]"
    conf: dict[str, str] = field(default_factory=dict)


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


def _build(cls: type, data: Any, path: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys (named with `path`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{path}." if path else ""
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; "
            f"allowed under {path or 'the top level'}: {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        sub_path = f"{path}.{key}" if path else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, sub_path)
        else:
            kwargs[key] = _check_type(value, hint, sub_path)
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, path: str) -> Any:
    """Light type check of a scalar/list/dict config value; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, path)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _check_type(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        hint is int
        and (isinstance(value, str | dt.date))
        and path.endswith(("ts_min", "ts_max", "valid_start", "test_start"))
    ):
        return value
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ValueError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """Build a `PipelineConfig` from a plain mapping (e.g. parsed YAML).

    Raises:
        ValueError: unknown keys, wrong types or inconsistent values, naming the key.
    """
    return _build(PipelineConfig, data, "")


def load_config(path: str) -> PipelineConfig:
    """Load a pipeline config YAML file.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: invalid content, naming the file and the key.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"pipeline config not found: {path}") from None
    try:
        return config_from_dict(data or {})
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
