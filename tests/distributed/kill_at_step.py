"""Test helper callback: SIGKILL the whole training job at a given step (a real `kill -9`)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SigkillAtStep(L.Callback):
    """After global step `step`, SIGKILL the job: rank 0 kills the torchrun agent (its parent),
    then every rank kills itself — no process gets a chance to save or clean up (like `kill -9`
    of every process of the job). No collective runs between a step's backward and this hook,
    so every rank reaches it.

    Args:
        step: global step after which to kill.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if trainer.global_step >= self.step:
            if trainer.global_rank == 0:
                os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
