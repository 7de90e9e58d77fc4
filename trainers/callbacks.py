"""Training callbacks: last checkpoint at the final step, non-finite guard, targets/s (Lightning's
`ThroughputMonitor`), data-wait share, training-curve PNG.

trainer:
  callbacks:
    - class_path: lifeseq.trainers.callbacks.LastCheckpoint
      init_args: {save_last: true, every_n_train_steps: 25}
    - class_path: lifeseq.trainers.callbacks.NonFiniteGuard
    - class_path: lifeseq.trainers.callbacks.Throughput
    - class_path: lifeseq.trainers.callbacks.TrainingCurves
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger

logger = logging.getLogger(__name__)


class LastCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `save_last=True` also holds the final step of training.

    Lightning writes `last.ckpt` only along with a top-k save (every `every_n_train_steps`, or
    at validation), and its `on_train_end` only when no checkpoint was written during the run.
    A run stopping on `max_steps` between saves (60 steps, a save every 25) thus ends with
    `last.ckpt` at step 50, and `fit --ckpt_path last` would repeat 10 steps. So at the end of
    training this callback rewrites `last_model_path` with `trainer.save_checkpoint` (every
    rank: the checkpoint is sharded) unless a checkpoint of the final step was written.
    Lightning keeps that step private; `on_save_checkpoint`, which Lightning calls for every
    checkpoint written, notes it here. Each save of this callback comes with a `last.ckpt`
    save; a checkpoint written at the final step by another callback would count as well
    (none of our configs has one). With `save_last="link"` Lightning's behaviour is kept.
    """

    _newest_saved_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._newest_saved_step = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        self._newest_saved_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last is not True or not self.last_model_path:
            return
        if self._newest_saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.last_model_path, self.save_weights_only)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.after_save_checkpoint(self)


class NonFiniteError(FloatingPointError):
    """Training stopped on a NaN/inf loss or gradient; the message names step and culprit."""


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (collective, so every rank stops together)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


class NonFiniteGuard(L.Callback):
    """Stop training on a NaN/inf loss or dense gradient, naming the step and what broke.

    Checked after backward, before the dense optimizer step (`on_before_optimizer_step`): the
    step's loss (`pl_module.last_loss`, set by `CtrModule`) and the gradient of every dense
    parameter of every optimizer parameter group. Fused embedding rows are updated inside
    backward and have no visible gradient: a NaN there shows up as a NaN loss one step later.
    All ranks agree (one all-reduce per step) and raise `NonFiniteError` together, so no rank
    hangs in a collective.
    """

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        problems: list[str] = []
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None and not bool(torch.isfinite(loss).all()):
            problems.append(f"loss = {float(loss)}")
        names = {id(p): n for n, p in pl_module.named_parameters()}
        for index, group in enumerate(optimizer.param_groups):
            for param in group["params"]:
                if not isinstance(param, torch.nn.Parameter) or param.grad is None:
                    continue  # fused embedding weights (ShardedTensor): no gradient here
                grad = param.grad
                if not bool(torch.isfinite(grad).all()):
                    name = names.get(id(param), f"<{tuple(param.shape)}>")
                    problems.append(f"gradient of {name} (param group {index})")
        device = loss.device if loss is not None else pl_module.device
        if _any_rank(bool(problems), device):
            where = "; ".join(problems) if problems else "another rank"
            message = (
                f"non-finite values at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}), rank {trainer.global_rank}: {where}"
            )
            logger.error(message)
            raise NonFiniteError(message)


def num_targets(batch: Any) -> int:
    """The targets of a batch (`CtrBatch` / `GenerativeBatch.num_targets`); 0 for padding."""
    return int(batch.num_targets)


class Throughput(ThroughputMonitor):
    """Lightning's `ThroughputMonitor` over training targets, with the job's rate in the
    progress bar.

    Lightning measures on rank 0 (times the world size: ranks read equal shares) over a moving
    window of `window` steps, takes validation time out of the training clock, and logs to the
    loggers every `log_every_n_steps`: `train/samples_per_sec` (targets per second of the job,
    only when the world size is above 1), `train/device/samples_per_sec` (of one rank: with one
    rank, the job's), `train/[device/]batches_per_sec`, the totals `train/time`,
    `train/batches`, `train/samples`, and the same under `validate/` during validation.

    What this subclass adds, and why:

    - counts targets (`batch_size_fn=num_targets`), not users, and takes `window` as a typed
      argument: LightningCLI cannot pass a callable or `ThroughputMonitor`'s `**kwargs`
      (`window_size`), and its default window of 100 steps leaves short runs without a rate;
    - skips padding batches (no targets): `Throughput.update` refuses fewer samples than
      batches, so a padding batch first on rank 0 would stop the run;
    - measures nothing in `test` and `predict`: `test/*` keys are the results that benchmarks
      and golden tests read;
    - puts the job's rate in the progress bar (`ThroughputMonitor` logs to loggers only).

    Args:
        window: number of steps in the moving window.

    Raises:
        ValueError: if `window` < 1.
    """

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"Throughput.window: expected >= 1, got {window}")
        super().__init__(batch_size_fn=num_targets, window_size=window + 1)
        self.window = window

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if num_targets(batch) == 0:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        logged = trainer.logged_metrics
        rate = logged.get("train/samples_per_sec", logged.get("train/device/samples_per_sec"))
        if rate is not None:
            pl_module.log(
                "train/samples_per_sec", rate, prog_bar=True, logger=False, on_step=True,
                on_epoch=False, batch_size=1, rank_zero_only=True,
            )  # fmt: skip

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if num_targets(batch) > 0:
            super().on_validation_batch_end(
                trainer, pl_module, outputs, batch, batch_idx, dataloader_idx
            )

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: test metrics hold results only."""

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: test metrics hold results only."""

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: prediction is not measured."""

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: prediction is not measured."""


