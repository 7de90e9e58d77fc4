"""End-to-end build on hand-made events: order, splits, no-leak, vocab, dedupe, shards, manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lifeseq.pipeline.build import run_build
from lifeseq.pipeline.build_report import PICTURES, collect_report_stats
from lifeseq.pipeline.sample_codec import SPLITS, validate_sample
from tests.conftest import write_events_parquet
from tests.spark.helpers import build, make_config, read_records, read_split

pytestmark = pytest.mark.spark

A_ROWS = [
    ("alice", "i1", "c1", "view", 100, 1.0),
    ("alice", "i2", "c1", "click", 500, 2.0),
    ("alice", "i3", "c2", "view", 500, 3.0),
    ("alice", "i4", "c2", "click", 1999, 4.0),
    ("alice", "i5", "c3", "buy", 2000, 5.0),
    ("alice", "i6", "c3", "click", 2999, 6.0),
    ("alice", "i7", "c1", "buy", 3000, 7.0),
    ("bob", "i1", "c1", "view", 50, 0.5),
    ("bob", "i2", "c1", "click", 60, 0.5),
    ("bob", "i8", "c4", "buy", 3500, 0.5),
    ("dave", "i1", "c1", "view", 70, 0.1),
]
B_ROWS = [
    ("alice", "i9", "c4", "view", 500, 9.0),
    ("alice", "i1", "c1", "view", 100, 1.0),  # exact duplicate of A_ROWS[0]
    ("bob", "i3", "c2", "click", 1500, 0.5),
    ("carol", "i2", "c1", "view", 100, 1.0),
    ("carol", "i2", "c1", "click", 200, 1.0),
    ("", "i1", "c1", "view", 100, 1.0),  # null_user_id
    ("erin", "i1", "c1", "view", 99_999_999_999, 1.0),  # ts_out_of_range
]
COLUMNS = ("user_id", "item_id", "category_id", "behavior", "ts", "value")
SCHEMA = {
    "user_id": "string",
    "item_id": "string",
    "category_id": "string",
    "behavior": "string",
    "ts": "int64",
    "value": "float32",
}
ITEM_IDS = {"i2": 2, "i1": 3, "i3": 4, "i4": 5, "i5": 6, "i6": 7, "i7": 8, "i8": 9, "i9": 10}


def _write_inputs(directory: Path) -> Path:
    write_events_parquet(
        directory / "a.parquet", [dict(zip(COLUMNS, r, strict=False)) for r in A_ROWS], SCHEMA
    )
    write_events_parquet(
        directory / "b.parquet", [dict(zip(COLUMNS, r, strict=False)) for r in B_ROWS], SCHEMA
    )
    return directory


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """Two identical builds of the hand-made input (for determinism checks)."""
    root = tmp_path_factory.mktemp("build")
    inputs = _write_inputs(root / "in")
    first = build(spark, [inputs], root / "out1")
    second = build(spark, [inputs], root / "out2")
    return root, first.manifest, second.manifest


def _lifelong(spark, out: Path) -> dict[str, dict]:
    return {r["user_id"]: r.asDict() for r in spark.read.parquet(str(out / "lifelong")).collect()}


def test_counts_cover_every_input_row(built):
    _, manifest, _ = built
    counts = manifest["counts"]
    assert counts["events_in"] == 18
    assert counts["quarantined"]["null_user_id"] == 1
    assert counts["quarantined"]["ts_out_of_range"] == 1
    assert counts["duplicates"] == 1
    assert counts["events_valid"] == 15
    assert counts["events_in"] == counts["events_valid"] + counts["duplicates"] + sum(
        counts["quarantined"].values()
    )
    assert manifest["users"] == 4
    assert counts["users_without_targets"] == 1  # dave only viewed


def test_user_order_is_ts_then_file_then_row(spark, built):
    root, _, _ = built
    alice = _lifelong(spark, root / "out1")["alice"]
    expected = ["i1", "i2", "i3", "i9", "i4", "i5", "i6", "i7"]
    assert alice["item"] == [ITEM_IDS[i] for i in expected]
    assert alice["ts"] == [100, 500, 500, 500, 1999, 2000, 2999, 3000]
    assert alice["value"] == pytest.approx([1.0, 2.0, 3.0, 9.0, 4.0, 5.0, 6.0, 7.0])


def test_vocab_ids_by_count_then_raw_id(spark, built):
    root, manifest, _ = built
    items = {
        r["raw_id"]: r["id"] for r in spark.read.parquet(str(root / "out1/vocab/item")).collect()
    }
    assert items == ITEM_IDS
    behaviors = {
        r["raw_id"]: r["id"]
        for r in spark.read.parquet(str(root / "out1/vocab/behavior")).collect()
    }
    assert behaviors == {"click": 2, "view": 3, "buy": 4}  # click/view tie at 6 → by raw id
    categories = {
        r["raw_id"]: (r["id"], r["count"])
        for r in spark.read.parquet(str(root / "out1/vocab/category")).collect()
    }
    assert categories == {"c1": (2, 8), "c2": (3, 3), "c3": (4, 2), "c4": (5, 2)}
    item_cat = {
        r["raw_id"]: r["category_id"]
        for r in spark.read.parquet(str(root / "out1/vocab/item")).collect()
    }
    assert item_cat["i9"] == 5 and item_cat["i3"] == 3
    times = {
        r["raw_id"]: (r["first_ts"], r["last_ts"])
        for r in spark.read.parquet(str(root / "out1/vocab/item")).collect()
    }
    assert times == {"i1": (50, 100), "i2": (60, 500), "i3": (500, 1500), "i4": (1999, 1999),
                     "i5": (2000, 2000), "i6": (2999, 2999), "i7": (3000, 3000),
                     "i8": (3500, 3500), "i9": (500, 500)}  # valid events only  # fmt: skip
    assert manifest["vocab"] == {"item": 11, "category": 6, "behavior": 5}


def test_split_boundaries_and_targets(built):
    root, manifest, _ = built
    out = root / "out1"
    by_split = {
        split: {s.user: s for s in read_split(out, split)} for split in ("train", "valid", "test")
    }
    pos = {
        split: {
            u: [
                (int(i), int(h), int(t))
                for i, h, t, lab in zip(
                    s.targets["target_item"],
                    s.targets["target_hist_len"],
                    s.targets["target_ts"],
                    s.targets["target_label"],
                    strict=False,
                )
                if lab == 1
            ]
            for u, s in samples.items()
        }
        for split, samples in by_split.items()
    }
    assert pos["train"] == {
        "alice": [(ITEM_IDS["i2"], 1, 500), (ITEM_IDS["i4"], 4, 1999)],
        "bob": [(ITEM_IDS["i2"], 1, 60), (ITEM_IDS["i3"], 2, 1500)],
        "carol": [(ITEM_IDS["i2"], 1, 200)],
    }
    assert pos["valid"] == {"alice": [(ITEM_IDS["i5"], 5, 2000), (ITEM_IDS["i6"], 6, 2999)]}
    assert pos["test"] == {"alice": [(ITEM_IDS["i7"], 7, 3000)], "bob": [(ITEM_IDS["i8"], 3, 3500)]}
    for split, info in manifest["splits"].items():
        assert info["samples"] == len(by_split[split])
        assert info["positives"] == sum(len(v) for v in pos[split].values())


def test_no_target_sees_itself_or_the_future(spark, built):
    root, _, _ = built
    out = root / "out1"
    lifelong = _lifelong(spark, out)
    checked = 0
    for split in ("train", "valid", "test"):
        for sample in read_split(out, split):
            validate_sample(sample)
            row = lifelong[sample.user]
            ts = sample.history["ts"]
            for item, cut, t_ts, label in zip(
                sample.targets["target_item"],
                sample.targets["target_hist_len"],
                sample.targets["target_ts"],
                sample.targets["target_label"],
                strict=False,
            ):
                assert np.all(ts[:cut] <= t_ts)
                if label == 1:  # the positive is the event right after its history
                    assert row["item"][cut] == item and row["ts"][cut] == t_ts
                checked += 1
    assert checked > 10


def test_negatives_never_positive_nor_seen(spark, built):
    root, manifest, _ = built
    out = root / "out1"
    lifelong = _lifelong(spark, out)
    negatives = 0
    for split in ("train", "valid", "test"):
        for sample in read_split(out, split):
            seen = set(lifelong[sample.user]["item"])
            labels = sample.targets["target_label"]
            for item, label in zip(sample.targets["target_item"], labels, strict=False):
                if label == 0:
                    negatives += 1
                    assert item not in seen and item >= 2
    positives = sum(info["positives"] for info in manifest["splits"].values())
    assert negatives + manifest["counts"]["negatives_short"] == 2 * positives
    assert negatives == sum(info["negatives"] for info in manifest["splits"].values())


def test_shards_equal_lifelong_table(spark, built):
    root, _, _ = built
    out = root / "out1"
    lifelong = _lifelong(spark, out)
    for split in ("train", "valid", "test"):
        for sample in read_split(out, split):
            row = lifelong[sample.user]
            n = sample.history["item"].shape[0]
            assert n == int(sample.targets["target_hist_len"].max())
            for name in ("item", "category", "behavior", "ts"):
                assert sample.history[name].tolist() == row[name][:n]
            np.testing.assert_allclose(
                sample.history["value"], np.asarray(row["value"][:n], np.float32)
            )


def test_two_runs_are_byte_identical(built):
    root, first, second = built
    assert first["shards"] == second["shards"] and first["shards"]
    assert first["splits"] == second["splits"]
    for shard in first["shards"]:
        data1 = (root / "out1" / "shards" / shard["name"]).read_bytes()
        data2 = (root / "out2" / "shards" / shard["name"]).read_bytes()
        assert data1 == data2
        assert hashlib.sha256(data1).hexdigest() == shard["sha256"]
        assert len(data1) == shard["bytes"]


def test_shard_sizes_respect_max_samples(built):
    _, manifest, _ = built
    shards = manifest["shards"]
    assert all(s["samples"] <= 2 for s in shards)
    assert [s["name"] for s in shards] == [f"shard-{i:06d}.tar" for i in range(len(shards))]


def test_each_history_is_stored_once_and_every_split_reads_it(built):
    """Format v2: one sample per user with targets, the history up to the last event any of
    its targets needs; each split's listing counts the users and targets it holds per shard."""
    root, manifest, _ = built
    records = read_records(root / "out1")
    users = [r.user for r in records]
    assert len(users) == len(set(users)) == sum(s["samples"] for s in manifest["shards"])
    for record in records:
        assert record.history["item"].shape[0] == int(record.targets["target_hist_len"].max())
    for split in ("train", "valid", "test"):
        info = manifest["splits"][split]
        per_shard = {s["name"]: s["splits"][split] for s in manifest["shards"]}
        assert info["shards"] == [
            {"name": name, "samples": c["samples"], "bytes": s["bytes"]}
            for s in manifest["shards"]
            for name, c in [(s["name"], per_shard[s["name"]])]
            if c["samples"]
        ]
        samples = read_split(root / "out1", split)
        assert len(samples) == info["samples"]
        assert sum(s.num_targets for s in samples) == info["targets"]
        assert [s.user for s in samples] == [
            r.user for r in records if (r.targets["target_split"] == SPLITS.index(split)).any()
        ]


