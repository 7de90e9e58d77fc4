"""`CtrModule`: the LightningModule that trains CTR models on `CtrBatch`es.

    lifeseq train fit --config configs/smoke.yaml --data.root OUT

Model building, sharding, optimizers and checkpoint extras come from
`trainers.platform_module.PlatformModule`; this module adds the CTR step and metrics:

* `build_model(schema)`: the smoke model (`models.smoke.SmokeCtrModel`); `LifelongCtrModule`
  overrides it.
* `_shared_step(batch, stage)`: logits → `model.loss` (weighted, finite on padding batches).
  Logs `train/loss` (per step, rank-local), `val/loss` / `test/loss` (exact global mean over
  targets, `torchmetrics.MeanMetric`), `val/auc` / `test/auc` (`BinaryAUROC`, all ranks), and
  logloss / GAUC (`EvalMetrics`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchmetrics
from torch import nn

from features.batch import CtrBatch
from features.schema import FeatureSchema
from models.lifelong_ctr import CtrOutput
from models.smoke import SmokeConfig, SmokeCtrModel
from trainers.metrics import GroupedAUC, LogLoss
from trainers.platform_module import (
    DenseOptimizerConfig,
    EmbeddingConfig,
    PlatformModule,
    combined_optimizer,
)
from trainers.sharding import ShardingConfig

__all__ = [
    "CtrModule",
    "DenseOptimizerConfig",
    "EmbeddingConfig",
    "EvalMetrics",
    "combined_optimizer",
]


class EvalMetrics(nn.Module):
    """Validation/test metrics of CTR models, exact over all ranks.

    * `loss`: the training objective (main BCE plus any auxiliary loss), mean over targets;
    * `logloss`: binary cross-entropy of the main logits, mean over targets (`LogLoss`);
    * `auc`: global AUC over all targets (`torchmetrics` `BinaryAUROC`);
    * `gauc`: user-grouped AUC weighted by the user's number of targets (`GroupedAUC`); users
      whose targets all have one label are skipped — `gauc_users` / `gauc_skipped_users` count
      them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loss = torchmetrics.MeanMetric()
        self.logloss = LogLoss(validate_args=False)
        self.auc = torchmetrics.classification.BinaryAUROC()
        self.gauc = GroupedAUC(validate_args=False)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, batch: CtrBatch) -> None:
        """Add one batch: its scalar loss (mean over its targets), (T,) logits, labels."""
        targets = batch.num_targets
        if targets:
            self.loss.update(loss / batch.weight, weight=targets)
        self.logloss.update(logits.float(), batch.label)
        # Always update, also with a padding batch's empty tensors: a rank whose AUC state
        # stayed an empty list would gather tensors of another dtype (a collective mismatch).
        self.auc.update(torch.sigmoid(logits.float()), batch.label.long())
        self.gauc.update(logits.float(), batch.label, batch.target_user)

    def compute(self) -> dict[str, torch.Tensor]:
        """{name: value} synced over ranks."""
        details = self.gauc.compute_details()
        return {
            "loss": self.loss.compute(),
            "logloss": self.logloss.compute(),
            "auc": self.auc.compute(),
            "gauc": details["gauc"],
            "gauc_users": details["groups"].float(),
            "gauc_skipped_users": details["skipped_groups"].float(),
        }

    def reset(self) -> None:
        """Clear all states (after logging an epoch)."""
        for metric in (self.loss, self.logloss, self.auc, self.gauc):
            metric.reset()


class CtrModule(PlatformModule):
    """Trains a CTR model (default: `models.smoke.SmokeCtrModel`) on `CtrBatch`es.

    Args:
        hidden: widths of the smoke model's MLP hidden layers.
        embedding: embedding backend.
        sharding: TorchRec sharding and fused embedding optimizer (torchrec backend).
        optimizer: dense optimizer.
        seed: initialisation seed of the model (same weights on every rank and world size).
        schema: feature schema; None reads `trainer.datamodule.schema` in `configure_model`.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (32,),
        embedding: EmbeddingConfig | None = None,
        sharding: ShardingConfig | None = None,
        optimizer: DenseOptimizerConfig | None = None,
        seed: int = 0,
        schema: FeatureSchema | None = None,
    ) -> None:
        super().__init__(
            embedding=embedding, sharding=sharding, optimizer=optimizer, seed=seed, schema=schema
        )
        self.hidden = tuple(hidden)
        self._loss_fn: Callable[[torch.Tensor, CtrBatch], torch.Tensor] | None = None
        self.val_metrics = EvalMetrics()
        self.test_metrics = EvalMetrics()

    def build_model(self, schema: FeatureSchema) -> nn.Module:
        """The unsharded model; override to train another CTR model on the same platform.

        The returned module maps a `CtrBatch` to (T,) logits or a `CtrOutput`, and has
        `loss(output, batch)`.
        """
        config = SmokeConfig.from_schema(
            schema, hidden=self.hidden, backend=self.embedding.backend, seed=self.seed
        )
        return SmokeCtrModel(config)

    def on_model_built(self, model: nn.Module) -> None:
        """Keep the unsharded model's `loss` (DMP/DDP wrappers do not expose it)."""
        self._loss_fn = model.loss  # type: ignore[assignment]

    def _shared_step(self, batch: CtrBatch, stage: str) -> torch.Tensor:
        output = self(batch)
        logits = output.logits if isinstance(output, CtrOutput) else output  # (T,)
        assert self._loss_fn is not None
        loss = self._loss_fn(output, batch)
        if stage == "train":
            self.last_loss = loss.detach()
            self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=1)
            return loss
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(loss.detach(), logits.detach(), batch)
        return loss

    def _log_eval(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        # compute() syncs over ranks, so the values are exact global ones on every rank
        # (sync_dist then only averages identical values).
        for name, value in metrics.compute().items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("auc", "gauc"), sync_dist=True)
        metrics.reset()
