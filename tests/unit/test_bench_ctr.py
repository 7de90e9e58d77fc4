"""Pure helpers of the lifelong CTR benchmark (`jobs.bench_ctr`); the benchmark itself never runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lifeseq.jobs import bench_ctr, ctr_eval

pytestmark = pytest.mark.unit

# A CSVLogger file as Lightning writes it: one column per metric, empty where not logged.
FIT_CSV = """\
epoch,step,train/loss,train/samples_per_s,val/auc,val/gauc
0,0,0.69,100.0,,
0,9,0.68,300.0,,
0,19,0.66,500.0,,
0,29,0.65,700.0,,
0,39,0.60,900.0,,
0,39,,,0.71,0.70
"""
TEST_CSV = """\
epoch,step,test/auc,test/gauc,test/gauc_skipped_users,test/gauc_users,test/logloss,test/loss
0,0,0.75,0.72,3.0,41.0,0.61,0.62
"""


def test_read_metrics_csv_skips_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(FIT_CSV)
    series = bench_ctr.read_metrics_csv(path)
    assert series["train/samples_per_s"] == [
        (0, 100.0), (9, 300.0), (19, 500.0), (29, 700.0), (39, 900.0)
    ]  # fmt: skip
    assert series["val/auc"] == [(39, 0.71)]
    assert "epoch" not in series and "step" not in series


def test_train_throughput_drops_the_first_tenth_of_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(FIT_CSV)
    series = bench_ctr.read_metrics_csv(path)
    # 40 steps: steps < 4 are left out -> median of 300, 500, 700, 900.
    assert bench_ctr.train_throughput(series, total_steps=40) == 600.0
    # 400 steps: none is past step 40 -> every logged value.
    assert bench_ctr.train_throughput(series, total_steps=400) == 500.0
    assert bench_ctr.train_throughput({}, total_steps=40) is None


def test_train_throughput_reads_lightnings_keys_before_the_old_one() -> None:
    device = [(9, 100.0), (19, 120.0)]
    job = [(9, 200.0), (19, 240.0)]
    two_ranks = {"train/device/samples_per_sec": device, "train/samples_per_sec": job}
    assert bench_ctr.train_throughput(two_ranks, total_steps=20) == 220.0  # the job's rate
    one_rank = {"train/device/samples_per_sec": device, "train/samples_per_s": [(9, 1.0)]}
    assert bench_ctr.train_throughput(one_rank, total_steps=20) == 110.0


def test_final_test_metrics(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(TEST_CSV)
    metrics = bench_ctr.final_test_metrics(bench_ctr.read_metrics_csv(path))
    assert metrics == {
        "auc": 0.75, "gauc": 0.72, "logloss": 0.61, "gauc_users": 41.0, "gauc_skipped_users": 3.0,
    }  # fmt: skip


def test_newest_csv_picks_the_highest_version(tmp_path: Path) -> None:
    for version, text in ((0, FIT_CSV), (1, TEST_CSV), (10, TEST_CSV)):
        directory = tmp_path / "logs" / "csv" / f"version_{version}"
        directory.mkdir(parents=True)
        (directory / "metrics.csv").write_text(text)
    (tmp_path / "logs" / "csv" / "version_11").mkdir()  # no metrics.csv yet
    assert bench_ctr.newest_csv(tmp_path).parent.name == "version_10"
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        bench_ctr.newest_csv(tmp_path / "missing")


@pytest.mark.parametrize("length", [1, 50])
def test_latency_batch_is_one_user_with_whole_history_windows(length: int) -> None:
    vocab = {"item": 500, "category": 20, "behavior": 6}
    batch = bench_ctr.latency_batch(vocab, length, targets=100, seed=3)
    assert batch.num_users == 1
    assert batch.num_targets == 100
    assert batch.history["item"].values.shape == (length,)
    assert batch.history["item"].lengths.tolist() == [length]
    assert torch.equal(batch.target_hist_start, torch.zeros(100, dtype=torch.int64))
    assert torch.equal(batch.target_hist_len, torch.full((100,), length, dtype=torch.int64))
    assert torch.equal(batch.target_user, torch.zeros(100, dtype=torch.int64))
    ts = batch.history["ts"].values
    assert bool((ts[1:] > ts[:-1]).all())
    assert bool((batch.target_ts > ts[-1]).all())
    for table, key in (("item", "item"), ("category", "category"), ("behavior", "behavior")):
        ids = batch.history[key].values
        assert int(ids.min()) >= 2 and int(ids.max()) < vocab[table]
    assert int(batch.target_item.min()) >= 2 and int(batch.target_item.max()) < vocab["item"]


def test_latency_batch_runs_through_a_model() -> None:
    """The batch is a valid model input (fresh tiny DIN + TWIN, torch backend)."""
    import functools

    from lifeseq.models.ctr import CtrRecommender
    from lifeseq.models.interfaces import ModelDims
    from lifeseq.models.zoo.ctr.lifelong import LifelongCtr, LifelongCtrConfig
    from lifeseq.models.zoo.long_term.twin import Twin, TwinConfig

    batch = bench_ctr.latency_batch({"item": 50, "category": 5, "behavior": 6}, 30, targets=100)
    dims = ModelDims(item_rows=50, category_rows=5, behavior_rows=6, embedding_dim=4,
                     max_history=32, backend="torch")  # fmt: skip
    twin = functools.partial(Twin, config=TwinConfig(top_k=4, chunk=16))
    for long_term in (None, twin):
        factory = functools.partial(
            LifelongCtr, config=LifelongCtrConfig(short_term_len=8), long_term=long_term
        )
        with torch.no_grad():
            logits = CtrRecommender(dims, factory).eval()(batch).logits
        assert logits.shape == (100,)


def test_models_are_the_config_files() -> None:
    """`MODELS`: every `configs/ctr/*.yaml` but the base; `config_args` passes the base first."""
    files = sorted(p.stem for p in bench_ctr.MODEL_CONFIGS.glob("*.yaml"))
    assert sorted(bench_ctr.MODELS) == [name for name in files if name != "base"]
    assert bench_ctr.MODELS[0] == "din"
    assert {"din", "sim_hard", "sim_soft", "eta", "twin", "full"} <= set(bench_ctr.MODELS)
    base, twin = bench_ctr.BASE_CONFIG, bench_ctr.MODEL_CONFIGS / "twin.yaml"
    assert bench_ctr.config_args("twin") == ["--config", str(base), "--config", str(twin)]


@pytest.mark.parametrize("name", ["din", "twin"])
def test_build_model_follows_the_config(name: str, tmp_path: Path) -> None:
    """`build_model`: a fresh torch-backend model of the config for a build's vocabulary, which
    scores a latency batch."""
    from lifeseq.pipeline.sample_codec import SCHEMA_VERSION, RecordLayout

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "members": RecordLayout.widest().members(),
        "vocab": {"item": 40, "category": 6, "behavior": 5},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model = bench_ctr.build_model(name, tmp_path).eval()
    assert (model.dims.item_rows, model.dims.category_rows, model.dims.backend) == (40, 6, "torch")
    assert (model.dense.long_term is None) == (name == "din")
    vocab = {"item": 40, "category": 6, "behavior": 5}
    with torch.no_grad():
        logits = model(bench_ctr.latency_batch(vocab, 20, targets=10)).logits
    assert logits.shape == (10,) and bool(torch.isfinite(logits).all())


def _quality(auc: float, far: float, seeds: int = 1) -> dict:
    one = {"mean": auc, "sd": 0.01 if seeds > 1 else 0.0, "n": seeds}
    return {
        "seeds": seeds, "errors": 0, "auc": one, "gauc": {**one, "mean": auc - 0.01},
        "logloss": {**one, "mean": 0.5}, "far_auc": {**one, "mean": far},
        "train_samples_per_s": {"mean": 1234.4, "sd": 1.0, "n": seeds},
        "auc_by_gap": {name: {**one, "mean": auc} for _, _, name in ctr_eval.GAP_BUCKETS},
    }  # fmt: skip


def test_markdown_table_oracle_deltas_gap_closed_and_ratio() -> None:
    models = {
        "din": {"quality": _quality(0.70, 0.60),
                "latency_ms_per_target": {"1000": 0.01, "10000": 0.012, "100000": 0.02}},
        "twin": {"quality": _quality(0.725, 0.70, seeds=3),
                 "latency_ms_per_target": {"1000": 0.05, "10000": 0.2}},
        "full": {"quality": _quality(0.73, 0.75), "latency_ms_per_target": {"10000": 1.0}},
        "eta": {"quality": {"seeds": 0, "errors": 1}},
    }  # fmt: skip
    oracle = {
        "auc": 0.95, "gauc": 0.94, "logloss": 0.2, "far_auc": 0.80,
        "auc_by_gap": {name: 0.9 for _, _, name in ctr_eval.GAP_BUCKETS},
    }  # fmt: skip
    payload = {
        "models": models,
        "oracle": {**oracle, "monte_carlo_auc": 0.951},
        "dataset": {
            "events_valid": 12345,
            "users": 300,
            "splits": {
                "train": {"samples": 290, "targets": 9000, "positives": 4500},
                "valid": {"samples": 200, "targets": 800, "positives": 400},
                "test": {"samples": 210, "targets": 900, "positives": 450},
            },
        },
    }
    payload["summary"] = bench_ctr.summarize(payload)
    assert payload["summary"]["far_gap_closed_twin"] == 0.5  # (0.70 - 0.60) / (0.80 - 0.60)
    assert payload["summary"]["far_gap_closed_full"] == 0.75
    assert payload["summary"]["auc_minus_din_twin"] == 0.025
    assert payload["summary"]["full_over_twin_ms_per_target_10000"] == 5.0
    assert payload["summary"]["oracle_minus_best_model_auc"] == pytest.approx(0.22)
    lines = bench_ctr.markdown(payload).splitlines()
    assert lines[0].startswith(
        "| model | test AUC | GAUC | logloss | AUC gap < 100 | AUC gap 100–999 | AUC gap ≥ 1K "
        "| AUC gap never | far AUC"
    )
    assert lines[0].endswith("| far AUC | far gap closed | train targets/s | ms/target @1K "
                             "| ms/target @10K | ms/target @100K |")  # fmt: skip
    assert lines[2] == (
        "| oracle | 0.9500 | 0.9400 | 0.2000 | 0.9000 | 0.9000 | 0.9000 | - | 0.8000 | 1 | - "
        "| - | - | - |"
    )
    assert lines[3] == (
        "| din | 0.7000 | 0.6900 | 0.5000 | 0.7000 | 0.7000 | 0.7000 | - | 0.6000 | 0 | 1,234 "
        "| 0.010 | 0.012 | 0.020 |"
    )
    assert lines[4].startswith("| twin | 0.7250 ± 0.0100 | 0.7150 ± 0.0100 |")
    assert "| 0.7000 ± 0.0100 | 0.50 | 1,234 | 0.050 | 0.200 | - |" in lines[4]
    assert "| eta | error | - |" in lines[6]
    text = "\n".join(lines)
    assert "dataset: 12,345 events, 300 users; targets train 9,000 (4,500 positive)," in text
    assert "oracle AUC on the test targets 0.9500; on a Monte-Carlo replica" in text
    assert "AUC - DIN-100 (means): twin +0.0250, full +0.0300" in lines
    assert "full / twin latency per target @10K: 5.00x" in lines
    assert "oracle AUC minus the best model's: +0.2200" in lines


def test_markdown_without_baseline_oracle_or_latency() -> None:
    payload = {"models": {"twin": {"quality": _quality(0.7, 0.6)}}}
    payload["summary"] = bench_ctr.summarize(payload)
    text = bench_ctr.markdown(payload)
    assert "| twin | 0.7000 | 0.6900 | 0.5000 |" in text
    assert "DIN-100" not in text and "full / twin" not in text and "oracle" not in text


def test_aggregate_mean_and_sd_over_seeds_skips_failed_runs() -> None:
    runs = {
        "0": {"auc": 0.8, "far_auc": 0.7, "auc_by_gap": {"a": 0.9}},
        "1": {"auc": 0.9, "far_auc": None, "auc_by_gap": {"a": 0.7}},
        "2": {"error": "fit exited 1"},
    }
    q = bench_ctr.aggregate(runs)
    assert (q["seeds"], q["errors"]) == (2, 1)
    assert q["auc"]["mean"] == pytest.approx(0.85) and q["auc"]["sd"] == pytest.approx(
        0.0707, abs=1e-4
    )
    assert q["far_auc"] == {"mean": 0.7, "sd": 0.0, "n": 1}
    assert q["auc_by_gap"]["a"]["mean"] == pytest.approx(0.8)
    assert bench_ctr.gap_closed(0.7, 0.6, 0.6) is None  # no gap to close


def test_plot_writes_a_png(tmp_path: Path) -> None:
    payload = {
        "models": {"din": {"quality": _quality(0.7, 0.6)}, "twin": {"quality": _quality(0.8, 0.7, 3)}},
        "oracle": {"auc_by_gap": {name: 0.9 for _, _, name in ctr_eval.GAP_BUCKETS}},
        "gap_targets": {name: 10 for _, _, name in ctr_eval.GAP_BUCKETS},
    }  # fmt: skip
    path = bench_ctr.plot(payload, tmp_path / "auc_by_gap.png")
    assert path.stat().st_size > 5000


def test_dataset_reuse_check(tmp_path: Path) -> None:
    params = bench_ctr.dataset_params(quick=True)
    assert params["synth"] == {
        "seed": 7,
        "users": 300,
        "max_events": 5000,
        "long_term_interests": 16,
        "long_term_share": 0.2,
    }
    assert params["build_config"] == "configs/pipeline/ctr_bench.yaml"
    assert not bench_ctr.dataset_is_current(tmp_path, params)  # nothing built
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "manifest.json").write_text("{}")
    assert not bench_ctr.dataset_is_current(tmp_path, params)  # no dataset.json
    (tmp_path / "dataset.json").write_text(json.dumps(params))
    vocab = tmp_path / "build" / "vocab" / "item"
    vocab.mkdir(parents=True)
    columns = {"raw_id": ["a"], "id": [2], "count": [1], "category_id": [2]}
    pq.write_table(pa.table(columns), vocab / "part-0.parquet")
    assert not bench_ctr.dataset_is_current(tmp_path, params)  # built before the times
    pq.write_table(
        pa.table({**columns, "first_ts": [10], "last_ts": [20]}), vocab / "part-0.parquet"
    )
    assert bench_ctr.dataset_is_current(tmp_path, params)
    assert not bench_ctr.dataset_is_current(tmp_path, bench_ctr.dataset_params(quick=False))
    (tmp_path / "dataset.json").write_text("{not json")
    assert not bench_ctr.dataset_is_current(tmp_path, params)
    (tmp_path / "dataset.json").write_text(json.dumps(params))
    (tmp_path / "build" / "manifest.json").unlink()  # an interrupted build
    assert not bench_ctr.dataset_is_current(tmp_path, params)


def test_new_items_are_held_out_for_the_span_the_test_scores_after_training() -> None:
    manifest = {"config": {"targets": {"valid_start": 1_000_000}}}
    targets = ctr_eval.CtrTargets(
        user=np.array(["u", "v"], dtype=object), item=np.array([2, 3]),
        ts=np.array([1_000_000 + 86_400, 1_000_000 + 30 * 86_400 + 1]),
        label=np.array([1.0, 0.0], np.float32), gap=np.array([-1, -1]),
    )  # fmt: skip
    flags = bench_ctr.new_item_flags(manifest, targets)
    assert flags == ("--model.init_args.cold_items.new_item_days", "31")
    assert bench_ctr.new_item_flags({"config": {"targets": {}}}, targets) == ()  # not by time
    assert bench_ctr.run_variant(flags) == "" and bench_ctr.run_variant([]) == ""
    assert bench_ctr.run_variant(list(bench_ctr.NO_COLD_ITEMS)) == "-no-cold"


def test_dataset_summary() -> None:
    manifest = {
        "counts": {"events_in": 10, "events_valid": 9, "users_without_targets": 1},
        "users": 3,
        "max_user_events": 5,
        "vocab": {"item": 7, "category": 4, "behavior": 6},
        "splits": {
            split: {"samples": 2, "targets": 4, "positives": 2, "negatives": 2, "shards": []}
            for split in ("train", "valid", "test")
        },
    }
    summary = bench_ctr.dataset_summary(manifest)
    assert summary["events_valid"] == 9 and summary["users"] == 3
    assert summary["splits"]["test"] == {"samples": 2, "targets": 4, "positives": 2}


def test_train_commands() -> None:
    fit, test = bench_ctr.train_commands("twin", Path("/b"), Path("/r/twin"), 20, seed=2)
    assert fit[fit.index("--seed_everything") + 1] == "2"
    assert fit[fit.index("--model.init_args.seed") + 1] == "2"
    assert fit[fit.index("--data.seed") + 1] == "2" and "--data.seed" in test
    assert fit[2:7] == ["fit", *bench_ctr.config_args("twin")]
    assert fit[4].endswith("configs/ctr/base.yaml") and fit[6].endswith("configs/ctr/twin.yaml")
    assert fit[-4:] == ["--trainer.max_steps", "20", "--trainer.val_check_interval", "20"]
    assert "--trainer.limit_val_batches" not in fit
    assert test[2] == "test" and test[-2:] == ["--ckpt_path", "/r/twin/checkpoints/last.ckpt"]
    fit, _ = bench_ctr.train_commands("din", Path("/b"), Path("/r/din"), None)
    epoch = fit.index("--trainer.max_epochs")
    assert fit[epoch : epoch + 4] == ["--trainer.max_epochs", "1", "--trainer.max_steps", "-1"]


def test_model_list_rejects_unknown_names() -> None:
    assert bench_ctr._model_list("din, twin") == ["din", "twin"]
    with pytest.raises(argparse.ArgumentTypeError, match="subset"):
        bench_ctr._model_list("din,transformer")


def test_stored_results_are_reused_only_for_the_same_spec(tmp_path: Path) -> None:
    params = bench_ctr.dataset_params(quick=True)
    spec = bench_ctr.run_spec("twin", params, None, 1)
    assert bench_ctr.stored_result(tmp_path, spec) is None
    bench_ctr.store_result(tmp_path, spec, {"auc": 0.9})
    assert bench_ctr.stored_result(tmp_path, spec) == {"auc": 0.9}
    assert bench_ctr.stored_result(tmp_path, bench_ctr.run_spec("twin", params, 50, 1)) is None
    other = bench_ctr.dataset_params(quick=False)
    assert bench_ctr.stored_result(tmp_path, bench_ctr.run_spec("twin", other, None, 1)) is None
    bench_ctr.store_result(tmp_path, bench_ctr.run_spec("din", params, None, 1), {"error": "x"})
    assert bench_ctr.stored_result(tmp_path, bench_ctr.run_spec("din", params, None, 1)) is None


def test_runs_of_other_lengths_are_stored_apart(tmp_path: Path) -> None:
    params = bench_ctr.dataset_params(quick=True)
    epoch, steps = (
        bench_ctr.run_spec("twin", params, None, 0),
        bench_ctr.run_spec("twin", params, 480, 0),
    )
    bench_ctr.store_result(tmp_path, epoch, {"auc": 0.9})
    bench_ctr.store_result(tmp_path, steps, {"auc": 0.8})
    assert bench_ctr.stored_result(tmp_path, epoch) == {"auc": 0.9}
    assert bench_ctr.stored_result(tmp_path, steps) == {"auc": 0.8}
    assert bench_ctr.result_path(tmp_path, steps).name.startswith("twin-s0-480steps-")


def test_cold_item_metrics_split_untrained_from_known_targets() -> None:
    label = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1, 0], dtype=np.float32)
    targets = ctr_eval.CtrTargets(
        user=np.array(["u"] * 10, dtype=object), item=np.arange(2, 12), ts=np.arange(10),
        label=label, gap=np.full(10, -1),
    )  # fmt: skip
    probs = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.6, 0.4, 0.3, 0.95, 0.05])
    untrained = np.zeros(10, dtype=bool)
    untrained[[5, 6, 8]] = True
    unknown = np.full(10, 0.5)
    got = bench_ctr.cold_item_metrics(probs, targets, untrained, unknown)
    assert got["cold_targets"] == 3
    assert got["cold_positive_rate"] == pytest.approx(2 / 3)
    assert got["cold_mean_prob"] == pytest.approx((0.6 + 0.4 + 0.95) / 3)
    assert got["known_positive_rate"] == pytest.approx(3 / 7)
    assert got["known_mean_prob"] == pytest.approx((0.9 + 0.1 + 0.8 + 0.2 + 0.7 + 0.3 + 0.05) / 7)
    assert got["known_auc"] == pytest.approx(1.0)  # known: every positive above every negative
    assert got["cold_share_of_top_decile"] == 1.0  # the top 10% is the single 0.95, untrained
    assert got["unknown_mean_prob"] == pytest.approx(0.5)
    assert got["unknown_share_of_top_decile"] == 0.0
    new = np.zeros(10, dtype=bool)
    new[[6, 8, 9]] = True
    split = bench_ctr.cold_item_metrics(probs, targets, untrained, unknown, new)
    assert split["new_targets"] == 3 and split["old_cold_targets"] == 1  # target 5
    assert split["new_positive_rate"] == pytest.approx(1 / 3)
    assert split["new_mean_prob"] == pytest.approx((0.4 + 0.95 + 0.05) / 3)
    assert split["old_cold_positive_rate"] == 1.0 and split["old_cold_mean_prob"] == 0.6
    assert bench_ctr.cold_item_metrics(probs, targets, None) == {}
    assert set(bench_ctr.cold_item_metrics(probs, targets, None, unknown)) == {
        "unknown_mean_prob", "unknown_share_of_top_decile",
    }  # fmt: skip
