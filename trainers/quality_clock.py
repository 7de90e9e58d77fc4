"""`QualityClock`: the test metrics and the elapsed fit time at every validation point, for
time-to-quality measurements (`jobs.bench_zoo`).

    trainer:
      callbacks:
        - class_path: lifeseq.trainers.quality_clock.QualityClock
          init_args: {path: RUN/quality_clock.json}

After each validation pass (not the sanity check) it notes the wall-clock seconds since the
start of `fit` — minus the time of its own test evaluations, so the clock reads what a run
without it would have taken — and then evaluates the current weights on the test split
(`PlatformModule.evaluate` over `trainer.datamodule.test_dataloader()`, the module's own
evaluation settings). The series is rewritten to `path` as JSON after each point, so a run
that dies keeps what it measured.

It is a measurement, never a selection: nothing it computes is logged or reaches a checkpoint
callback, and it leaves training as it found it — the RNG states (torch CPU and CUDA, numpy,
`random`) are restored after the evaluation (its loss draws negatives), the module goes back to
the mode it was in, and the evaluation state it uses is reset by `evaluate` itself. One process
only: `evaluate` runs outside Lightning's loops, which do not synchronise ranks for it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

#: File name of the series when no `path` is given (under `trainer.default_root_dir`).
DEFAULT_NAME = "quality_clock.json"


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the body, then restore the torch (CPU and every CUDA device), numpy and `random`
    RNG states to what they were before it."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class QualityClock(L.Callback):
    """Test metrics and elapsed fit seconds at every validation point (module docstring).

    Args:
        path: where the JSON series is written (default
            `trainer.default_root_dir/quality_clock.json`). Each point is
            `{"step", "epoch", "fit_seconds", "test_seconds", "val": {name: value}, "test":
            {name: value}}` (`test_seconds`: that point's test evaluation, not in any
            `fit_seconds`).

    Raises:
        ValueError: on `fit` with more than one process.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.points: list[dict[str, Any]] = []
        self._start: float | None = None
        self._excluded = 0.0

    def _out(self, trainer: L.Trainer) -> Path:
        return Path(self.path) if self.path else Path(trainer.default_root_dir) / DEFAULT_NAME

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size != 1:
            raise ValueError(
                f"lifeseq.trainers.quality_clock.QualityClock: runs in one process only (world size "
                f"{trainer.world_size}); drop the callback or train with one process"
            )
        self.points = []
        self._excluded = 0.0
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._start is None:
            return
        began = time.perf_counter()
        fit_seconds = began - self._start - self._excluded
        val = {
            name.split("/", 1)[1]: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/")
        }
        test = self.evaluate_test(trainer, pl_module)
        self.points.append(
            {
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "fit_seconds": round(fit_seconds, 3),
                "test_seconds": round(time.perf_counter() - began, 3),
                "val": val,
                "test": test,
            }
        )
        out = self._out(trainer)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(self.points, indent=1) + "\n")
        partial.replace(out)
        self._excluded += time.perf_counter() - began

    @staticmethod
    def evaluate_test(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The module's evaluation metrics on the test split, RNG states left untouched."""
        device = pl_module.device
        loader = trainer.datamodule.test_dataloader()
        with preserved_rng(), trainer.precision_plugin.test_step_context():
            return pl_module.evaluate(batch.to(device) for batch in loader)
