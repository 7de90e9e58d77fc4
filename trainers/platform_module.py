"""`PlatformModule`: what every lifeseq LightningModule shares, whatever it predicts.

* `configure_model()` (every rank, process group up): builds the model from the data module's
  `FeatureSchema` (`build_model`: the task builds its composite from the zoo model YAML chose)
  and, with `embedding.backend: torchrec`, shards it with `trainers.sharding.shard_model` on
  the strategy's device and world process group. With `torch`, the strategy DDP-wraps it.
* `self.model` is what the forward runs (possibly wrapped by DMP/DDP); `self.core` is the
  model inside the wrappers, the one way to reach its methods (`item_table`, ...).
* `configure_optimizers()`: one optimizer. TorchRec backend: the fused embedding optimizer
  (from `sharding:`, it steps inside backward) combined with the dense optimizer in a
  `CombinedOptimizer`; torch backend: the dense optimizer over every parameter.
* Checkpoints carry the feature-schema hash and every rank's RNG states (`trainers.run_state`).
* `training_step`/`validation_step`/`test_step` delegate to `_shared_step(batch, stage)`; an
  evaluation epoch starts with `_start_eval(stage)` and ends logging `_compute_eval(stage)`;
  `evaluate(batches)` runs the same outside a Trainer; the tasks (`trainers/tasks/`: CTR, next-item, masked-item)
  define both: a LightningModule is this platform + a task + a zoo model.

Gradient semantics: embedding rows of the torchrec backend are updated *inside* `backward()` by
the fused optimizer, so `trainer.gradient_clip_val` and `trainer.accumulate_grad_batches` act on
dense parameters only; embedding rows are updated every micro-batch, unclipped. Gradients are
averaged over ranks for both parts (see `trainers.sharding`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from lifeseq.features.schema import FeatureSchema
from lifeseq.models.blocks.embeddings import BACKENDS
from lifeseq.models.interfaces import ModelDims, SparseDenseModel
from lifeseq.trainers import run_state
from lifeseq.trainers.sharding import ShardingConfig, combined_optimizer, shard_model

DENSE_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class EmbeddingConfig:
    """YAML `model.embedding:`.

    Attributes:
        backend: `torchrec` (sharded with DMP) or `torch` (plain `nn.Embedding`, DDP).
    """

    backend: str = "torchrec"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"model.embedding.backend: expected one of {list(BACKENDS)}, got {self.backend!r}"
            )


@dataclass
class DenseOptimizerConfig:
    """YAML `model.optimizer:`, the optimizer of dense (non-embedding) parameters.

    Attributes:
        name: `adam`, `adamw` or `sgd`.
        lr: learning rate.
        weight_decay: weight decay.
    """

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in DENSE_OPTIMIZERS:
            raise ValueError(
                f"model.optimizer.name: expected one of {list(DENSE_OPTIMIZERS)}, got {self.name!r}"
            )
        if self.lr <= 0:
            raise ValueError(f"model.optimizer.lr: expected > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(
                f"model.optimizer.weight_decay: expected >= 0, got {self.weight_decay}"
            )

    def factory(self) -> Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]:
        """`params -> optimizer`."""
        classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        cls, lr, wd = classes[self.name], self.lr, self.weight_decay
        return lambda params: cls(params, lr=lr, weight_decay=wd)


class PlatformModule(L.LightningModule):
    """Model building, sharding, optimizers, evaluation plumbing and checkpoint extras shared by
    every task.

    Args:
        embedding: embedding backend.
        sharding: TorchRec sharding and fused embedding optimizer (torchrec backend).
        optimizer: dense optimizer.
        seed: initialisation seed of the model (same weights on every rank and world size).
        schema: feature schema; None reads `trainer.datamodule.schema` in `configure_model`.
    """

    #: Metrics the progress bar shows (the task's main ones).
    progress_metrics: tuple[str, ...] = ()
    #: The `trainers.data.LifeseqDataModule` view whose batches the task reads (`ctr`,
    #: `generative`); `lifeseq train` refuses another at start-up (`trainers.fit_check`).
    data_view: str = ""
    #: Lightning's `ThroughputMonitor` (`trainers.callbacks.Throughput`) reads this: FLOPs are
    #: not counted (fused TorchRec kernels have no FLOP formula), so it logs no FLOP rates.
    flops_per_batch: float | None = None

    def __init__(
        self,
        embedding: EmbeddingConfig | None = None,
        sharding: ShardingConfig | None = None,
        optimizer: DenseOptimizerConfig | None = None,
        seed: int = 0,
        schema: FeatureSchema | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["schema"])
        self.embedding = embedding or EmbeddingConfig()
        self.sharding = sharding or ShardingConfig()
        self.dense_optimizer = optimizer or DenseOptimizerConfig()
        self.seed = seed
        self._schema = schema
        self.model: nn.Module | None = None
        self.last_loss: torch.Tensor | None = None

    # --- model ----------------------------------------------------------------------------

    def model_dims(self, schema: FeatureSchema) -> ModelDims:
        """The sizes, backend and seed the zoo model is built with."""
        return ModelDims.from_schema(schema, backend=self.embedding.backend, seed=self.seed)

    def build_model(self, schema: FeatureSchema) -> SparseDenseModel:
        """The unsharded model for `schema`'s tables (the task's composite of its zoo model)."""
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def _resolve_schema(self) -> FeatureSchema:
        if self._schema is not None:
            return self._schema
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "schema"):
            raise ValueError(
                f"{type(self).__name__}: no feature schema; pass schema=... or train with a "
                "lifeseq.trainers.data.LifeseqDataModule (it builds the schema in setup())"
            )
        return datamodule.schema

    def configure_model(self) -> None:
        """Build the model and, for `embedding.backend: torchrec`, shard it (every rank)."""
        if self.model is not None:
            return
        model: nn.Module = self.build_model(self._resolve_schema())
        if self.embedding.backend == "torchrec":
            if not dist.is_initialized():
                raise RuntimeError(
                    f"{type(self).__name__}: embedding.backend torchrec needs a process group; use "
                    "trainer.strategy lifeseq.trainers.strategy.TorchRecStrategy (any world size)"
                )
            device = self.trainer.strategy.root_device if self._trainer else torch.device("cpu")
            model = shard_model(model, self.sharding, device, dist.group.WORLD)
        self.model = model

    def setup_model(self, schema: FeatureSchema) -> SparseDenseModel:
        """Build the model for `schema` outside a Trainer (benchmarks, hand-written loops);
        returns it. The torchrec backend needs a process group (see `configure_model`)."""
        self._schema = schema
        self.model = None
        self.configure_model()
        return self.core

    def forward(self, batch: Any) -> Any:
        """The model's output for `batch` (through the DMP/DDP wrappers)."""
        assert self.model is not None, "configure_model() has not run"
        return self.model(batch)

    @property
    def core(self) -> SparseDenseModel:
        """The model inside the DistributedModelParallel / DDP wrappers (sharded tables
        included)."""
        assert self.model is not None, "configure_model() has not run"
        module = self.model
        while not isinstance(module, SparseDenseModel) and hasattr(module, "module"):
            module = module.module
        assert isinstance(module, SparseDenseModel), type(module)
        return module

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters updated by the dense optimizer (not by a fused embedding optimizer)."""
        assert self.model is not None
        if self.embedding.backend == "torchrec":
            from torchrec.optim.optimizers import in_backward_optimizer_filter

            return [p for _, p in in_backward_optimizer_filter(self.model.named_parameters())]
        return [p for p in self.model.parameters() if p.requires_grad]

    # --- steps ----------------------------------------------------------------------------

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        """Loss of `batch`; updates the `stage` (`val`/`test`) metrics (overridden)."""
        raise NotImplementedError(f"{type(self).__name__}._shared_step")

    def _start_eval(self, stage: str) -> None:
        """Prepare a `stage` evaluation pass (overridden where a task needs to, e.g. the item
        table of full ranking)."""

    def _compute_eval(self, stage: str) -> dict[str, torch.Tensor]:
        """The `stage` metrics, exact over all ranks, and reset them (overridden)."""
        raise NotImplementedError(f"{type(self).__name__}._compute_eval")

    def _log_eval(self, stage: str) -> None:
        """Log the `stage` metrics at the end of an evaluation epoch as `stage/NAME`."""
        # compute() syncs over ranks, so the values are exact global ones on every rank
        # (sync_dist then only averages identical values).
        for name, value in self._compute_eval(stage).items():
            prog_bar = name in self.progress_metrics
            self.log(f"{stage}/{name}", value, prog_bar=prog_bar, sync_dist=True)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        """Validation metrics of `batches` outside a Trainer (eval mode, this process only):
        the values `val/*` would log."""
        was_training = self.training
        self.eval()
        self._start_eval("val")
        for batch in batches:
            self._shared_step(batch, "val")
        values = {name: float(value) for name, value in self._compute_eval("val").items()}
        self.train(was_training)
        return values

    def log_train_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Record a training step's loss (`train/loss`, rank-local, per step; `last_loss` for
        the callbacks) and return it."""
        self.last_loss = loss.detach()
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=1)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    # --- checkpoint extras ------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp the feature-schema hash and every rank's RNG states (`trainers.run_state`)."""
        world_size = self.trainer.world_size if self._trainer is not None else 1
        run_state.stamp(
            checkpoint,
            self._resolve_schema().hash(),
            lambda t: self.all_gather(t.to(self.device)),
            world_size,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another feature schema; restore this rank's RNG states."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer else None
        run_state.restore(
            checkpoint, self._resolve_schema().hash(), rank, str(path or "checkpoint")
        )

    # --- optimizers -----------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Dense optimizer combined with the fused sparse one (torchrec) or alone (torch)."""
        assert self.model is not None
        if self.embedding.backend == "torchrec":
            return combined_optimizer(self.model, self.dense_optimizer.factory())
        return self.dense_optimizer.factory()(self.dense_parameters())

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip dense gradients only (`trainer.gradient_clip_val` / `_algorithm`).

        Embedding rows of the torchrec backend are updated inside backward by the fused
        optimizer: their gradients never exist here, so clipping cannot (and does not) apply to
        them.
        """
        if not gradient_clip_val:
            return
        params = [p for p in self.dense_parameters() if p.grad is not None]
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        elif gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            raise ValueError(
                f"trainer.gradient_clip_algorithm: expected 'norm' or 'value', "
                f"got {gradient_clip_algorithm!r}"
            )


def module_from_hparams(hparams: dict[str, Any], backend: str | None = None) -> PlatformModule:
    """The task module a checkpoint's hyper-parameters describe (`_class_path` + init args, as
    LightningCLI saves them), built as LightningCLI builds it; `backend` replaces the embedding
    backend when given.

    Raises:
        ValueError: no `_class_path`, or init args the class does not accept (naming them).
    """
    from jsonargparse import ArgumentParser

    class_path = hparams.get("_class_path")
    if not class_path:
        raise ValueError(
            "hyper_parameters have no _class_path (not a LightningCLI run?); train with "
            "lifeseq train"
        )
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if backend is not None:
        init_args["embedding"] = {**(init_args.get("embedding") or {}), "backend": backend}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(PlatformModule, "model")
    config = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    module = parser.instantiate_classes(config).model
    assert isinstance(module, PlatformModule)
    return module
