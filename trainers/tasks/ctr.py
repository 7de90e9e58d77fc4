"""`CtrModule`: the CTR task — a zoo `CtrModel` trained on `CtrBatch`es with binary
cross-entropy, evaluated by AUC, GAUC and logloss.

    lifeseq train fit --config configs/smoke.yaml --data.root OUT
    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/twin.yaml --data.root OUT

Model building, sharding, optimizers and checkpoint extras come from
`trainers.platform_module.PlatformModule`; the model is `model` (YAML `class_path`, e.g.
`models.zoo.ctr.lifelong.LifelongCtr` or `models.zoo.ctr.smoke.SmokeCtr`) inside a
`models.ctr.CtrRecommender`. This task owns:

* the loss: BCE over targets, plus `aux_weight` × BCE of a model's auxiliary logits (SIM soft),
  plus a model's own auxiliary loss `CtrOutput.aux_loss` (DIEN's next-behavior loss), times
  `batch.weight` (finite, 0, on a padding batch);
* the metrics: `train/loss` per step (rank-local); `val/` and `test/` `loss` (exact global mean
  over targets), `auc` (`BinaryAUROC`), `logloss`, `gauc` (`EvalMetrics`), exact over ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torchmetrics
from torch import nn

from lifeseq.features.batch import CtrBatch
from lifeseq.features.schema import FeatureSchema
from lifeseq.models.ctr import CtrRecommender
from lifeseq.models.ctr_features import CtrOutput
from lifeseq.models.interfaces import CtrModel, ModelDims
from lifeseq.trainers.cold_items import (
    CHECKPOINT_KEY,
    TRACKED,
    ColdItemConfig,
    ItemTimes,
    TrainedRows,
    hold_out_items,
)
from lifeseq.trainers.metrics import GroupedAUC, LogLoss
from lifeseq.trainers.platform_module import DenseOptimizerConfig, EmbeddingConfig, PlatformModule
from lifeseq.trainers.run_state import SECTION
from lifeseq.trainers.sharding import ShardingConfig

log = logging.getLogger(__name__)


def bce(logits: torch.Tensor, batch: CtrBatch) -> torch.Tensor:
    """`batch.weight` × mean BCE of (T,) logits against `batch.label`; finite (0) when T = 0,
    where a mean would be NaN."""
    per_target = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), batch.label, reduction="none"
    )  # (T,)
    return batch.weight * per_target.sum() / max(batch.num_targets, 1)


def ctr_loss(output: CtrOutput, batch: CtrBatch) -> torch.Tensor:
    """BCE of the logits plus `aux_weight` × BCE of the auxiliary logits, plus the model's own
    auxiliary loss `aux_loss` × `batch.weight` (a scalar)."""
    total = bce(output.logits, batch)
    if output.aux_logits is not None:
        total = total + output.aux_weight * bce(output.aux_logits, batch)
    if output.aux_loss is not None:
        total = total + batch.weight * output.aux_loss
    return total


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
    """Trains a CTR model from the zoo on `CtrBatch`es.

    Args:
        model: the zoo model (YAML `class_path` + `init_args`; called with the data's
            `ModelDims`), e.g. `models.zoo.ctr.lifelong.LifelongCtr`.
        embedding: embedding backend.
        sharding: TorchRec sharding and fused embedding optimizer (torchrec backend).
        optimizer: dense optimizer.
        seed: initialisation seed of the model (same weights on every rank and world size).
        schema: feature schema; None reads `trainer.datamodule.schema` in `configure_model`.
        cold_items: how items the model never trained on are learned and scored
            (`trainers.cold_items.ColdItemConfig`: new items' first days train the OOV rows;
            untrained ids evaluate as OOV).
    """

    progress_metrics = ("auc", "gauc")
    data_view = "ctr"

    def __init__(
        self,
        model: Callable[[ModelDims], CtrModel],
        embedding: EmbeddingConfig | None = None,
        sharding: ShardingConfig | None = None,
        optimizer: DenseOptimizerConfig | None = None,
        seed: int = 0,
        schema: FeatureSchema | None = None,
        cold_items: ColdItemConfig | None = None,
    ) -> None:
        super().__init__(
            embedding=embedding, sharding=sharding, optimizer=optimizer, seed=seed, schema=schema
        )
        self.zoo_model = model
        self.cold_items = cold_items or ColdItemConfig()
        self.trained_rows: TrainedRows | None = None
        self._times: tuple[ItemTimes | None] | None = None
        self.val_metrics = EvalMetrics()
        self.test_metrics = EvalMetrics()

    def build_model(self, schema: FeatureSchema) -> CtrRecommender:
        """The zoo model and its tables for `schema`."""
        return CtrRecommender(self.model_dims(schema), self.zoo_model)

    def _rows(self) -> TrainedRows:
        if self.trained_rows is None:
            tables = self._resolve_schema().tables
            self.trained_rows = TrainedRows({name: tables[name].num_embeddings for name in TRACKED})
        return self.trained_rows

    def _item_times(self, device: torch.device) -> ItemTimes | None:
        """Each item's first and last event times (`trainers.cold_items.ItemTimes`) from the
        datamodule's build, on `device`: read and moved once; None without a datamodule or
        the times (logged)."""
        if self._times is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
            root = getattr(datamodule, "root", None)
            times = None
            if root is not None and self.cold_items.share > 0:
                rows = self._resolve_schema().tables["item"].num_embeddings
                times = ItemTimes.read(root, rows)
                if times is None:
                    log.warning(
                        "cold_items: no item first/last event times under %s (no vocab/item, "
                        "or a build made before they were recorded): the OOV rows train on "
                        "%.0f%% of the events by hash, not on new items' first days", root,
                        100 * self.cold_items.held_out_share(times_known=False),
                    )  # fmt: skip
            self._times = (times,)
        times = self._times[0]
        if times is not None and times.first.device != device:
            times = times.to(device)
            self._times = (times,)
        return times

    def prepare(self, batch: CtrBatch, stage: str) -> CtrBatch:
        """The batch the model sees (`trainers.cold_items`): in training, the held-out events
        looked up as OOV and every row looked up recorded; in evaluation, untrained ids as OOV
        (once training recorded any row)."""
        if stage == "train":
            times = self._item_times(batch.target_item.device)
            share = self.cold_items.held_out_share(times_known=times is not None)
            batch = hold_out_items(batch, share, self.seed, times, self.cold_items.new_item_seconds)
            self._rows().mark(batch)
            return batch
        if self.cold_items.untrained_as_oov and self._rows().any():
            return self._rows().remap(batch)
        return batch

    def training_loss(self, batch: CtrBatch) -> torch.Tensor:
        """The loss a training step minimizes on `batch` (no logging)."""
        batch = self.prepare(batch, "train")
        return ctr_loss(self(batch), batch)

    def _start_eval(self, stage: str) -> None:
        """Every rank evaluates with the rows trained on any rank."""
        self._rows().sync()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The platform's extras plus the trained rows, merged over ranks (collective)."""
        super().on_save_checkpoint(checkpoint)
        rows = self._rows()
        rows.sync()
        checkpoint[SECTION][CHECKPOINT_KEY] = rows.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The platform's checks plus the trained rows (a checkpoint from before they were
        recorded leaves every row untrained: nothing is remapped)."""
        super().on_load_checkpoint(checkpoint)
        state = (checkpoint.get(SECTION) or {}).get(CHECKPOINT_KEY)
        if state:
            self._rows().load_state(state)

    def _shared_step(self, batch: CtrBatch, stage: str) -> torch.Tensor:
        batch = self.prepare(batch, stage)
        output = self(batch)
        loss = ctr_loss(output, batch)
        if stage == "train":
            return self.log_train_loss(loss)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(loss.detach(), output.logits.detach(), batch)
        return loss

    def _compute_eval(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        metrics.reset()
        return values
