"""Training callbacks: non-finite guard, samples/s in the progress bar, training-curve PNG.

trainer:
  callbacks:
    - class_path: trainers.callbacks.LastCheckpoint
      init_args: {save_last: true, every_n_train_steps: 25}
    - class_path: trainers.callbacks.NonFiniteGuard
    - class_path: trainers.callbacks.Throughput
    - class_path: trainers.callbacks.TrainingCurves
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
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

logger = logging.getLogger(__name__)


class LastCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes `last.ckpt` at the end of training.

    Lightning's `save_last` skips the final step when an earlier `last.ckpt` exists and the
    run stops on `max_steps` between `every_n_train_steps` saves; `fit --ckpt_path last` then
    would restart from an older step.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)


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


class Throughput(L.Callback):
    """Log `train/samples_per_s` to the progress bar: training targets per second of the job.

    Estimated as rank 0's targets per second times the world size (no collective per step;
    ranks read equal shares of the data), over a moving window of `window` steps.

    Args:
        window: number of steps in the moving window.
    """

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"Throughput.window: expected >= 1, got {window}")
        self.window = window
        self._times: list[float] = []
        self._samples: list[int] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._times:
            self._times.append(time.perf_counter())
            self._samples.append(0)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        count = int(getattr(batch, "num_targets", 0)) * trainer.world_size
        self._times.append(time.perf_counter())
        self._samples.append(self._samples[-1] + count)
        if len(self._times) > self.window + 1:
            self._times.pop(0)
            self._samples.pop(0)
        elapsed = self._times[-1] - self._times[0]
        if elapsed > 0:
            rate = (self._samples[-1] - self._samples[0]) / elapsed
            pl_module.log("train/samples_per_s", rate, prog_bar=True, on_step=True, batch_size=1)


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


def plot_training_curves(metrics_csv: Path, out: Path) -> Path:
    """PNG of every `train/*`, `val/*` metric (but throughput) of a CSVLogger file, one panel
    per metric name suffix (`loss`, `auc`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _read_metrics(metrics_csv)
    panels: dict[str, list[str]] = {}
    for key in sorted(series):
        if "samples_per_s" in key:
            continue
        panels.setdefault(key.split("/")[-1], []).append(key)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.5))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for axis, (name, keys) in zip(axes, sorted(panels.items()), strict=False):
        for key in keys:
            steps, values = zip(*series[key], strict=True)
            axis.plot(steps, values, marker="o" if len(steps) < 20 else None, label=key)
        axis.set_xlabel("step")
        axis.set_title(name)
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
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
