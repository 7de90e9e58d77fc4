"""Single-process tests of the training platform pieces: pickle-free checkpoint format,
non-finite guard, closure-once combined optimizer, dense-only clipping, batch moves."""

from __future__ import annotations

import csv
import functools
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lifeseq.features.batch import CtrBatch, collate_ctr
from lifeseq.features.schema import FeatureConfig, FeatureSchema
from lifeseq.models.blocks.embeddings import torchrec_available
from lifeseq.models.ctr import CtrRecommender
from lifeseq.models.zoo.ctr.smoke import SmokeConfig, SmokeCtr
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers import checkpoint as ckpt
from lifeseq.trainers.callbacks import NonFiniteError, NonFiniteGuard, plot_training_curves
from lifeseq.trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig
from lifeseq.trainers.strategy import TorchRecStrategy, find_dmp
from lifeseq.trainers.tasks.ctr import CtrModule

pytestmark = pytest.mark.unit


@dataclass
class _Cfg:
    lr: float
    betas: tuple[float, float]


def _schema() -> FeatureSchema:
    vocab = {"item": 60, "category": 6, "behavior": 5}
    return FeatureSchema.from_vocab(vocab, FeatureConfig(embedding_dim=4))


def _batch(seed: int = 0, users: int = 4, max_history: int = 6) -> CtrBatch:
    """A small CTR batch: users with 1..8 events (items < 60, categories < 6), 3 targets each."""
    rng = np.random.default_rng(seed)
    samples = []
    for user in range(users):
        n = int(rng.integers(1, 9))
        category = rng.integers(2, 6, n).astype(np.int64)
        t_cat = rng.integers(2, 6, 3).astype(np.int64)
        history = {
            "item": (category * 10 + rng.integers(0, 10, n)).astype(np.int64),
            "category": category,
            "behavior": np.full(n, 2, dtype=np.int64),
            "ts": np.arange(n, dtype=np.int64),
        }
        targets = {
            "target_item": (t_cat * 10 + rng.integers(0, 10, 3)).astype(np.int64),
            "target_category": t_cat,
            "target_ts": np.full(3, n, dtype=np.int64),
            "target_label": (t_cat == 2 + user % 4).astype(np.float32),
            "target_hist_len": rng.integers(0, n + 1, 3).astype(np.int64),
        }
        samples.append(UserSample(f"u{user}", "train", history, targets))
    return collate_ctr(samples, max_history=max_history)


def test_split_and_join_tensors_round_trip_keeps_key_types() -> None:
    state = {
        "epoch": 3,
        "optimizer_states": [{"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [
            {"lr": 0.1, "params": [0]}]}],
        "state_dict": {"w": torch.arange(6.0).reshape(2, 3)},
        "hparams": {"cfg": _Cfg(0.1, (0.9, 0.99))},
    }  # fmt: skip

    tree, tensors = ckpt.split_tensors(state)
    back = ckpt.join_tensors(json.loads(json.dumps(tree)), tensors)

    assert set(tensors) == {"/optimizer_states/0/state/0/step", "/state_dict/w"}
    assert (
        back["optimizer_states"][0]["state"][0]["step"]
        is tensors["/optimizer_states/0/state/0/step"]
    )
    assert back["optimizer_states"][0]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert back["hparams"] == {"cfg": {"lr": 0.1, "betas": [0.9, 0.99]}}
    assert back["epoch"] == 3


def test_checkpoint_directory_has_json_metadata_and_loads_without_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight = torch.randn(5, 3)
    state = {"global_step": 7, "state_dict": {"w": weight, "b": torch.tensor([1, 2])}}
    path = tmp_path / "step=7.ckpt"

    ckpt.save_checkpoint(state, path)

    names = sorted(p.name for p in path.iterdir())
    assert names == [".metadata.json", "__0_0.distcp", "checkpoint.json"]
    index = json.loads((path / ".metadata.json").read_text())
    assert index["state_dict_metadata"]["/state_dict/w"]["size"] == [5, 3]
    assert index["state_dict_metadata"]["/state_dict/b"]["dtype"] == "int64"

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while reading a checkpoint")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    tree, saved = ckpt.read_checkpoint_tree(path)
    targets = {key: ckpt.empty_like_saved(md) for key, md in saved.items()}
    ckpt.load_tensors(path, targets)
    loaded = ckpt.join_tensors(tree, targets)

    assert loaded["global_step"] == 7
    torch.testing.assert_close(loaded["state_dict"]["w"], weight, rtol=0, atol=0)
    assert loaded["state_dict"]["b"].tolist() == [1, 2]


def test_reading_a_non_checkpoint_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a lifeseq sharded checkpoint"):
        ckpt.read_checkpoint_tree(tmp_path)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(2, 1)
        self.last_loss: torch.Tensor | None = None


