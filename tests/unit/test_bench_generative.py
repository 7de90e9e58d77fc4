"""`jobs.bench_generative`: its synthetic speed batches, commands, checkpoint choice and table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs import bench_generative


def test_speed_batch_labels_every_position() -> None:
    batch = bench_generative.speed_batch(length=7, rows=3)
    assert batch.sequence["item"].lengths.tolist() == [7, 7, 7]
    labels = batch.next_item().values
    assert int((labels > 0).sum()) == 21  # the last position is labelled with the target
    assert (batch.sequence["ts"].values.view(3, 7).diff(dim=1) > 0).all()


def test_configs_load_and_differ_only_in_the_encoder() -> None:
    hstu, hstu_loss, hstu_dim = bench_generative.load_arch("hstu")
    sasrec, sasrec_loss, sasrec_dim = bench_generative.load_arch("sasrec")
    assert (hstu.encoder, sasrec.encoder) == ("hstu", "sasrec")
    assert hstu_loss == sasrec_loss and hstu_dim == sasrec_dim == 50
    assert (hstu.blocks, hstu.heads, hstu.dropout) == (sasrec.blocks, sasrec.heads, sasrec.dropout)
    large, large_loss, _ = bench_generative.load_arch("hstu_large")
    assert (large.blocks, large.heads, large.attention_dim, large.linear_dim) == (8, 2, 25, 25)
    assert large_loss == hstu_loss


def test_train_commands_override_epochs_and_end_with_the_checkpoint_flag(tmp_path: Path) -> None:
    fit, test = bench_generative.train_commands("hstu", tmp_path / "b", tmp_path / "r", 7)
    assert fit[2] == "fit" and fit[-2:] == ["--trainer.max_epochs", "7"]
    assert str(bench_generative.MODEL_CONFIGS / "hstu.yaml") in fit
    assert test[2] == "test" and test[-1] == "--ckpt_path"
    fit, _ = bench_generative.train_commands("sasrec", tmp_path / "b", tmp_path / "r", None)
    assert "--trainer.max_epochs" not in fit and "--seed_everything" not in fit
    fit, _ = bench_generative.train_commands("sasrec", tmp_path / "b", tmp_path / "r", None, 3)
    assert fit[-6:] == ["--seed_everything", "3", "--model.init_args.seed", "3", "--data.seed", "3"]


def test_best_checkpoint_is_the_newest_best_file(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for age, name in ((30, "best.ckpt"), (10, "best-v1.ckpt"), (0, "last.ckpt")):
        path = checkpoints / name
        path.mkdir()
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    assert bench_generative.best_checkpoint(tmp_path).name == "best-v1.ckpt"
    with pytest.raises(FileNotFoundError, match="best"):
        bench_generative.best_checkpoint(tmp_path / "missing")


def test_markdown_reports_quality_ratio_and_speed() -> None:
    payload = {
        "ml-100k": {
            "_data": {},
            "sasrec": {"hr@10": 0.1, "ndcg@10": 0.05, "hr@50": 0.3, "ndcg@50": 0.09, "mrr": 0.04},
            "hstu": {"error": "fit exited 1"},
            "_hstu_over_sasrec_ndcg@10": 1.25,
        },
        "machine": {"device": "cpu"},
        "speed": {"hstu": {"50": {"rows": 163, "step_ms": 12.5, "tokens_per_s": 652_000.0}}},
    }
    text = bench_generative.markdown(payload)
    assert "| sasrec | 0.1000 | 0.0500 | 0.3000 | 0.0900 | 0.0400 |" in text
    assert "| hstu | error |" in text
    assert "NDCG@10 / SASRec's: hstu 1.250" in text
    assert "| 50 | hstu | 163 | 12.5 | 652,000 |" in text
