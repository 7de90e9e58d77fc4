"""Tests of the synthetic event generator (`pipeline.synth`) and its CLI (`jobs.synth`)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest

from lifeseq.jobs import synth as synth_job
from lifeseq.pipeline.synth import (
    BEHAVIORS,
    SOURCE_LONG_TERM,
    SynthConfig,
    build_catalog,
    config_field_docs,
    generate_user_events,
    history_lengths,
    user_truth,
    write_synthetic,
)

pytestmark = pytest.mark.unit

SMALL = dict(median_events=150.0, max_events=3000, items=5000, categories=40)
"""Small users and catalog for the write/read tests."""


def _read(out_dir: str) -> pa.Table:
    names = sorted(n for n in os.listdir(out_dir) if n.endswith(".parquet"))
    return pa.concat_tables([pq.read_table(os.path.join(out_dir, n)) for n in names])


def _previous_same_category(category: np.ndarray) -> np.ndarray:
    """(L,) index of the previous event of the same category, -1 for a first occurrence."""
    n = category.shape[0]
    idx = np.arange(n)
    order = np.lexsort((idx, category))
    same = category[order][1:] == category[order][:-1]
    prev = np.full(n, -1)
    prev[order[1:][same]] = order[:-1][same]
    return prev


@pytest.fixture(scope="module")
def users() -> tuple[SynthConfig, list[dict[str, np.ndarray]]]:
    """300 default users (about 0.7M events) with ground-truth sources."""
    cfg = SynthConfig(users=300, seed=11)
    return cfg, [generate_user_events(cfg, i, with_source=True) for i in range(cfg.users)]


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("events", -5),
        ("seed", -1),
        ("items", 10),  # fewer items than the 200 default categories
        ("median_events", 0.0),
        ("length_sigma", -0.1),
        ("min_events", 0),
        ("max_events", 2_000_000),
        ("max_events", 5),  # < min_events
        ("span_days", 0.0),
        ("min_active_fraction", 0.0),
        ("tie_prob", 1.5),
        ("phases", 0),
        ("phase_active_prob", 0.0),
        ("episode_events", 0.5),
        ("long_term_lift", 0.5),
        ("long_term_lift", 10.0),  # 10 * 0.15 > 1
        ("click_rate", -0.1),
        ("buy_rate", 0.95),  # rates sum past 1
        ("noise_prob", float("nan")),
        ("rows_per_file", 0),
        ("categories", 2.5),
        ("value", 1),
    ],
)
def test_bad_parameter_raises_naming_field(field: str, value: object) -> None:
    kwargs = {"users": 10, field: value}
    if field == "events":
        kwargs.pop("users")
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_users_and_events_are_exclusive() -> None:
    with pytest.raises(ValueError, match="users"):
        SynthConfig()
    with pytest.raises(ValueError, match="events"):
        SynthConfig(users=5, events=100)


def test_every_field_is_documented() -> None:
    docs = config_field_docs()
    names = [f.name for f in dataclasses.fields(SynthConfig)]
    assert sorted(docs) == sorted(names)
    assert all(len(docs[n]) > 15 for n in names)
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    docs_files = [os.path.join(root, p) for p in ("docs_fragments/synth.md", "README.md")]
    texts = [open(p).read() for p in docs_files if os.path.exists(p)]
    texts = [t for t in texts if "--long-term-share" in t]
    if not texts:
        pytest.skip("no Markdown documents the lifeseq synth flags")
    missing = [n for n in names if f"`--{n.replace('_', '-')}`" not in texts[0]]
    assert not missing, f"the lifeseq synth docs lack {missing}"


# --- files ------------------------------------------------------------------------------------


def test_deterministic_and_independent_of_file_size(tmp_path) -> None:
    cfg = SynthConfig(users=25, seed=3, **SMALL)
    a = write_synthetic(cfg, str(tmp_path / "a"))
    b = write_synthetic(cfg, str(tmp_path / "b"))
    c = write_synthetic(dataclasses.replace(cfg, rows_per_file=777), str(tmp_path / "c"))
    ta, tb, tc = (_read(str(tmp_path / d)) for d in "abc")
    assert ta.equals(tb)
    assert ta.equals(tc)
    assert a == b
    assert len(c["files"]) > 1 and all(f["rows"] == 777 for f in c["files"][:-1])
    assert sum(f["rows"] for f in c["files"]) == c["events"] == a["events"]
    other = write_synthetic(dataclasses.replace(cfg, seed=4), str(tmp_path / "d"))
    assert not _read(str(tmp_path / "d")).equals(ta) and other["events"] != a["events"]


def test_schema_and_summary(tmp_path) -> None:
    cfg = SynthConfig(users=20, seed=5, **SMALL)
    summary = write_synthetic(cfg, str(tmp_path))
    table = pq.read_table(str(tmp_path / "events-00000.parquet"))
    assert table.schema == pa.schema(
        [
            ("user_id", pa.int64()),
            ("item_id", pa.int64()),
            ("category_id", pa.int64()),
            ("behavior", pa.string()),
            ("ts", pa.int64()),
            ("value", pa.float32()),
        ]
    )
    assert set(table.column("behavior").to_pylist()) <= set(BEHAVIORS)
    assert np.all(table.column("value").to_numpy() > 0)
    for col in ("user_id", "item_id", "category_id"):
        assert table.column(col).to_numpy().min() >= 1
    with open(tmp_path / "_synth.json") as fh:
        on_disk = json.load(fh)
    assert on_disk == summary
    assert summary["users"] == 20 and summary["events"] == table.num_rows
    assert sum(summary["behaviors"].values()) == table.num_rows
    assert summary["config"]["median_events"] == 150.0
    assert summary["files"] == [{"path": "events-00000.parquet", "rows": table.num_rows}]
    # A directory reader skips the _-prefixed summary and sees exactly the events.
    assert pyarrow.dataset.dataset(str(tmp_path), format="parquet").to_table().equals(table)

    no_value = write_synthetic(dataclasses.replace(cfg, value=False), str(tmp_path / "nv"))
    nv = _read(str(tmp_path / "nv"))
    assert "value" not in nv.schema.names and "value" not in no_value["columns"]
    assert nv.equals(table.drop_columns(["value"]))  # the other columns do not change


def test_time_range_order_and_ties(tmp_path) -> None:
    cfg = SynthConfig(users=40, seed=8, **SMALL)
    write_synthetic(cfg, str(tmp_path))
    t = _read(str(tmp_path))
    user = t.column("user_id").to_numpy()
    ts = t.column("ts").to_numpy()
    assert ts.min() >= cfg.end_ts - 730 * 86400 and ts.max() < cfg.end_ts
    assert cfg.start_ts == 1_735_689_600 - 730 * 86400
    assert np.all(np.diff(user) >= 0)  # grouped by user, in id order
    assert np.array_equal(np.unique(user), np.arange(1, 41))
    same_user = user[1:] == user[:-1]
    assert np.all(np.diff(ts)[same_user] >= 0)  # time order within a user
    ties = np.mean(np.diff(ts)[same_user] == 0)
    assert 0.02 < ties < 0.3
    gaps = np.diff(ts)[same_user]
    assert np.median(gaps) < 600  # mostly seconds to minutes inside sessions
    assert np.percentile(gaps, 99) > 3600  # plus long gaps between sessions


def test_item_category_consistent(users) -> None:
    cfg, events = users
    item = np.concatenate([e["item_id"] for e in events])
    category = np.concatenate([e["category_id"] for e in events])
    assert np.array_equal(build_catalog(cfg).category_of(item), category)
    pairs = np.unique(np.stack([item, category]), axis=1)
    assert np.unique(pairs[0]).shape[0] == pairs.shape[1]  # one category per item
    assert item.min() >= 1 and item.max() <= cfg.items
    assert category.min() >= 1 and category.max() <= cfg.categories


def test_events_gives_exact_total(tmp_path) -> None:
    cfg = SynthConfig(events=12_345, seed=2, rows_per_file=5_000, **SMALL)
    summary = write_synthetic(cfg, str(tmp_path))
    t = _read(str(tmp_path))
    assert summary["events"] == t.num_rows == 12_345
    assert [f["rows"] for f in summary["files"]] == [5000, 5000, 2345]
    last = summary["users"] - 1
    assert t.column("user_id").to_numpy()[-1] == last + 1
    full = generate_user_events(cfg, last)
    kept = int(np.sum(t.column("user_id").to_numpy() == last + 1))
    assert summary["truncated_last_user"] == (kept < full["ts"].shape[0])
    assert np.array_equal(t.column("ts").to_numpy()[-kept:], full["ts"][:kept])


def test_refuses_non_empty_output(tmp_path) -> None:
    cfg = SynthConfig(users=3, seed=1, **SMALL)
    write_synthetic(cfg, str(tmp_path))
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic(cfg, str(tmp_path))
    write_synthetic(dataclasses.replace(cfg, rows_per_file=50), str(tmp_path), overwrite=True)
    files = sorted(os.listdir(tmp_path))
    assert "_synth.json" in files and len(files) > 2
    write_synthetic(cfg, str(tmp_path), overwrite=True)  # stale events-NNNNN files removed
    assert sorted(os.listdir(tmp_path)) == ["_synth.json", "events-00000.parquet"]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_synthetic(cfg, str(tmp_path), overwrite=True)


# --- realism ----------------------------------------------------------------------------------


def test_history_lengths_lognormal() -> None:
    cfg = SynthConfig(users=1, seed=0)
    lengths = history_lengths(cfg, 4000)
    assert 850 < np.median(lengths) < 1150
    assert 14_000 < np.percentile(lengths, 99) < 28_000
    assert lengths.min() >= cfg.min_events and lengths.max() <= cfg.max_events
    assert history_lengths(cfg, 5, start=7).tolist() == lengths[7:12].tolist()
    assert user_truth(cfg, 9).length == lengths[9] == generate_user_events(cfg, 9)["ts"].shape[0]
    clipped = history_lengths(dataclasses.replace(cfg, min_events=500, max_events=2000), 500)
    assert clipped.min() == 500 and clipped.max() == 2000


def test_funnel_rates(users) -> None:
    _, events = users
    behavior = np.concatenate([e["behavior"] for e in events])
    rates = np.bincount(behavior, minlength=4) / behavior.shape[0]
    assert rates == pytest.approx([0.85, 0.10, 0.03, 0.02], abs=0.006)


def test_planted_signal(users) -> None:
    cfg, events = users
    in_long_term, positive, from_episode = [], [], []
    for i, e in enumerate(events):
        truth = user_truth(cfg, i)
        in_long_term.append(np.isin(e["category_id"], truth.long_term_categories))
        positive.append(e["behavior"] > 0)
        from_episode.append(e["source"] == SOURCE_LONG_TERM)
    lt, pos, ep = (np.concatenate(x) for x in (in_long_term, positive, from_episode))
    rate_lt, rate_other = pos[lt].mean(), pos[~lt].mean()
    assert rate_lt > 1.5 * rate_other, (rate_lt, rate_other)
    assert pos[ep].mean() > 4 * pos[~ep].mean()
    assert 0.02 < ep.mean() < 0.07  # long_term_share = 0.04


def test_long_term_phases_and_growth(users) -> None:
    cfg, events = users
    truths = [user_truth(cfg, i) for i in range(cfg.users)]
    dormant = 0
    for t in truths:
        assert t.long_term_active.shape == (cfg.phases, t.long_term_categories.shape[0])
        assert t.long_term_active.any(axis=0).all() and t.long_term_active.any(axis=1).all()
        assert np.unique(t.long_term_categories).shape == t.long_term_categories.shape
        dormant += int((~t.long_term_active).any())
    assert dormant > 0.5 * len(truths)
    k = np.array([t.long_term_categories.shape[0] for t in truths])
    n = np.array([t.length for t in truths])
    assert 2 <= np.median(k[(n > 700) & (n < 1400)]) <= 7  # a few at the median length
    assert np.median(k[n > 5000]) > 2 * np.median(k[n < 1000])  # heavy users have more


def _long_gap_fractions(cfg: SynthConfig, num_users: int) -> tuple[float, float]:
    """Among click/buy events of users with >= 10k events that repeat a category: the fraction
    whose category's previous event is > 1000 and > 100 events earlier."""
    lengths = history_lengths(cfg, num_users)
    gaps = []
    for i in np.flatnonzero(lengths >= 10_000):
        e = generate_user_events(cfg, int(i))
        prev = _previous_same_category(e["category_id"])
        keep = np.isin(e["behavior"], [1, 3]) & (prev >= 0)
        gaps.append(np.flatnonzero(keep) - prev[keep])
    gap = np.concatenate(gaps)
    return float(np.mean(gap > 1000)), float(np.mean(gap > 100))