class DataWait(L.Callback):
    """Measure the share of training time spent waiting for data; log `train/data_wait_fraction`.

    Wait = from the end of one training step (`on_train_batch_end`) to the start of the next
    (`on_train_batch_start`): fetching the next batch from the DataLoader and moving it to the
    device. Step = from `on_train_batch_start` to `on_train_batch_end` (forward, backward,
    optimizer). The fraction is wait / (wait + step), over all steps after the first `skip`
    (start-up: worker spawn, first shard open). Rank 0's view; summary in `self.summary()`.

    Args:
        skip: initial steps left out of the measurement.
    """

    def __init__(self, skip: int = 2) -> None:
        if skip < 0:
            raise ValueError(f"DataWait.skip: expected >= 0, got {skip}")
        self.skip = skip
        self.wait_s = 0.0
        self.step_s = 0.0
        self.steps = 0
        self._seen = 0
        self._last_end: float | None = None
        self._start: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()
        if self._last_end is not None and self._seen > self.skip:
            self.wait_s += self._start - self._last_end

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._last_end = time.perf_counter()
        self._seen += 1
        if self._start is not None and self._seen > self.skip + 1:
            self.step_s += self._last_end - self._start
            self.steps += 1
            pl_module.log("train/data_wait_fraction", self.fraction(), on_step=True, batch_size=1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the gap across an epoch boundary includes validation

    def fraction(self) -> float:
        """wait / (wait + step) so far (0.0 before any measured step)."""
        total = self.wait_s + self.step_s
        return self.wait_s / total if total > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """Measured steps, seconds waiting, seconds stepping and the fraction."""
        return {
            "steps": self.steps,
            "wait_s": round(self.wait_s, 4),
            "step_s": round(self.step_s, 4),
            "fraction": round(self.fraction(), 4),
        }


def _read_metrics(path: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if step in (None, ""):
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                number = float(value)
                if math.isfinite(number):
                    series.setdefault(key, []).append((float(step), number))
    return series


#: Metrics shown in the training-curve grid, one panel each when logged (besides the loss and
#: throughput panels); bookkeeping metrics (`gauc_users`, `data_wait_fraction`, ...) stay in
#: the CSV.
CURVE_METRICS = ("auc", "gauc", "ndcg@10", "hr@10", "mrr")
#: Logged keys of the training throughput (targets per second), first found wins: the job's
#: rate (`Throughput`, logged when the world size is above 1), one rank's (with one rank, the
#: job's), and the key of runs before `Throughput` used Lightning's `ThroughputMonitor`.
THROUGHPUT_KEYS = ("train/samples_per_sec", "train/device/samples_per_sec", "train/samples_per_s")


def curve_panels(series: dict[str, list[tuple[float, float]]]) -> list[tuple[str, list[str]]]:
    """The grid's panels in order: (title, metric keys): the loss (train and val), each of
    `CURVE_METRICS` that was logged (val and test, train when logged), then throughput."""
    panels: list[tuple[str, list[str]]] = []
    loss = [k for k in ("train/loss", "val/loss") if k in series]
    if loss:
        panels.append(("loss", loss))
    for name in CURVE_METRICS:
        keys = [f"{split}/{name}" for split in ("train", "val") if f"{split}/{name}" in series]
        if keys:
            panels.append((name, keys))
    throughput = [k for k in THROUGHPUT_KEYS if k in series][:1]
    if throughput:
        panels.append(("training targets / s", throughput))
    return panels


def _write_values(axis: Any, values: dict[str, tuple[float, float]]) -> None:
    """Metrics logged once (one validation, one throughput window) as text lines."""
    axis.axis("off")
    axis.set_title("logged once")
    lines = [f"{key} = {value:.4g}   (step {step:.0f})" for key, (step, value) in values.items()]
    axis.text(0.02, 0.95, "\n".join(lines) or "no metrics logged", va="top", family="monospace",
              fontsize=9, transform=axis.transAxes)  # fmt: skip


def plot_training_curves(metrics_csv: Path, out: Path, columns: int = 3) -> Path:
    """PNG grid (at most `columns` wide) of the metrics that matter for the run: loss train vs
    val, the task's main metrics (`CURVE_METRICS`), training throughput; from a CSVLogger file.
    Lines with fewer than 20 points get markers (a validation every epoch shows as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _read_metrics(metrics_csv)
    panels = [p for p in curve_panels(series) if any(len(series[k]) > 1 for k in p[1])]
    single = [k for _, keys in curve_panels(series) for k in keys if len(series[k]) == 1]
    if single or not panels:
        panels.append(("single values", single))
    cols = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for axis, (title, keys) in zip(axes.flat, panels, strict=False):
        if title == "single values":
            _write_values(axis, {k: series[k][0] for k in keys})
            continue
        for key in keys:
            steps, values = zip(*series[key], strict=True)
            axis.plot(steps, values, marker="o" if len(steps) < 20 else None, ms=4, label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if keys:
            axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


class TrainingCurves(L.Callback):
    """At the end of `fit`, rank 0 writes `training_curves.png` next to the CSV logs."""

    filename = "training_curves.png"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for lg in trainer.loggers:
            if isinstance(lg, CSVLogger):
                lg.save()
                metrics = Path(lg.log_dir) / "metrics.csv"
                if metrics.is_file():
                    out = plot_training_curves(metrics, Path(lg.log_dir) / self.filename)
                    logger.info("training curves: %s", out)
                return
        logger.warning("TrainingCurves: no CSVLogger configured, no PNG written")
