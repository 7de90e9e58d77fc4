"""Helpers for Spark build tests: run a build with a config dict, read its shards back."""

from __future__ import annotations

import copy
import glob
from pathlib import Path
from typing import Any

import webdataset as wds

from lifeseq.pipeline.build import BuildResult, run_build
from lifeseq.pipeline.config import config_from_dict
from lifeseq.pipeline.sample_codec import UserRecord, UserSample, decode_record, decode_split

BASE_CONFIG: dict[str, Any] = {
    "input": {"format": "parquet"},
    "behaviors": {"known": ["view", "click", "buy", "impression"]},
    "validation": {"max_bad_fraction": 0.5},
    "targets": {
        "split": "time",
        "valid_start": 2000,
        "test_start": 3000,
        "positive_behaviors": ["click", "buy"],
        "negatives": "sampled",
        "negatives_per_positive": 2,
        "seed": 5,
    },
    "shards": {"max_samples": 2, "partitions": 2},
}


def make_config(**overrides: dict[str, Any]) -> Any:
    """BASE_CONFIG with per-section overrides merged in."""
    data = copy.deepcopy(BASE_CONFIG)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def build(
    spark: Any, inputs: list[Path | str], out: Path, cfg: Any = None, **kwargs: Any
) -> BuildResult:
    """Run a build into `out` with `cfg` (default BASE_CONFIG)."""
    return run_build(spark, cfg or make_config(), [str(p) for p in inputs], str(out), **kwargs)


def _raw_samples(out: Path) -> list[dict]:
    urls = sorted(glob.glob(str(out / "shards" / "*.tar*")))
    if not urls:
        return []
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def read_split(out: Path, split: str) -> list[UserSample]:
    """The per-split views of one split (users with targets in it), read back with webdataset
    in shard order."""
    views = (decode_split(raw, split) for raw in _raw_samples(out))
    return [view for view in views if view is not None]


def read_records(out: Path) -> list[UserRecord]:
    """Every stored user record (all splits, whole stored history), in shard order."""
    return [decode_record(raw) for raw in _raw_samples(out)]
