"""Readers and validation: every input format, every quarantine reason, the bad-fraction error."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeseq.pipeline.build import BadInputError
from lifeseq.pipeline.readers import read_raw_events
from lifeseq.pipeline.validate import REASONS, tag_reasons, valid_events
from tests.conftest import write_text
from tests.spark.helpers import build, make_config, read_split

pytestmark = pytest.mark.spark

CSV_HEADER = "user_id,item_id,category_id,behavior,ts,value"
GOOD_CSV = [
    "u1,i1,c1,view,100,1.5",
    "u1,i2,,click,2024-01-01T00:00:00,",  # ISO ts, missing category and value are fine
    "u2,i1,c1,buy,150.9,2",  # fractional epoch seconds are floored
]
BAD_CSV = {
    "malformed_record": "u3,i1,c1,view,100",  # one column short
    "null_user_id": "  ,i1,c1,view,100,1",
    "null_item_id": "u3,,c1,view,100,1",
    "bad_ts": "u3,i1,c1,view,yesterday,1",
    "ts_out_of_range": "u3,i1,c1,view,0,1",
    "unknown_behavior": "u3,i1,c1,teleport,100,1",
    "bad_value": "u3,i1,c1,view,100,abc",
}


def test_every_reason_is_tagged_and_no_good_row_is_lost(spark, tmp_path):
    path = write_text(tmp_path / "events.csv", [CSV_HEADER, *GOOD_CSV, *BAD_CSV.values()])
    cfg = make_config(input={"format": "csv"})
    tagged = tag_reasons(
        read_raw_events(spark, [str(path)], cfg.input).df, cfg.input, cfg.behaviors
    )
    rows = tagged.select("raw_user_id", "raw_item_id", "raw_ts", "reason").collect()
    reasons = sorted(r["reason"] for r in rows if r["reason"])
    assert reasons == sorted(REASONS)
    by_line = {
        (r["raw_user_id"] or "").strip()
        + "|"
        + (r["raw_item_id"] or "")
        + "|"
        + (r["raw_ts"] or ""): r["reason"]
        for r in rows
    }
    assert by_line["u3|i1|yesterday"] == "bad_ts"
    assert by_line["u3||100"] == "null_item_id"
    good = {
        (r["user_id"], r["item_id"], r["category_id"], r["behavior"], r["ts"], r["value"])
        for r in valid_events(tagged).collect()
    }
    assert good == {
        ("u1", "i1", "c1", "view", 100, 1.5),
        ("u1", "i2", None, "click", 1704067200, None),
        ("u2", "i1", "c1", "buy", 150, 2.0),
    }


def test_bad_fraction_error_names_reasons_and_examples(spark, tmp_path):
    path = write_text(tmp_path / "events.csv", [CSV_HEADER, *GOOD_CSV, *BAD_CSV.values()])
    cfg = make_config(input={"format": "csv"}, validation={"max_bad_fraction": 0.05})
    out = tmp_path / "out"
    with pytest.raises(BadInputError) as info:
        build(spark, [path], out, cfg)
    message = str(info.value)
    assert "7 of 10 input rows (70.00%) failed validation" in message
    assert "max_bad_fraction = 5.00%" in message
    for reason in REASONS:
        assert f"{reason}: 1" in message
    assert "teleport" in message  # an example row
    assert str(out / "quarantine") in message
    assert spark.read.parquet(str(out / "quarantine")).count() == 7
    assert not (out / "manifest.json").exists() and not (out / "shards").exists()


def test_jsonl_malformed_line_is_quarantined(spark, tmp_path):
    path = write_text(
        tmp_path / "events.jsonl",
        [
            '{"user_id": 1, "item_id": 10, "behavior": "click", "ts": 100}',
            '{"user_id": 1, "item_id": 11, "behavior": "view", "ts": 50}',
            '{"user_id": 1, "item_id": 12, "behavior": "view", "ts": 150',
        ],
    )
    cfg = make_config(input={"format": "jsonl"})
    tagged = tag_reasons(
        read_raw_events(spark, [str(path)], cfg.input).df, cfg.input, cfg.behaviors
    )
    reasons = sorted((r["raw_item_id"] or "-", r["reason"] or "ok") for r in tagged.collect())
    assert reasons == [("-", "malformed_record"), ("10", "ok"), ("11", "ok")]


def test_missing_mapped_column_is_a_clear_error(spark, tmp_path):
    path = write_text(tmp_path / "events.csv", ["uid,iid,ts", "1,2,3"])
    cfg = make_config(
        input={"format": "csv", "columns": {"user_id": "uid", "item_id": "iid", "value": "dwell"}}
    )
    with pytest.raises(ValueError, match=r"source column\(s\) \{'value': 'dwell'\} not found"):
        read_raw_events(spark, [str(path)], cfg.input)


def test_optional_default_columns_may_be_absent(spark, tmp_path):
    path = write_text(tmp_path / "events.csv", ["uid,iid,ts", "1,2,3"])
    cfg = make_config(
        input={
            "format": "csv",
            "columns": {"user_id": "uid", "item_id": "iid"},
            "default_behavior": "view",
        }
    )
    raw = read_raw_events(spark, [str(path)], cfg.input)
    assert raw.columns["category_id"] is None and raw.columns["value"] is None
    assert raw.columns["behavior"] is None
    row = raw.df.first()
    assert (row["raw_user_id"], row["raw_item_id"], row["raw_ts"]) == ("1", "2", "3")


MOVIELENS = [  # user, item, rating, ts; user 1 has a ts tie at 300
    (1, 10, 5, 100),
    (1, 11, 3, 200),
    (1, 12, 4, 300),
    (1, 13, 2, 300),
    (1, 14, 1, 400),
    (2, 10, 4, 50),
    (2, 12, 5, 60),
    (3, 11, 2, 10),
]
LOO_CONFIG = {
    "behaviors": {"known": ["rating"]},
    "targets": {
        "split": "leave_one_out",
        "positive_behaviors": ["rating"],
        "negatives": "none",
        "negatives_per_positive": 0,
    },
}


def _loo_targets(out: Path) -> dict[str, dict[str, list[tuple[int, int]]]]:
    result: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for split in ("train", "valid", "test"):
        for sample in read_split(out, split):
            result.setdefault(split, {})[sample.user] = list(
                zip(
                    sample.targets["target_item"].tolist(),
                    sample.targets["target_hist_len"].tolist(),
                    strict=False,
                )
            )
    return result


@pytest.mark.parametrize("fmt", ["movielens_udata", "movielens_dat", "recbole_inter"])
def test_movielens_formats_leave_one_out(spark, tmp_path, fmt):
    if fmt == "movielens_udata":
        lines = ["\t".join(map(str, r)) for r in MOVIELENS]
    elif fmt == "movielens_dat":
        lines = ["::".join(map(str, r)) for r in MOVIELENS]
    else:
        lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        lines += [f"{u}\t{i}\t{r}.0\t{t}.0" for u, i, r, t in MOVIELENS]
    path = write_text(tmp_path / "ratings.txt", lines)
    cfg = make_config(input={"format": fmt}, **LOO_CONFIG)
    result = build(spark, [path], tmp_path / "out", cfg)
    assert result.manifest["counts"]["events_valid"] == len(MOVIELENS)
    items = {
        r["raw_id"]: r["id"] for r in spark.read.parquet(str(tmp_path / "out/vocab/item")).collect()
    }
    ids = {raw: items[raw] for raw in ("10", "11", "12", "13", "14")}
    targets = _loo_targets(tmp_path / "out")
    # user 1 order: 10, 11, 12, 13 (tie at 300 kept in input order), 14
    assert targets["train"]["1"] == [(ids["11"], 1), (ids["12"], 2)]
    assert targets["valid"]["1"] == [(ids["13"], 3)]
    assert targets["test"]["1"] == [(ids["14"], 4)]
    assert "2" not in targets["train"] and "2" not in targets.get("valid", {})
    assert targets["test"]["2"] == [(ids["12"], 1)]
    assert all("3" not in t for t in targets.values())  # one event: nothing to predict
    assert result.manifest["counts"]["users_without_targets"] == 1
    train = {s.user: s for s in read_split(tmp_path / "out", "train")}
    assert train["1"].history["value"].tolist() == [5.0, 3.0]


def test_taobao_csv_with_behavior_mapping(spark, tmp_path):
    path = write_text(
        tmp_path / "UserBehavior.csv",
        [
            "1,100,7,pv,1511544070",
            "1,101,7,cart,1511544080",
            "1,102,8,buy,1511544090",
            "1,103,8,sleep,1511544095",
        ],
    )
    cfg = make_config(
        input={"format": "taobao", "ts_min": "2017-11-01", "ts_max": "2017-12-31"},
        behaviors={"known": ["view", "cart", "fav", "buy"], "mapping": {"pv": "view"}},
        targets={
            "split": "leave_one_out",
            "positive_behaviors": ["cart", "buy"],
            "negatives": "none",
        },
        validation={"max_bad_fraction": 0.3},
    )
    result = build(spark, [path], tmp_path / "out", cfg)
    assert result.manifest["counts"]["quarantined"]["unknown_behavior"] == 1
    behaviors = {
        r["raw_id"] for r in spark.read.parquet(str(tmp_path / "out/vocab/behavior")).collect()
    }
    assert behaviors == {"view", "cart", "buy"}
    test = read_split(tmp_path / "out", "test")
    assert [s.targets["target_hist_len"].tolist() for s in test] == [[2]]
    valid = read_split(tmp_path / "out", "valid")
    assert [s.targets["target_hist_len"].tolist() for s in valid] == [[1]]
