"""The feature schema: embedding tables and features derived from `OUT/manifest.json`.

One schema drives the loader, the embedding tables and (later) the export (STYLE.md rule 4).
Table sizes come from the manifest's vocab sizes (which already count ids 0 = padding and
1 = OOV); history and target features share one table per id space:

| table      | rows                       | features                          |
|------------|----------------------------|-----------------------------------|
| `item`     | `manifest.vocab.item`      | `history_item`, `target_item`     |
| `category` | `manifest.vocab.category`  | `history_category`, `target_category` |
| `behavior` | `manifest.vocab.behavior`  | `history_behavior`                |
| `time_gap` | `cfg.time_gap_buckets`     | `history_time_gap`                |
| `position` | `cfg.max_len`              | `position`                        |

`history_time_gap` is not stored in the shards: it depends on the target (the gap between a
history event and the target's request time), so models compute it from the batch's `ts` and
`target_ts` with `bucketize_time_gap`.

Example:
    cfg = FeatureConfig(embedding_dim=32, max_history=10_000, max_len=200)
    schema = FeatureSchema.from_manifest("OUT", cfg)
    schema.tables["item"].num_embeddings      # manifest["vocab"]["item"]
    schema.hash()                             # stable sha256 hex digest
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lifeseq.pipeline import storage
from lifeseq.pipeline.sample_codec import (
    ALLOWED_DTYPES,
    HISTORY_MEMBERS,
    SAMPLE_VIEW_VERSION,
    SCHEMA_VERSION,
    TARGET_MEMBERS,
    VALUE_DTYPE,
    VALUE_MEMBER,
    RecordLayout,
)

#: Upper bound of `FeatureConfig.max_history` (the pipeline keeps at most 10^5 events per user).
MAX_HISTORY_LIMIT = 100_000
#: Feature name → table name.
FEATURE_TABLES: dict[str, str] = {
    "history_item": "item",
    "target_item": "item",
    "history_category": "category",
    "target_category": "category",
    "history_behavior": "behavior",
    "history_time_gap": "time_gap",
    "position": "position",
}
_VOCAB_TABLES = ("item", "category", "behavior")


@dataclass(frozen=True)
class FeatureConfig:
    """Feature settings of a training run (the data module and the models read the same one).

    Attributes:
        embedding_dim: width of every embedding table.
        time_gap_buckets: number of log2 buckets of the gap between a history event and the
            target's request time (see `bucketize_time_gap`); the last bucket holds all gaps
            of at least 2**(time_gap_buckets - 2) seconds. 32 buckets reach ~34 years.
        max_history: CTR view: most recent history events kept per user (1..10^5).
        max_len: generative view: most recent events kept per user sequence; also the size of
            the `position` table.
    """

    embedding_dim: int = 64
    time_gap_buckets: int = 32
    max_history: int = 1024
    max_len: int = 200

    def __post_init__(self) -> None:
        checks = {
            "embedding_dim": (self.embedding_dim, 1, None),
            "time_gap_buckets": (self.time_gap_buckets, 2, 64),
            "max_history": (self.max_history, 1, MAX_HISTORY_LIMIT),
            "max_len": (self.max_len, 1, None),
        }
        for name, (value, low, high) in checks.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"FeatureConfig.{name}: expected an int, got {value!r}")
            if name == "max_history" and value > MAX_HISTORY_LIMIT:
                raise ValueError(
                    f"FeatureConfig.max_history (data.max_history) is {value:,}, above the "
                    f"{MAX_HISTORY_LIMIT:,} events the pipeline keeps per user "
                    f"(lifelong.max_history); set --data.max_history <= {MAX_HISTORY_LIMIT}"
                )
            if value < low or (high is not None and value > high):
                bound = f"[{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"FeatureConfig.{name}: expected a value in {bound}, got {value}")


@dataclass(frozen=True)
class TableSpec:
    """One embedding table.

    Attributes:
        name: table name (`item`, `category`, `behavior`, `time_gap`, `position`).
        num_embeddings: rows, including id 0 (padding) for vocab tables.
        embedding_dim: columns.
        features: features looked up in this table, sorted.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    features: tuple[str, ...]


