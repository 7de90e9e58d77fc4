"""`TorchRecStrategy`: Lightning DDP for dense layers, TorchRec model parallelism for embeddings.

    trainer:
      strategy: {class_path: lifeseq.trainers.strategy.TorchRecStrategy}

Why not Lightning's `ModelParallelStrategy`: it is built around a `DeviceMesh` for FSDP2 /
tensor parallelism (DTensor state dicts through `get_model_state_dict`), which knows neither
TorchRec's `DistributedModelParallel` (DMP, ShardedTensor state, its own DDP inside) nor
TorchRec's `KeyedOptimizer`. `configure_model()` is the part worth keeping, and it works with
any strategy. So this is a small `DDPStrategy` subclass:

* Process group: `DDPStrategy`'s (gloo on CPU, nccl on CUDA; `process_group_backend` overrides).
  It exists before `LightningModule.configure_model()`, which calls
  `trainers.sharding.shard_model(model, cfg, strategy.root_device)` on the world group.
* Never DDP-wraps twice: when the LightningModule holds a DMP (which already wraps the dense
  parameters in DDP), `configure_ddp()` leaves the module unwrapped; otherwise (embedding
  backend `torch`) it wraps the whole LightningModule in DDP as usual. When not fitting, a DMP
  skips DDPStrategy's rank-0 broadcast of module states (shards differ per rank; every rank
  builds identical initial weights from the seed anyway).
* Batches: `CtrBatch` / `GenerativeBatch` (anything with `.to(device, non_blocking)`) are moved
  with their own `.to()`; other batches go through Lightning's default.
* Precision: Lightning's precision plugins unchanged; on CUDA `trainer.precision: bf16-mixed`
  runs forward passes under `torch.autocast(bfloat16)` (FBGEMM embedding tables stay fp32;
  models compute their loss in fp32).
* Checkpoints (`trainers.checkpoint`): a directory per checkpoint, written by every rank with
  `torch.distributed.checkpoint` (embedding shards, dense weights, both optimizers' states)
  plus JSON for step/epoch/loop/callback state; no pickle anywhere. Loading happens after
  `setup()`, into the current model and optimizers in place, so a checkpoint of any world size
  loads at any other. `ModelCheckpoint(save_last=True)` and `fit --ckpt_path last` work on
  these directories (`last.ckpt/`).

Clipping and accumulation: see `trainers.platform_module.PlatformModule.configure_gradient_clipping`:
embedding rows are updated inside backward by the fused optimizer, so gradient clipping and
`accumulate_grad_batches` apply to dense parameters only.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from lifeseq.pipeline.compat import optimizers_to_device, unwrap_lightning_optimizer
from lifeseq.trainers import checkpoint as ckpt
from lifeseq.trainers.legacy import is_legacy

logger = logging.getLogger(__name__)


def find_dmp(module: nn.Module) -> nn.Module | None:
    """The first TorchRec `DistributedModelParallel` inside `module` (None without torchrec)."""
    try:
        from torchrec.distributed.model_parallel import DistributedModelParallel
    except ImportError:
        return None
    for sub in module.modules():
        if isinstance(sub, DistributedModelParallel):
            return sub
    return None


class TorchRecStrategy(DDPStrategy):
    """DDP strategy aware of TorchRec's `DistributedModelParallel`; see the module docstring.

    Accepts every `DDPStrategy` argument (`process_group_backend`, `timeout`, DDP kwargs such
    as `find_unused_parameters` for the torch backend).
    """

    strategy_name = "torchrec"

    # --- model wrapping -------------------------------------------------------------------

    def _has_dmp(self) -> bool:
        module = self.lightning_module
        return module is not None and find_dmp(module) is not None

    def setup(self, trainer: L.Trainer) -> None:
        """DDPStrategy.setup, minus the second DDP wrap / state broadcast for a DMP."""
        if not self._has_dmp():
            super().setup(trainer)
            return
        assert self.accelerator is not None and self.model is not None
        self.accelerator.setup(trainer)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        if trainer.state.fn == TrainerFn.FITTING:
            logger.debug("TorchRecStrategy: DMP found; dense layers are already DDP-wrapped")
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            optimizers_to_device(self.optimizers, self.root_device)

    def configure_ddp(self) -> None:
        """Wrap in DDP unless the module holds a DMP (which already DDP-wraps its dense part)."""
        if self._has_dmp():
            return
        super().configure_ddp()

    def batch_to_device(
        self, batch: Any, device: torch.device | None = None, dataloader_idx: int = 0
    ) -> Any:
        """Move `CtrBatch`/`GenerativeBatch` with their `.to()`; others the Lightning way."""
        device = device or self.root_device
        if hasattr(batch, "to") and hasattr(batch, "weight") and not isinstance(batch, nn.Module):
            return batch.to(device, non_blocking=device.type == "cuda")
        return super().batch_to_device(batch, device, dataloader_idx)

    # --- checkpoints ----------------------------------------------------------------------

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        """Load after sharding and optimizer creation: tensors load into the current layout."""
        return True

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """This rank's model state (ShardedTensors for embedding shards), on every rank."""
        assert self.lightning_module is not None
        return self.lightning_module.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """This rank's optimizer state (fused state sharded like the tables), on every rank."""
        return unwrap_lightning_optimizer(optimizer).state_dict()

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        filepath: str | os.PathLike,
        storage_options: Any | None = None,
    ) -> None:
        """Write a sharded checkpoint directory at `filepath` (collective: every rank)."""
        if storage_options is not None:
            raise ValueError(
                f"TorchRecStrategy.save_checkpoint: storage_options are not supported, got "
                f"{storage_options!r}"
            )
        ckpt.save_checkpoint(checkpoint, filepath)

    def remove_checkpoint(self, filepath: str | os.PathLike) -> None:
        """Delete a checkpoint directory (rank 0)."""
        if self.is_global_zero:
            path = Path(filepath)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def load_checkpoint(
        self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None
    ) -> dict:
        """Load a sharded checkpoint into the current model (and optimizers when fitting).

        Model and optimizer tensors are loaded in place (resharded as needed); the returned
        dict carries them as references for Lightning's restore hooks, which then only restore
        optimizer hyper-parameters and loop state.

        Raises:
            FileNotFoundError: `checkpoint_path` is not a checkpoint directory.
        """
        tree, saved = ckpt.read_checkpoint_tree(checkpoint_path)
        old_module = (tree.get("hyper_parameters") or {}).get("_class_path")
        if is_legacy(old_module):
            raise ValueError(
                f"{checkpoint_path}: written before the model zoo (by {old_module}); convert it "
                f"with `lifeseq migrate {checkpoint_path} --out NEW.ckpt` and load NEW.ckpt "
                "(its config: `lifeseq migrate RUN/config.yaml --out NEW.yaml`)"
            )
        module = self.lightning_module
        assert module is not None
        targets: dict[str, Any] = {}
        model_state = module.state_dict()
        for key, value in model_state.items():
            targets[f"/state_dict/{key}"] = value
        optimizer_states: list[dict[str, Any]] = []
        fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING
        if fitting:
            for index, optimizer in enumerate(self.optimizers):
                optimizer = unwrap_lightning_optimizer(optimizer)
                if hasattr(optimizer, "init_state"):  # TorchRec KeyedOptimizer: lazy state
                    optimizer.init_state()
                state = optimizer.state_dict()
                optimizer_states.append(state)
                _, flat = ckpt.split_tensors(state, f"/optimizer_states/{index}")
                targets.update(flat)
        missing_model = sorted(
            k for k in targets if k.startswith("/state_dict/") and k not in saved
        )
        if missing_model:
            raise ValueError(
                f"{checkpoint_path}: model tensors missing from the checkpoint: {missing_model[:5]}"
                f"{' ...' if len(missing_model) > 5 else ''}"
            )
        # Tensors of the checkpoint with no live target (callback state, lazily created
        # optimizer state of plain torch optimizers): full copies on every rank.
        for key, md in saved.items():
            if key in targets:
                continue
            if key.startswith("/optimizer_states/") and not fitting:
                continue
            targets[key] = ckpt.empty_like_saved(md)
        ckpt.load_tensors(checkpoint_path, targets)
        if not fitting:
            tree = {k: v for k, v in tree.items() if k != "optimizer_states"}
        checkpoint = ckpt.join_tensors(tree, targets)
        checkpoint["state_dict"] = model_state
        if not fitting:
            return checkpoint
        # The JSON tree is rank 0's. A TorchRec KeyedOptimizer's state differs per rank (it
        # lists only the tables this rank holds), so each rank loads its own live state dict
        # (tensors now loaded in place), taking each param group's saved hyper-parameters from
        # the saved group with the same parameters (groups rank 0 lacks keep their config).
        saved_states = checkpoint.get("optimizer_states", [])
        for index, optimizer in enumerate(self.optimizers):
            if not hasattr(unwrap_lightning_optimizer(optimizer), "init_state"):
                continue
            live = optimizer_states[index]
            saved_groups = (
                saved_states[index].get("param_groups", []) if index < len(saved_states) else []
            )
            for live_group in live.get("param_groups", []):
                names = set(live_group.get("params", []))
                for saved_group in saved_groups:
                    if names & set(saved_group.get("params", [])):
                        live_group.update({k: v for k, v in saved_group.items() if k != "params"})
                        break
            saved_states[index] = live
        return checkpoint

    def load_model_state_dict(self, checkpoint: dict[str, Any], strict: bool = True) -> None:
        """Nothing to do: `load_checkpoint` loaded the model in place."""

    def load_optimizer_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore optimizer state (tensors already in place; this sets hyper-parameters and
        the lazily created state of plain torch optimizers)."""
        states = checkpoint.get("optimizer_states", [])
        for optimizer, state in zip(self.optimizers, states, strict=False):
            unwrap_lightning_optimizer(optimizer).load_state_dict(state)
