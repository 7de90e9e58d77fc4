"""End-to-end tests of `trainers.data.LifeseqDataModule` on small shard directories: schema,
train/val/test loaders, a short Lightning `fit` (epoch-aware order, loader counters), and one
Spark-built directory (`lifeseq synth` → `run_build`)."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from lifeseq.features.batch import CtrBatch, GenerativeBatch
from lifeseq.features.dataset import LifeseqDataLoader
from lifeseq.trainers.data import LifeseqDataModule
from tests.unit.test_dataset import users_of, write_out_dir

unit = pytest.mark.unit  # every test but the Spark-built one (marked spark only)

SIZES = {"train": [5, 3, 6, 2], "valid": [3, 1], "test": [2]}


@pytest.fixture()
def out_dir(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "out"
    return root, write_out_dir(root, SIZES)


def users(loader: LifeseqDataLoader) -> list[str]:
    return [u for batch in loader for u in batch.users]


@unit
def test_setup_builds_schema_and_all_loaders(out_dir) -> None:
    root, manifest = out_dir
    dm = LifeseqDataModule(str(root), batch_size=2, max_history=3, embedding_dim=8)

    dm.prepare_data()
    dm.setup("fit")

    assert dm.schema.tables["item"].num_embeddings == 3000
    assert dm.schema.tables["position"].num_embeddings == 200
    assert dm.schema.tables["item"].embedding_dim == 8
    train = dm.train_dataloader()
    assert isinstance(train, LifeseqDataLoader) and len(train) == 8  # ceil(16 / 2)
    train_batches = list(train)
    assert all(isinstance(b, CtrBatch) for b in train_batches)
    assert sorted(u for b in train_batches for u in b.users) == users_of(manifest, "train")
    windows = [b.target_hist_len - b.target_hist_start for b in train_batches]
    assert max(int(w.max()) for w in windows) == 3  # each target sees at most max_history
    assert users(dm.val_dataloader()) == users_of(manifest, "valid")  # manifest order
    assert users(dm.test_dataloader()) == users_of(manifest, "test")


@unit
def test_generative_view_and_eval_batch_size(out_dir) -> None:
    root, manifest = out_dir
    dm = LifeseqDataModule(str(root), view="generative", batch_size=4, eval_batch_size=3, max_len=2)
    dm.setup("validate")

    batches = list(dm.val_dataloader())

    assert [b.num_users for b in batches] == [3, 1]
    assert all(isinstance(b, GenerativeBatch) for b in batches)
    assert all(int(b.sequence["item"].lengths.max()) <= 2 for b in batches)


@unit
def test_rank_and_world_size_come_from_the_trainer(out_dir) -> None:
    root, manifest = out_dir
    seen = []
    for rank in range(2):
        dm = LifeseqDataModule(str(root), batch_size=2, num_workers=0)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)  # what Lightning sets
        dm.setup("fit")
        ds = dm.dataset("train")
        assert (ds.rank, ds.world_size) == (rank, 2)
        seen.append(users(dm.train_dataloader()))

    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == users_of(manifest, "train")


@unit
def test_schema_before_setup_and_bad_arguments(out_dir) -> None:
    root, _ = out_dir
    with pytest.raises(RuntimeError, match="setup"):
        _ = LifeseqDataModule(str(root)).schema
    with pytest.raises(ValueError, match="data.view"):
        LifeseqDataModule(str(root), view="seq")
    with pytest.raises(ValueError, match="max_history"):
        LifeseqDataModule(str(root), max_history=200_000)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        LifeseqDataModule(str(root / "missing")).setup("fit")


class TinyCtr(L.LightningModule):
    """Mean-pooled history · target embedding; records the users of every training batch."""

    def __init__(self, items: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(items, 4)
        self.seen: dict[int, list[str]] = {}
        self.weights: list[float] = []

    def training_step(self, batch: CtrBatch, batch_idx: int) -> torch.Tensor:
        self.seen.setdefault(self.current_epoch, []).extend(batch.users)
        self.weights.append(batch.weight)
        history = batch.history["item"]
        pooled = torch.zeros(batch.num_users, 4).index_add_(
            0,
            torch.repeat_interleave(torch.arange(batch.num_users), history.lengths),
            self.embedding(history.values),
        ) / history.lengths.clamp(min=1).unsqueeze(1)  # (B, 4)
        logits = (pooled[batch.target_user] * self.embedding(batch.target_item)).sum(-1)  # (T,)
        per_target = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, batch.label, reduction="none"
        )
        return batch.weight * per_target.sum() / max(batch.num_targets, 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@unit
@pytest.mark.parametrize("num_workers", [0, 1])
def test_lightning_fit_sees_every_user_once_per_epoch_in_new_order(out_dir, num_workers) -> None:
    root, manifest = out_dir
    dm = LifeseqDataModule(str(root), batch_size=3, num_workers=num_workers, shuffle_buffer=4)
    model = TinyCtr(items=3000)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's few-workers / no-val hints
        trainer.fit(model, datamodule=dm)

    expected = users_of(manifest, "train")
    assert sorted(model.seen[0]) == sorted(model.seen[1]) == expected
    assert model.seen[0] != model.seen[1]  # epoch-aware shuffle reached the workers
    assert trainer.num_training_batches == 6 and len(model.weights) == 12
    assert dm.data_stats["samples"] == 2 * len(expected)
    assert dm.data_stats["shards"] == 2 * 4 and dm.data_stats["corrupt_shards"] == 0
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())


@unit
def test_data_stats_count_a_corrupt_shard(out_dir) -> None:
    root, manifest = out_dir
    (root / "shards" / "train" / "train-000001.tar").write_bytes(b"\0garbage" * 64)
    dm = LifeseqDataModule(str(root), batch_size=4)
    dm.setup("fit")

    counts: Counter[str] = Counter()
    with pytest.warns(RuntimeWarning, match="train-000001.tar"):
        for batch in dm.train_dataloader():
            dm.on_before_batch_transfer(batch, 0)
            counts["batches"] += 1

    assert dm.data_stats["corrupt_shards"] == 1 and dm.data_stats["missing_samples"] == 3
    assert dm.data_stats["samples"] == 16 - 3 and counts["batches"] == 4  # planned count


@pytest.mark.spark
def test_datamodule_on_spark_built_shards(spark, tmp_path: Path) -> None:
    from lifeseq.pipeline.build import run_build
    from lifeseq.pipeline.config import load_config
    from lifeseq.pipeline.synth import SynthConfig, write_synthetic

    events = tmp_path / "events"
    write_synthetic(SynthConfig(users=40, seed=1, max_events=400), str(events))
    cfg = load_config(str(Path(__file__).resolve().parents[2] / "configs/pipeline/synthetic.yaml"))
    manifest = run_build(spark, cfg, [str(events)], str(tmp_path / "out")).manifest
    dm = LifeseqDataModule(str(tmp_path / "out"), batch_size=8, max_history=50)
    dm.setup("fit")

    batches = list(dm.train_dataloader())

    real = [b for b in batches if not b.is_padding]
    assert sum(b.num_users for b in real) == manifest["splits"]["train"]["samples"]
    assert sum(b.num_targets for b in real) == manifest["splits"]["train"]["targets"]
    assert dm.schema.tables["item"].num_embeddings == manifest["vocab"]["item"]
    for b in real:
        offsets = b.history["ts"].offsets
        lengths = b.history["ts"].lengths
        assert int((b.target_hist_len - b.target_hist_start).max()) <= 50
        assert bool((b.target_hist_len <= lengths[b.target_user]).all())
        for j in range(b.num_targets):  # no event of a target's history after its request time
            u, lo = int(b.target_user[j]), int(b.target_hist_start[j])
            n = int(b.target_hist_len[j])
            prefix = b.history["ts"].values[offsets[u] + lo : offsets[u] + n]
            assert bool((prefix <= b.target_ts[j]).all())
    assert dm.data_stats == Counter()  # nothing went through on_before_batch_transfer