def test_output_layout_and_manifest(built):
    root, manifest, _ = built
    out = root / "out1"
    assert sorted(p.name for p in out.iterdir()) == [
        "lifelong",
        "manifest.json",
        "quarantine",
        "report",
        "shards",
        "vocab",
    ]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["schema_version"] == 2
    assert on_disk["config"]["targets"]["valid_start"] == 2000
    assert on_disk["input"]["fingerprint"]["files"] == 2
    assert on_disk["vocab"]["item"] < 256  # so ids are stored as uint8
    assert on_disk["members"]["item"] == "uint8" and on_disk["members"]["value"] == "float32"
    assert on_disk["shard_bytes"] == sum(s["bytes"] for s in on_disk["shards"])


def test_quarantine_keeps_original_columns(spark, built):
    root, _, _ = built
    rows = spark.read.parquet(str(root / "out1" / "quarantine")).collect()
    by_reason = {r["reason"]: r for r in rows}
    assert set(by_reason) == {"null_user_id", "ts_out_of_range"}
    assert by_reason["ts_out_of_range"]["user_id"] == "erin"
    assert by_reason["ts_out_of_range"]["ts"] == "99999999999"
    assert by_reason["null_user_id"]["source_file"].endswith("b.parquet")


def test_refuses_non_empty_output(spark, built):
    root, _, _ = built
    with pytest.raises(FileExistsError, match="--overwrite"):
        build(spark, [root / "in"], root / "out1")