@dataclass(frozen=True)
class FeatureSchema:
    """Tables and features of a run, derived from a manifest and a `FeatureConfig`.

    Attributes:
        config: the feature config.
        schema_version: version of the per-split sample view the models read
            (`sample_codec.SAMPLE_VIEW_VERSION`; the shard format's own version is the
            manifest's `schema_version`, checked when the schema is read).
        members: member name → dtype string of that view (`expected_members`): what the
            models see, not the narrower dtypes a build stores.
        has_value: whether samples carry the optional `value` member.
        tables: table name → spec, in the order of the table above.
        feature_tables: feature name → table name.
    """

    config: FeatureConfig
    schema_version: int
    members: dict[str, str]
    has_value: bool
    tables: dict[str, TableSpec] = field(default_factory=dict)
    feature_tables: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_manifest(root: str, cfg: FeatureConfig) -> FeatureSchema:
        """Build the schema of the pipeline output `root` (reads `root/manifest.json`).

        Args:
            root: pipeline output directory (local path or any URI `pipeline.storage` reads).
            cfg: feature config.

        Raises:
            FileNotFoundError: `root/manifest.json` does not exist.
            ValueError: the manifest's `schema_version`, `members` or `vocab` do not match what
                `pipeline.sample_codec` defines, naming the field.
        """
        path = storage.join(root, "manifest.json")
        manifest = storage.read_json(path)
        return FeatureSchema.from_manifest_dict(manifest, cfg, source=path)

    @staticmethod
    def from_manifest_dict(
        manifest: dict[str, Any], cfg: FeatureConfig, source: str = "manifest"
    ) -> FeatureSchema:
        """Like `from_manifest`, from an already parsed manifest (`source` names it in errors).

        Raises:
            ValueError: see `from_manifest`.
        """
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(format_version_message(version, source))
        has_value = VALUE_MEMBER in check_members(manifest.get("members"), source)
        vocab = manifest.get("vocab")
        if not isinstance(vocab, dict):
            raise ValueError(f"{source}: vocab: expected a mapping of table sizes, got {vocab!r}")
        sizes: dict[str, int] = {}
        for name in _VOCAB_TABLES:
            size = vocab.get(name)
            if not isinstance(size, int) or isinstance(size, bool) or size < 2:
                raise ValueError(
                    f"{source}: vocab.{name}: expected an int >= 2 (ids 0 and 1 are reserved), "
                    f"got {size!r}"
                )
            sizes[name] = size
        sizes["time_gap"] = cfg.time_gap_buckets
        sizes["position"] = cfg.max_len
        tables = {
            name: TableSpec(
                name=name,
                num_embeddings=rows,
                embedding_dim=cfg.embedding_dim,
                features=tuple(sorted(f for f, t in FEATURE_TABLES.items() if t == name)),
            )
            for name, rows in sizes.items()
        }
        return FeatureSchema(
            config=cfg,
            schema_version=SAMPLE_VIEW_VERSION,
            members=expected_members(has_value),
            has_value=has_value,
            tables=tables,
            feature_tables=dict(FEATURE_TABLES),
        )

    @staticmethod
    def from_vocab(vocab: dict[str, int], cfg: FeatureConfig) -> FeatureSchema:
        """The schema of in-memory samples (no build on disk) with `vocab` table sizes
        (`item`, `category`, `behavior`) and no `value` member: benchmarks and tests.

        Raises:
            ValueError: see `from_manifest`.
        """
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "members": RecordLayout.widest().members(),
            "vocab": dict(vocab),
        }
        return FeatureSchema.from_manifest_dict(manifest, cfg, source="vocab")

    def table_of(self, feature: str) -> TableSpec:
        """The table a feature is looked up in.

        Raises:
            KeyError: unknown feature, naming it and the known ones.
        """
        if feature not in self.feature_tables:
            raise KeyError(f"unknown feature {feature!r}; known: {sorted(self.feature_tables)}")
        return self.tables[self.feature_tables[feature]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (what `hash()` digests)."""
        return {
            "config": asdict(self.config),
            "schema_version": self.schema_version,
            "members": dict(sorted(self.members.items())),
            "tables": {
                name: {"num_embeddings": t.num_embeddings, "embedding_dim": t.embedding_dim}
                for name, t in sorted(self.tables.items())
            },
            "feature_tables": dict(sorted(self.feature_tables.items())),
        }

    def hash(self) -> str:
        """sha256 hex digest of `to_dict()` as canonical JSON: equal for equal schemas, across
        processes and runs (no Python `hash()` randomization)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def expected_members(with_value: bool) -> dict[str, str]:
    """Member name → dtype string of the per-split view models read (`UserSample`)."""
    members = {name: str(dtype) for name, dtype in {**HISTORY_MEMBERS, **TARGET_MEMBERS}.items()}
    if with_value:
        members[VALUE_MEMBER] = str(VALUE_DTYPE)
    return members


def format_version_message(version: Any, source: str) -> str:
    """What to tell a user whose build has shard format `version` instead of this lifeseq's."""
    if version == 1:
        return (
            f"{source}: built with shard format v1 (a copy of each history per split); this "
            f"lifeseq reads format v{SCHEMA_VERSION}. Rebuild it: lifeseq build --config ... "
            "--input ... --output OUT --overwrite"
        )
    return (
        f"{source}: schema_version {version!r} is not the shard format this lifeseq reads "
        f"(v{SCHEMA_VERSION}); rebuild the shards with this lifeseq or update lifeseq"
    )


def check_members(members: Any, source: str = "manifest") -> dict[str, str]:
    """Validate a manifest's `members` (field → stored dtype) against `pipeline.sample_codec`.

    Returns:
        The members as a dict (the optional `value` field included when present).

    Raises:
        ValueError: naming the missing or unknown field, or one stored in a dtype the format
            does not allow.
    """
    if not isinstance(members, dict):
        raise ValueError(
            f"{source}: members: expected a mapping of member → dtype, got {members!r}"
        )
    required = [name for name in ALLOWED_DTYPES if name != VALUE_MEMBER]
    for name in required:
        if name not in members:
            raise ValueError(f"{source}: members.{name}: missing")
    for name, dtype in members.items():
        if name not in ALLOWED_DTYPES:
            raise ValueError(
                f"{source}: members.{name}: unknown member (known: {sorted(ALLOWED_DTYPES)})"
            )
        allowed = [str(d) for d in ALLOWED_DTYPES[name]]
        if dtype not in allowed:
            raise ValueError(
                f"{source}: members.{name}: dtype {dtype!r} is not one sample_codec stores "
                f"({', '.join(allowed)})"
            )
    return dict(members)


def time_gap_boundaries(num_buckets: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bucket boundaries `[1, 2, 4, ..., 2**(num_buckets - 2)]`, shape (num_buckets - 1,), int64."""
    return torch.tensor([1 << k for k in range(num_buckets - 1)], dtype=torch.int64, device=device)


def bucketize_time_gap(
    gap_seconds: torch.Tensor, num_buckets: int = 32, strict: bool = False
) -> torch.Tensor:
    """Log2 buckets of the gap between a history event and a target's request time.

    Formula (exact integer arithmetic, no float rounding):

        bucket(gap) = 0                                       if gap < 1
                      min(1 + floor(log2(gap)), num_buckets - 1)   otherwise

    so gap 0 → 0, 1 → 1, 2..3 → 2, 4..7 → 3, ..., and every gap >= 2**(num_buckets - 2) shares
    the last bucket.

    Negative gaps (an event after the request time) are invalid for a real target history; they
    do arise when a model computes gaps for a whole shared history row against every target and
    masks the events outside each target's prefix. They are clamped to bucket 0 unless
    `strict=True` (which costs a device sync).

    Args:
        gap_seconds: integer tensor of any shape, `target_ts - event_ts` in seconds.
        num_buckets: number of buckets (`FeatureConfig.time_gap_buckets`), >= 2.
        strict: raise on negative gaps instead of clamping them.

    Returns:
        int64 tensor of the same shape, values in [0, num_buckets - 1].

    Raises:
        ValueError: `num_buckets` < 2, a floating-point input, or (strict) a negative gap.
    """
    if num_buckets < 2:
        raise ValueError(f"bucketize_time_gap: num_buckets must be >= 2, got {num_buckets}")
    if gap_seconds.is_floating_point():
        raise ValueError(
            f"bucketize_time_gap: gap_seconds must be an integer tensor, got {gap_seconds.dtype}"
        )
    if strict and gap_seconds.numel() and bool((gap_seconds < 0).any()):
        raise ValueError(
            f"bucketize_time_gap: negative gap {int(gap_seconds.min())} s (history event after "
            "the request time)"
        )
    boundaries = time_gap_boundaries(num_buckets, gap_seconds.device)
    return torch.bucketize(gap_seconds.to(torch.int64), boundaries, right=True)
