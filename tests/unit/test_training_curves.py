"""The training-curve grid: the task's metrics in at most 3 columns, bookkeeping left out."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pytest

from lifeseq.trainers.callbacks import curve_panels, plot_training_curves

pytestmark = pytest.mark.unit

CSV = """epoch,step,train/loss,train/samples_per_sec,train/data_wait_fraction,val/loss,val/auc,val/gauc,val/gauc_users
0,9,0.69,,0.1,,,,
0,19,0.60,1500,0.1,,,,
0,29,0.55,1600,0.1,,,,
0,29,,,,0.58,0.71,0.70,31
0,39,0.50,1700,0.1,,,,
0,49,0.45,1650,0.1,,,,
0,49,,,,0.52,0.75,0.73,31
"""


def _series(keys: dict[str, int]) -> dict[str, list[tuple[float, float]]]:
    return {k: [(float(i), 1.0) for i in range(n)] for k, n in keys.items()}


def test_panels_are_loss_main_metrics_then_throughput():
    series = _series({"train/loss": 5, "val/loss": 2, "val/auc": 2, "val/gauc": 2,
                      "val/gauc_users": 2, "train/data_wait_fraction": 5,
                      "train/device/samples_per_sec": 4, "train/samples_per_s": 3})  # fmt: skip
    assert curve_panels(series) == [
        ("loss", ["train/loss", "val/loss"]),
        ("auc", ["val/auc"]),
        ("gauc", ["val/gauc"]),
        ("training targets / s", ["train/device/samples_per_sec"]),
    ]
    generative = _series({"train/loss": 5, "val/ndcg@10": 3, "val/hr@10": 3, "val/targets": 3})
    assert [title for title, _ in curve_panels(generative)] == ["loss", "ndcg@10", "hr@10"]


def test_grid_is_at_most_three_columns(tmp_path: Path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(CSV)
    out = plot_training_curves(csv, tmp_path / "curves.png")
    height, width, _ = mpimg.imread(out).shape
    assert (width, height) == (int(4.6 * 3 * 110), int(3.4 * 2 * 110))  # 4 panels: 3 + 1


def test_metrics_logged_once_become_a_text_panel(tmp_path: Path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/auc\n0,1,0.7,\n0,2,0.6,\n0,2,,0.8\n")
    out = plot_training_curves(csv, tmp_path / "curves.png")
    height, width, _ = mpimg.imread(out).shape
    assert (width, height) == (int(4.6 * 2 * 110), int(3.4 * 110))  # loss + "logged once"
