"""Tests of the feature schema (`features.schema`): tables from the manifest, the stable hash,
refusal of mismatched manifests, and log time-gap buckets."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lifeseq.features.schema import (
    FeatureConfig,
    FeatureSchema,
    bucketize_time_gap,
    expected_members,
)
from lifeseq.pipeline.sample_codec import SAMPLE_VIEW_VERSION, SCHEMA_VERSION, RecordLayout

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


#: A build's stored dtypes (what its manifest's `members` lists).
RECORDS = RecordLayout.for_build({"item": 5002, "category": 42, "behavior": 6}, 1000, 10**9, False)
RECORDS_WITH_VALUE = RecordLayout.for_build(
    {"item": 5002, "category": 42, "behavior": 6}, 1000, 10**9, True
)


def manifest(with_value: bool = False) -> dict:
    """The fields of a real manifest that the schema reads."""
    return {
        "schema_version": SCHEMA_VERSION,
        "vocab": {"item": 5002, "category": 42, "behavior": 6},
        "members": RECORDS.members() if not with_value else RECORDS_WITH_VALUE.members(),
        "splits": {"train": {"samples": 0, "shards": []}},
    }


def write(root: Path, payload: dict) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(payload))
    return str(root)


def test_tables_from_manifest_vocab_and_config(tmp_path: Path) -> None:
    cfg = FeatureConfig(embedding_dim=16, time_gap_buckets=20, max_history=5000, max_len=50)

    schema = FeatureSchema.from_manifest(write(tmp_path, manifest()), cfg)

    sizes = {name: t.num_embeddings for name, t in schema.tables.items()}
    assert sizes == {"item": 5002, "category": 42, "behavior": 6, "time_gap": 20, "position": 50}
    assert {t.embedding_dim for t in schema.tables.values()} == {16}
    assert schema.tables["item"].features == ("history_item", "target_item")
    assert schema.tables["category"].features == ("history_category", "target_category")
    assert schema.table_of("target_item") is schema.tables["item"]
    assert schema.feature_tables["history_time_gap"] == "time_gap"
    assert schema.schema_version == SAMPLE_VIEW_VERSION and not schema.has_value
    assert schema.members == expected_members(False)  # the view models read, all int64
    with pytest.raises(KeyError, match="'user_age'"):
        schema.table_of("user_age")


def test_value_member_is_optional(tmp_path: Path) -> None:
    schema = FeatureSchema.from_manifest(write(tmp_path, manifest(True)), FeatureConfig())

    assert schema.has_value and schema.members["value"] == "float32"


def test_hash_is_stable_and_changes_with_the_schema(tmp_path: Path) -> None:
    root = write(tmp_path, manifest())
    cfg = FeatureConfig(embedding_dim=8)

    first = FeatureSchema.from_manifest(root, cfg).hash()
    code = (
        "from lifeseq.features.schema import FeatureConfig, FeatureSchema;"
        f"print(FeatureSchema.from_manifest({root!r}, FeatureConfig(embedding_dim=8)).hash())"
    )
    other_process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    ).stdout.strip()
    bigger = manifest()
    bigger["vocab"]["item"] += 1

    narrower = manifest()
    narrower["members"] = RecordLayout.for_build(
        {"item": 5002, "category": 300, "behavior": 6}, 100, 10**9, False
    ).members()

    assert len(first) == 64 and first == other_process
    # How a build stores its ids does not change what a model sees.
    assert FeatureSchema.from_manifest_dict(narrower, cfg).hash() == first
    assert FeatureSchema.from_manifest(root, FeatureConfig(embedding_dim=9)).hash() != first
    assert FeatureSchema.from_manifest_dict(bigger, cfg).hash() != first


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(schema_version=SCHEMA_VERSION + 1), "schema_version 3 is not the"),
        (lambda m: m.update(schema_version=1), r"shard format v1 .* Rebuild it"),
        (lambda m: m.pop("schema_version"), "schema_version None"),
        (lambda m: m["members"].update(item="int32"), r"members\.item: dtype 'int32' is not one"),
        (lambda m: m["members"].update(target_label="float64"), r"members\.target_label"),
        (lambda m: m["members"].pop("ts"), r"members\.ts: missing"),
        (lambda m: m["members"].update(value="float64"), r"members\.value: dtype 'float64'"),
        (lambda m: m["members"].update(dwell="float32"), r"members\.dwell: unknown member"),
        (lambda m: m["vocab"].pop("category"), r"vocab\.category"),
        (lambda m: m["vocab"].update(item=1), r"vocab\.item: expected an int >= 2"),
    ],
)
def test_refuses_manifests_that_differ_from_the_codec(tmp_path: Path, edit, match: str) -> None:
    bad = copy.deepcopy(manifest())
    edit(bad)

    with pytest.raises(ValueError, match=match):
        FeatureSchema.from_manifest(write(tmp_path, bad), FeatureConfig())


def test_missing_manifest_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        FeatureSchema.from_manifest(str(tmp_path / "nope"), FeatureConfig())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_history", 100_001),
        ("max_history", 0),
        ("max_len", 0),
        ("embedding_dim", 0),
        ("time_gap_buckets", 1),
        ("max_len", 2.5),
    ],
)
def test_feature_config_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"FeatureConfig.{field}"):
        FeatureConfig(**{field: value})


def test_feature_config_accepts_lifelong_history() -> None:
    assert FeatureConfig(max_history=100_000).max_history == 100_000


def test_bucketize_time_gap_log2_buckets() -> None:
    gaps = torch.tensor([0, 1, 2, 3, 4, 7, 8, 59, 60, 86_400, 2**29, 2**30, 2**40])

    buckets = bucketize_time_gap(gaps, num_buckets=32)

    assert buckets.tolist() == [0, 1, 2, 2, 3, 3, 4, 6, 6, 17, 30, 31, 31]
    assert buckets.dtype == torch.int64


def test_bucketize_time_gap_clamps_and_keeps_shape() -> None:
    gaps = torch.tensor([[0, 3, 4], [1000, -5, 1]], dtype=torch.int32)

    buckets = bucketize_time_gap(gaps, num_buckets=4)

    assert buckets.tolist() == [[0, 2, 3], [3, 0, 1]]  # -5 clamps to 0; >= 4 is the last bucket


def test_bucketize_time_gap_matches_the_formula_for_random_gaps() -> None:
    gaps = torch.randint(1, 2**40, (2000,), generator=torch.Generator().manual_seed(0))

    buckets = bucketize_time_gap(gaps, num_buckets=64)

    expected = [min(int(g).bit_length(), 63) for g in gaps]  # 1 + floor(log2(g)), exact
    assert buckets.tolist() == expected


def test_bucketize_time_gap_strict_and_bad_input() -> None:
    with pytest.raises(ValueError, match="negative gap -3"):
        bucketize_time_gap(torch.tensor([5, -3]), strict=True)
    with pytest.raises(ValueError, match="integer tensor"):
        bucketize_time_gap(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="num_buckets must be >= 2"):
        bucketize_time_gap(torch.tensor([1]), num_buckets=1)