def _guard_call(loss: float, grad: float) -> None:
    module = _Tiny()
    module.last_loss = torch.tensor(loss)
    module.dense.weight.grad = torch.full_like(module.dense.weight, grad)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    trainer = SimpleNamespace(global_step=7, current_epoch=1, global_rank=0)
    NonFiniteGuard().on_before_optimizer_step(trainer, module, optimizer)  # type: ignore[arg-type]


def test_non_finite_guard_names_step_loss_and_parameter() -> None:
    _guard_call(0.5, 1.0)  # finite: no error

    with pytest.raises(NonFiniteError, match=r"global step 7 .*loss = nan"):
        _guard_call(float("nan"), 1.0)
    with pytest.raises(
        NonFiniteError, match=r"global step 7 .*gradient of dense.weight \(param group 0\)"
    ):
        _guard_call(0.5, float("inf"))


@pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable")
def test_combined_optimizer_runs_the_closure_once_and_steps_dense() -> None:
    from torchrec.optim.keyed import KeyedOptimizerWrapper

    from lifeseq.trainers.sharding import combined_optimizer

    embedding = nn.Parameter(torch.ones(3))
    embedding._in_backward_optimizers = []  # what shard_model's fused params carry
    dense = nn.Parameter(torch.ones(2))
    fake_dmp = SimpleNamespace(
        fused_optimizer=KeyedOptimizerWrapper(
            {"emb": embedding}, lambda p: torch.optim.SGD(p, lr=1.0)
        ),
        named_parameters=lambda: [("emb", embedding), ("dense", dense)],
    )
    optimizer = combined_optimizer(fake_dmp, DenseOptimizerConfig(name="sgd", lr=0.5).factory())
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        dense.grad = torch.ones(2)
        return torch.tensor(1.0)

    optimizer.step(closure)

    assert calls == [1]
    assert dense.tolist() == [0.5, 0.5]
    assert embedding.tolist() == [1.0, 1.0, 1.0]  # fused part: stepped in backward, not here


def test_ctr_module_torch_backend_clips_dense_gradients_only() -> None:
    module = CtrModule(
        functools.partial(SmokeCtr, config=SmokeConfig(hidden=(4,))),
        embedding=EmbeddingConfig("torch"), optimizer=DenseOptimizerConfig(), schema=_schema(),
    )  # fmt: skip
    module.configure_model()
    assert isinstance(module.core, CtrRecommender) and isinstance(module.core.dense, SmokeCtr)
    batch = _batch()
    for param in module.parameters():
        param.grad = torch.full_like(param, 10.0)

    module.configure_gradient_clipping(torch.optim.SGD(module.parameters(), lr=0.1), 1.0, "norm")

    total = torch.sqrt(sum((p.grad**2).sum() for p in module.dense_parameters()))
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    assert module(batch).logits.shape == (batch.num_targets,)
    assert find_dmp(module) is None


def test_ctr_module_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="model.embedding.backend"):
        EmbeddingConfig("jax")
    with pytest.raises(ValueError, match="model.optimizer.name"):
        DenseOptimizerConfig(name="lamb")
    with pytest.raises(ValueError, match="no feature schema"):
        CtrModule(SmokeCtr, embedding=EmbeddingConfig("torch")).configure_model()


def test_strategy_moves_batches_with_their_to() -> None:
    strategy = TorchRecStrategy()
    batch = _batch()
    seen = []
    original = CtrBatch.to

    def spy(self: CtrBatch, device: torch.device | str, non_blocking: bool = False) -> CtrBatch:
        seen.append((str(device), non_blocking))
        return original(self, device, non_blocking)

    CtrBatch.to = spy  # type: ignore[method-assign]
    try:
        moved = strategy.batch_to_device(batch, torch.device("cpu"))
    finally:
        CtrBatch.to = original  # type: ignore[method-assign]

    assert seen == [("cpu", False)]
    assert isinstance(moved, CtrBatch) and moved.num_targets == batch.num_targets


def test_training_curves_png(tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,train/loss,train/samples_per_s,val/auc,val/loss\n"
        "0,0,0.7,100,,\n0,1,0.6,110,,\n0,1,,,0.8,0.65\n1,2,0.5,120,,\n1,3,0.4,120,,\n"
        "1,3,,,0.9,0.45\n"
    )

    out = plot_training_curves(csv_path, tmp_path / "curves.png")

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000


def test_data_wait_fraction_counts_the_gap_between_steps() -> None:
    from types import SimpleNamespace

    from lifeseq.trainers import callbacks

    clock = iter([0.0, 1.0, 1.5, 2.5, 3.0, 4.0, 5.0, 6.0])  # start/end pairs of 4 steps
    original = callbacks.time.perf_counter
    callbacks.time.perf_counter = lambda: next(clock)  # type: ignore[assignment]
    logged: list[float] = []
    module = SimpleNamespace(log=lambda name, value, **_: logged.append(value))
    try:
        wait = callbacks.DataWait(skip=1)
        for step in range(4):
            wait.on_train_batch_start(None, module, None, step)  # type: ignore[arg-type]
            wait.on_train_batch_end(None, module, None, None, step)  # type: ignore[arg-type]
    finally:
        callbacks.time.perf_counter = original  # type: ignore[assignment]
    # steps: [0,1] [1.5,2.5] [3,4] [5,6]; skip=1 drops the first step and the gap after it
    # measured: gaps 2.5→3 (0.5) and 4→5 (1.0); steps [3,4] and [5,6] (2.0)
    assert wait.summary() == {"steps": 2, "wait_s": 1.5, "step_s": 2.0, "fraction": 0.4286}
    assert logged[-1] == pytest.approx(1.5 / 3.5)


