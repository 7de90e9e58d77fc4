"""`jobs.bench_generative`: its synthetic speed batches, commands, checkpoint choice and table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lifeseq.jobs import bench_generative


def test_speed_batch_labels_every_position() -> None:
    batch = bench_generative.speed_batch(length=7, rows=3)
    assert batch.sequence["item"].lengths.tolist() == [7, 7, 7]
    labels = batch.next_item().values
    assert int((labels > 0).sum()) == 21  # the last position is labelled with the target
    assert (batch.sequence["ts"].values.view(3, 7).diff(dim=1) > 0).all()


def test_models_are_the_config_files() -> None:
    """`MODELS`: every `configs/sequential/*.yaml` but the base, which each is merged onto."""
    files = sorted(p.stem for p in bench_generative.MODEL_CONFIGS.glob("*.yaml"))
    assert list(bench_generative.MODELS) == [name for name in files if name != "base"]
    assert {"cloze", "hstu", "hstu_large", "sasrec"} <= set(bench_generative.MODELS)
    assert bench_generative.BASE_CONFIG == bench_generative.MODEL_CONFIGS / "base.yaml"


def test_configs_load_and_differ_only_in_the_encoder() -> None:
    """hstu / sasrec / hstu_large share base.yaml's task, loss, input features and dims (SASRec
    with RecBole's heads and dropout); cloze swaps the task for the masked-item one over a
    bidirectional SASRec."""
    from lifeseq.models.zoo.sequence.hstu import Hstu
    from lifeseq.models.zoo.sequence.sasrec import SasRec
    from lifeseq.trainers.tasks.masked_item import MaskedItemModule
    from lifeseq.trainers.tasks.next_item import NextItemModule

    cpu = torch.device("cpu")
    names = ("hstu", "sasrec", "hstu_large", "cloze")
    modules = {name: bench_generative.speed_module(name, 16, cpu) for name in names}
    hstu, sasrec = modules["hstu"], modules["sasrec"]
    encoders = {name: module.sequential.dense.encoder for name, module in modules.items()}
    assert isinstance(encoders["hstu"], Hstu) and isinstance(encoders["sasrec"], SasRec)
    assert type(hstu) is type(sasrec) is type(modules["hstu_large"]) is NextItemModule
    assert hstu.loss_config == sasrec.loss_config == modules["hstu_large"].loss_config
    assert hstu.loss_config.uniform_negatives == 128 and hstu.loss_config.temperature == 0.05
    assert hstu.sequential.dims == sasrec.sequential.dims
    assert (hstu.sequential.dims.embedding_dim, hstu.sequential.dims.item_rows) == (
        50, bench_generative.SPEED_ITEMS,
    )  # fmt: skip
    hstu_config, sasrec_config = encoders["hstu"].config, encoders["sasrec"].config
    assert hstu_config.blocks == sasrec_config.blocks == 2
    # HSTU keeps the reference's 1 head and dropout 0.2; SASRec has RecBole's 2 heads and 0.5.
    assert (hstu_config.heads, hstu_config.dropout) == (1, 0.2)
    assert (sasrec_config.heads, sasrec_config.dropout) == (2, 0.5)
    features = (hstu.sequential.dense.features, sasrec.sequential.dense.features)
    assert (features[0].dropout.p, features[1].dropout.p) == (0.2, 0.5)
    large = encoders["hstu_large"].config
    assert (large.blocks, large.heads, large.attention_dim, large.linear_dim) == (8, 2, 25, 25)
    assert isinstance(modules["cloze"], MaskedItemModule)
    assert isinstance(encoders["cloze"], SasRec) and not encoders["cloze"].causal
    assert encoders["sasrec"].causal and encoders["hstu"].causal
    assert modules["cloze"].loss_config == hstu.loss_config


@pytest.mark.parametrize("name", bench_generative.MODELS)
def test_speed_module_takes_a_training_step(name: str) -> None:
    """`speed_module` builds each config's model (torch backend) and its training loss on a
    speed batch is finite and differentiable."""
    module = bench_generative.speed_module(name, 8, torch.device("cpu"))
    assert module.training and module.embedding.backend == "torch"
    loss = module.training_loss(bench_generative.speed_batch(length=8, rows=2))
    assert loss.ndim == 0 and bool(torch.isfinite(loss))
    loss.backward()
    grads = [p.grad for p in module.model.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_train_commands_override_epochs_and_end_with_the_checkpoint_flag(tmp_path: Path) -> None:
    fit, test = bench_generative.train_commands("hstu", tmp_path / "b", tmp_path / "r", 7)
    assert fit[2] == "fit" and fit[-2:] == ["--trainer.max_epochs", "7"]
    config = fit.index("--config")
    assert fit[config : config + 4] == [
        "--config", str(bench_generative.BASE_CONFIG),
        "--config", str(bench_generative.MODEL_CONFIGS / "hstu.yaml"),
    ]  # fmt: skip
    assert str(bench_generative.MODEL_CONFIGS / "hstu.yaml") in test
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
