"""Incremental builds (`lifeseq build --base`): base(days 1-9) + increment(day 10) equals one
build of days 1-10 (ids mapped through the vocabs), existing ids never change, and a `--base`
that cannot be extended is refused in one line before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from lifeseq.jobs import build_lifelong
from lifeseq.pipeline.sample_codec import SPLITS
from tests.conftest import write_events_parquet
from tests.spark.helpers import BASE_CONFIG, build, make_config, read_records

pytestmark = pytest.mark.spark

DAY = 86_400
#: The increment's period: day 10.
NEW_FROM = 10 * DAY
TARGETS = {"valid_start": 9 * DAY, "test_start": 10 * DAY + DAY // 2, "negatives": "none"}
SCHEMA = {"ts": "int64", "value": "float64"}


def _events() -> tuple[list[dict], list[dict]]:
    """(days 1-9, day 10): five users over 12 items, with equal timestamps, a user seen only on
    day 10, a user without day-10 events, an item first seen on day 10 and a day-10 event that
    repeats a day-9 one exactly."""
    rng = np.random.default_rng(3)
    old, new = [], []
    for user in ("ann", "bob", "cat", "dan"):
        for day in range(1, 11):
            if user == "dan" and day == 10:
                continue
            for k in range(int(rng.integers(1, 4))):
                row = {
                    "user_id": user,
                    "item_id": f"i{int(rng.integers(0, 12))}",
                    "category_id": f"c{int(rng.integers(0, 3))}",
                    "behavior": ["view", "click", "buy"][int(rng.integers(0, 3))],
                    "ts": day * DAY + 600 * int(rng.integers(0, 3)),  # ties within a day
                    "value": float(k),
                }
                (new if day == 10 else old).append(row)
    new.append({"user_id": "eve", "item_id": "i3", "category_id": "c1", "behavior": "view",
                "ts": NEW_FROM + 50, "value": 0.0})  # fmt: skip
    new.append({"user_id": "eve", "item_id": "brand_new", "category_id": "c9",
                "behavior": "click", "ts": NEW_FROM + 60, "value": 1.0})  # fmt: skip
    repeat = next(r for r in reversed(old) if r["user_id"] == "ann")
    new.append(dict(repeat))  # delivered again with the next day's file
    return old, new


@pytest.fixture(scope="module")
def builds(spark, tmp_path_factory):
    """(root, base manifest, increment manifest, full manifest)."""
    root = tmp_path_factory.mktemp("increment")
    old, new = _events()
    write_events_parquet(root / "old" / "day-01-09.parquet", old, SCHEMA)
    write_events_parquet(root / "new" / "day-10.parquet", new, SCHEMA)
    write_events_parquet(root / "all" / "day-01-09.parquet", old, SCHEMA)
    write_events_parquet(root / "all" / "day-10.parquet", new, SCHEMA)
    cfg = make_config(targets=TARGETS, lifelong={"max_history": 20})
    base = build(spark, [root / "old"], root / "base", cfg).manifest
    inc = build(spark, [root / "new"], root / "inc", cfg, base=str(root / "base")).manifest
    full = build(spark, [root / "all"], root / "full", cfg).manifest
    return root, base, inc, full


def _vocab(out: Path) -> dict[str, dict[int, str]]:
    tables = {}
    for name in ("item", "category", "behavior"):
        t = pq.read_table(out / "vocab" / name).to_pydict()
        tables[name] = {**dict(zip(t["id"], t["raw_id"], strict=True)), 1: "<oov>"}
    return tables


def _raw_lifelong(out: Path) -> dict[str, dict]:
    vocab = _vocab(out)
    table = pq.read_table(out / "lifelong").to_pydict()
    rows = {}
    for i, user in enumerate(table["user_id"]):
        rows[user] = {name: [vocab[name][x] for x in table[name][i]] for name in vocab}
        for name in ("ts", "value", "n_events", "truncated"):
            rows[user][name] = table[name][i]
    return rows


def _raw_targets(out: Path, new_only: bool) -> dict[str, list[tuple]]:
    vocab = _vocab(out)
    found = {}
    for record in read_records(out):
        t = record.targets
        rows = [
            (SPLITS[t["target_split"][j]], vocab["item"][int(t["target_item"][j])],
             vocab["category"][int(t["target_category"][j])], int(t["target_ts"][j]),
             float(t["target_label"][j]), int(t["target_hist_len"][j]))
            for j in range(t["target_ts"].size)
            if not new_only or t["target_ts"][j] >= NEW_FROM
        ]  # fmt: skip
        history = [vocab["item"][int(x)] for x in record.history["item"]]
        if rows:
            found[record.user] = [(*row, tuple(history[: row[-1]])) for row in rows]
    return found


def test_the_lifelong_table_equals_one_build_of_all_days(builds):
    root, _, inc, full = builds
    assert _raw_lifelong(root / "inc") == _raw_lifelong(root / "full")
    assert inc["users"] == full["users"] == 5 and inc["users_updated"] == 4  # not dan
    assert inc["counts"]["duplicates_of_base"] == 1
    assert inc["max_user_events"] == full["max_user_events"]


def test_the_new_periods_targets_equal_one_builds_targets_of_those_events(builds):
    root, _, inc, _ = builds
    new_targets = _raw_targets(root / "inc", new_only=False)

    assert new_targets == _raw_targets(root / "full", new_only=True)
    assert "dan" not in new_targets and "eve" in new_targets
    assert all(row[3] >= NEW_FROM for rows in new_targets.values() for row in rows)
    assert inc["splits"]["train"]["samples"] == 0  # day 10 is valid and test only


def test_existing_ids_never_change_and_counts_add_up(builds):
    root, base, inc, full = builds
    before, after, whole = (_vocab(root / name) for name in ("base", "inc", "full"))
    for name in before:
        assert {i: r for i, r in after[name].items() if i in before[name]} == before[name]
        appended = sorted(set(after[name]) - set(before[name]))
        assert appended == list(range(max(before[name]) + 1, max(after[name]) + 1))
        assert sorted(after[name].values()) == sorted(whole[name].values())
    assert after["item"][max(after["item"])] == "brand_new"
    counts, first_ts = {}, {}
    for out in ("inc", "full"):
        t = pq.read_table(root / out / "vocab" / "item").to_pydict()
        counts[out] = dict(zip(t["raw_id"], t["count"], strict=True))
        first_ts[out] = dict(
            zip(t["raw_id"], zip(t["first_ts"], t["last_ts"], strict=True), strict=True)
        )
    assert counts["inc"] == counts["full"]
    assert first_ts["inc"] == first_ts["full"]
    assert None not in {ts for pair in first_ts["inc"].values() for ts in pair}
    assert inc["vocab"]["item"] == base["vocab"]["item"] + 1 == full["vocab"]["item"]
    assert inc["base"]["path"] == str(root / "base") and inc["base"]["chain"] == [
        str(root / "base")
    ]
    assert len(inc["base"]["manifest_sha256"]) == 64


def test_an_increment_of_an_increment_chains_to_both(spark, builds, tmp_path):
    root, _, inc, _ = builds
    write_events_parquet(tmp_path / "day11" / "day-11.parquet", [
        {"user_id": "ann", "item_id": "i1", "category_id": "c1", "behavior": "click",
         "ts": 11 * DAY, "value": 0.0}], SCHEMA)  # fmt: skip
    cfg = make_config(targets=TARGETS, lifelong={"max_history": 20})
    again = build(spark, [tmp_path / "day11"], tmp_path / "out", cfg, base=str(root / "inc"))

    assert again.manifest["base"]["chain"] == [str(root / "base"), str(root / "inc")]
    ann = _raw_lifelong(tmp_path / "out")["ann"]
    assert (
        ann["item"][-1] == "i1"
        and ann["n_events"] == _raw_lifelong(root / "inc")["ann"]["n_events"] + 1
    )


def test_a_base_built_before_first_ts_leaves_its_items_first_time_unknown(spark, builds, tmp_path):
    root, _, _, _ = builds
    legacy = tmp_path / "legacy"
    shutil.copytree(root / "base", legacy)
    vocab = pq.read_table(legacy / "vocab" / "item")
    shutil.rmtree(legacy / "vocab" / "item")
    (legacy / "vocab" / "item").mkdir()
    pq.write_table(
        vocab.drop(["first_ts", "last_ts"]), legacy / "vocab" / "item" / "part-0.parquet"
    )
    cfg = make_config(targets=TARGETS, lifelong={"max_history": 20})
    build(spark, [root / "new"], tmp_path / "out", cfg, base=str(legacy))

    t = pq.read_table(tmp_path / "out" / "vocab" / "item").to_pydict()
    times = dict(zip(t["raw_id"], zip(t["first_ts"], t["last_ts"], strict=True), strict=True))
    assert times.pop("brand_new") == (NEW_FROM + 60, NEW_FROM + 60)
    assert set(times.values()) == {(None, None)}  # the base's items: first event not known


# --- a --base that cannot be extended ------------------------------------------------------------


def _cli(capsys, tmp_path: Path, base: Path, out: Path, *extra: str, **targets) -> tuple[int, str]:
    data = json.loads(json.dumps(BASE_CONFIG))
    data["targets"].update(TARGETS)
    data["targets"].update(targets)
    data["lifelong"] = {"max_history": 20}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(data))
    argv = ["--config", str(config), "--input", str(base.parent / "new"), "--output", str(out),
            "--base", str(base), *extra]  # fmt: skip
    code = build_lifelong.main(argv)
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("incomplete", "is not a complete build (no manifest.json)"),
        ("other_config", "was built with another config: targets.seed is 5 there and 6 here"),
        ("itself", "is the output directory itself"),
        ("with_vocab_from", "--base and --vocab-from: give one"),
    ],
)
def test_a_base_that_cannot_be_extended_is_one_line_and_nothing_is_written(
    builds, tmp_path, capsys, case, message
):
    root, *_ = builds
    base, out, extra, targets = root / "base", tmp_path / "out", [], {}
    if case == "incomplete":
        base = tmp_path / "half"
        (base / "vocab").mkdir(parents=True)  # a build killed before its manifest
    elif case == "other_config":
        targets = {"seed": 6}
    elif case == "itself":
        out = base
    else:
        extra = ["--vocab-from", str(base)]
    manifest_before = (root / "base" / "manifest.json").read_bytes()

    code, output = _cli(capsys, tmp_path, base, out, *extra, **targets)

    assert code == 1 and output.startswith("error: ") and len(output.splitlines()) == 1, output
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()
    assert (root / "base" / "manifest.json").read_bytes() == manifest_before