@dataclass
class _TinyBatch:
    """A batch with `num_targets`, as `CtrBatch`: T rows of 2 features and a regression label."""

    x: torch.Tensor  # (T, 2)
    y: torch.Tensor  # (T,)

    @property
    def num_targets(self) -> int:
        return int(self.y.shape[0])


def _tiny_batches(count: int, targets: int = 3, padding_first: bool = False) -> list[_TinyBatch]:
    gen = torch.Generator().manual_seed(0)
    batches = [_TinyBatch(torch.randn(targets, 2, generator=gen), torch.randn(targets, generator=gen))
               for _ in range(count)]  # fmt: skip
    if padding_first:
        batches.insert(0, _TinyBatch(torch.zeros(0, 2), torch.zeros(0)))
    return batches


def _tiny_module(batches: list[_TinyBatch]) -> Any:
    import lightning as L
    from torch.utils.data import DataLoader

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def _loss(self, batch: _TinyBatch) -> torch.Tensor:
            error = self.layer(batch.x).squeeze(-1) - batch.y  # (T,)
            return (error**2).sum() / max(batch.num_targets, 1)

        def training_step(self, batch: _TinyBatch, batch_idx: int) -> torch.Tensor:
            loss = self._loss(batch)
            self.log("train/loss", loss, batch_size=1)
            return loss

        def test_step(self, batch: _TinyBatch, batch_idx: int) -> None:
            self.log("test/loss", self._loss(batch), batch_size=1)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(batches, batch_size=None)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(batches, batch_size=None)

    return Tiny()


def _trainer(root: Path, max_steps: int, callbacks: list, **kwargs: Any) -> Any:
    import lightning as L

    return L.Trainer(
        max_steps=max_steps, callbacks=callbacks, default_root_dir=root, accelerator="cpu",
        devices=1, enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


def test_throughput_logs_lightnings_keys_for_training_only(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from lifeseq.trainers.callbacks import Throughput

    module = _tiny_module(_tiny_batches(12, targets=3, padding_first=True))
    logs = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(tmp_path, 13, [Throughput(window=2)], logger=logs, log_every_n_steps=1)
    trainer.fit(module)
    assert float(trainer.progress_bar_metrics["train/samples_per_sec"]) > 0
    trainer.test(module, verbose=False)

    rows = list(csv.DictReader((Path(logs.log_dir) / "metrics.csv").open(newline="")))
    keys = {k for row in rows for k, v in row.items() if v}
    assert {"train/device/samples_per_sec", "train/samples", "train/time"} <= keys
    assert "train/samples_per_sec" not in keys  # Lightning logs the job's rate only if world > 1
    assert max(float(r["train/samples"]) for r in rows if r.get("train/samples")) == 36.0
    assert {k for k in keys if k.startswith("test/")} == {"test/loss"}
    with pytest.raises(ValueError, match=r"Throughput.window: expected >= 1, got 0"):
        Throughput(window=0)


def _saved_steps() -> tuple[Any, list[int]]:
    import lightning as L

    steps: list[int] = []

    class Saves(L.Callback):
        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Any) -> None:
            steps.append(trainer.global_step)

    return Saves(), steps


def _last_step(dirpath: Path) -> int:
    return torch.load(dirpath / "last.ckpt", weights_only=True)["global_step"]


def test_last_checkpoint_holds_the_final_step_once_and_resumes(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lifeseq.trainers.callbacks import LastCheckpoint

    args = {"save_last": True, "every_n_train_steps": 4}
    plain = tmp_path / "plain"
    _trainer(plain, 6, [ModelCheckpoint(plain, **args)], logger=False).fit(
        _tiny_module(_tiny_batches(6))
    )
    assert _last_step(plain) == 4  # Lightning alone: the final 2 steps are not in last.ckpt

    dirpath = tmp_path / "ckpt"
    saves, steps = _saved_steps()
    _trainer(dirpath, 6, [LastCheckpoint(dirpath, **args), saves], logger=False).fit(
        _tiny_module(_tiny_batches(6))
    )
    assert _last_step(dirpath) == 6 and steps == [4, 4, 6]

    saves, steps = _saved_steps()
    _trainer(dirpath, 8, [LastCheckpoint(dirpath, **args), saves], logger=False).fit(
        _tiny_module(_tiny_batches(6)), ckpt_path="last"
    )
    assert _last_step(dirpath) == 8 and steps == [8, 8]  # a save at the final step: no rewrite