def test_returns_after_long_gaps() -> None:
    cfg = SynthConfig(users=1, seed=0)
    over_1000, over_100 = _long_gap_fractions(cfg, 400)
    assert over_1000 > 0.04, over_1000  # measured ~0.07
    assert over_100 > 0.15, over_100  # measured ~0.20: a last-100 model cannot see these
    control = _long_gap_fractions(dataclasses.replace(cfg, long_term_share=0.0), 400)
    assert over_1000 > 1.5 * control[0] and over_100 > 1.5 * control[1]


def test_zipf_skew(users) -> None:
    cfg, events = users
    item = np.concatenate([e["item_id"] for e in events])
    category = np.concatenate([e["category_id"] for e in events])
    item_counts = np.sort(np.bincount(item, minlength=cfg.items + 1)[1:])[::-1]
    top = item_counts[: cfg.items // 100].sum() / item.shape[0]
    assert top > 0.3, top  # top 1% of items get > 30% of events
    assert item_counts[0] > 100 * max(np.median(item_counts), 1)
    cat_counts = np.sort(np.bincount(category, minlength=cfg.categories + 1)[1:])[::-1]
    assert cat_counts[0] > 10 * np.median(cat_counts)
    catalog = build_catalog(cfg)
    sizes = np.diff(catalog.offsets)
    assert sizes.sum() == cfg.items and sizes.min() >= 1 and sizes.max() > 20 * np.median(sizes)


# --- CLI --------------------------------------------------------------------------------------


def test_cli(tmp_path, capsys) -> None:
    out = str(tmp_path / "ev")
    argv = ["--out", out, "--users", "6", "--seed", "1", "--median-events", "80", "--items", "900"]
    assert synth_job.main(argv + ["--no-value", "--end-ts", "2024-06-01"]) == 0
    assert "6 users" in capsys.readouterr().out
    with open(os.path.join(out, "_synth.json")) as fh:
        summary = json.load(fh)
    assert summary["config"]["value"] is False and summary["config"]["items"] == 900
    assert summary["config"]["end_ts"] == 1_717_200_000
    assert synth_job.main(argv) == 1  # non-empty --out
    assert "overwrite" in capsys.readouterr().err
    assert synth_job.main(argv + ["--overwrite"]) == 0
    assert synth_job.main(argv + ["--overwrite", "--tie-prob", "2"]) == 2
    assert "tie_prob" in capsys.readouterr().err
    assert synth_job.main(["--out", out, "--users", "2", "--events", "9", "--overwrite"]) == 2