def test_overwrite_replaces_output(spark, tmp_path, built):
    root, first, _ = built
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = build(spark, [root / "in"], out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert result.manifest["shards"] == first["shards"]


def test_vocab_from_maps_new_items_to_oov(spark, tmp_path, built):
    root, _, _ = built
    new = tmp_path / "new"
    rows = [("zed", "i1", "c1", "view", 10, 1.0), ("zed", "NEW", "c9", "click", 20, 1.0)]
    write_events_parquet(
        new / "x.parquet", [dict(zip(COLUMNS, r, strict=False)) for r in rows], SCHEMA
    )
    result = run_build(
        spark, make_config(), [str(new)], str(tmp_path / "out"), vocab_from=str(root / "out1")
    )
    assert result.manifest["counts"]["oov"] == {"item": 1, "category": 1, "behavior": 0}
    assert result.manifest["vocab"]["item"] == 11
    zed = _lifelong(spark, tmp_path / "out")["zed"]
    assert zed["item"] == [ITEM_IDS["i1"], 1]


def test_max_history_keeps_most_recent(spark, tmp_path, built):
    root, _, _ = built
    cfg = make_config(lifelong={"max_history": 3})
    result = build(spark, [root / "in"], tmp_path / "out", cfg)
    alice = _lifelong(spark, tmp_path / "out")["alice"]
    assert alice["item"] == [ITEM_IDS["i5"], ITEM_IDS["i6"], ITEM_IDS["i7"]]
    assert alice["n_events"] == 8 and alice["truncated"] == 5
    # alice 8→3 (5), bob 4→3 (1), carol 2, dave 1
    assert result.manifest["counts"]["truncated"] == 6


def test_gzip_shards_hold_the_same_samples(spark, tmp_path, built):
    root, _, _ = built
    cfg = make_config(shards={"compression": "gzip"})
    first = build(spark, [root / "in"], tmp_path / "gz1", cfg).manifest
    second = build(spark, [root / "in"], tmp_path / "gz2", cfg).manifest
    names = [s["name"] for s in first["shards"]]
    assert names and all(n.endswith(".tar.gz") for n in names)
    assert first["shards"] == second["shards"]  # same sha256: deterministic gzip too
    for split in ("train", "valid", "test"):
        plain = {s.user: s for s in read_split(root / "out1", split)}
        packed = {s.user: s for s in read_split(tmp_path / "gz1", split)}
        assert plain.keys() == packed.keys()
        for user, sample in packed.items():
            for name, array in {**sample.history, **sample.targets}.items():
                expected = {**plain[user].history, **plain[user].targets}[name]
                assert np.array_equal(array, expected), (split, user, name)


def test_min_count_sends_rare_items_to_oov(spark, tmp_path, built):
    root, _, _ = built
    result = build(spark, [root / "in"], tmp_path / "out", make_config(vocab={"min_count": 2}))
    items = {
        r["raw_id"]: r["id"] for r in spark.read.parquet(str(tmp_path / "out/vocab/item")).collect()
    }
    assert items == {"i2": 2, "i1": 3, "i3": 4}
    assert result.manifest["counts"]["oov"]["item"] == 6  # i4..i9 once each
    alice = _lifelong(spark, tmp_path / "out")["alice"]
    assert alice["item"] == [3, 2, 4, 1, 1, 1, 1, 1]


def test_report_pictures_and_summary(built):
    """`OUT/report/`: four non-empty PNGs and a summary.md that links each and gives the
    history-length quantiles of the 4 users (1, 2, 4 and 8 valid events)."""
    root, manifest, _ = built
    report = root / "out1" / "report"
    summary = (report / "summary.md").read_text()
    for name in PICTURES:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (report / name).stat().st_size > 5000
        assert f"]({name})" in summary
    assert "median ≈ 2, p90 ≈ 8, p99 ≈ 8; longest 8." in summary
    assert "1 days with events; busiest day holds 15 events." in summary
    assert f"| events in          | {manifest['counts']['events_in']:,}" in summary


def test_report_stats_bins_and_days(spark):
    lifelong = spark.createDataFrame([(n,) for n in (1, 2, 4, 8, 9, 1000)], "n_events long")
    events = spark.createDataFrame(
        [(ts,) for ts in (0, 86_399, 86_400, 10 * 86_400 + 5)], "ts long"
    )
    stats = collect_report_stats(events, lifelong)
    assert [(round(low, 3), n) for low, n in stats.history_bins] == [
        (1.0, 1), (1.995, 1), (3.981, 1), (7.943, 2), (1000.0, 1)
    ]  # fmt: skip
    assert stats.events_per_day == [(0, 2), (1, 1), (10, 1)]
