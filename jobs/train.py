"""`lifeseq train`: LightningCLI over any `PlatformModule` (`CtrModule`, `LifelongCtrModule`,
`GenerativeModule`) + `LifeseqDataModule` (fit, validate, test).

One process (CPU, gloo process group of size 1):

    python jobs/train.py fit --config configs/smoke.yaml --data.root OUT \\
        --trainer.default_root_dir RUN --trainer.max_steps 50

Two processes on one machine:

    torchrun --nproc-per-node 2 jobs/train.py fit --config configs/smoke.yaml \\
        --data.root OUT --trainer.default_root_dir RUN --trainer.max_steps 50

Two "nodes" (start this twice, e.g. in two shells; same PORT):

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \\
        --rdzv-endpoint 127.0.0.1:PORT jobs/train.py fit --config configs/smoke.yaml \\
        --data.root OUT --trainer.default_root_dir RUN --trainer.max_steps 50

Resume, evaluate:

    torchrun ... jobs/train.py fit  --config configs/smoke.yaml ... --ckpt_path last
    torchrun ... jobs/train.py test --config configs/smoke.yaml ... --ckpt_path RUN/checkpoints/last.ckpt

`trainer.devices` and `trainer.num_nodes` default to torchrun's `LOCAL_WORLD_SIZE` and
`WORLD_SIZE / LOCAL_WORLD_SIZE` (1 and 1 without torchrun). Loggers default to CSV and
TensorBoard under `RUN/logs/csv/version_N/` (with `training_curves.png` from
`trainers.callbacks.TrainingCurves` and the resolved `config.yaml`) and
`RUN/logs/tensorboard/version_N/`; checkpoints are sharded
directories under `RUN/checkpoints/` (`last.ckpt/`, `step=N.ckpt/`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `torchrun jobs/train.py` runs this file as a script
    sys.path.insert(0, str(REPO_ROOT))

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from trainers.data import LifeseqDataModule  # noqa: E402
from trainers.platform_module import PlatformModule  # noqa: E402


def _torchrun_layout() -> tuple[int, int]:
    """(devices per node, nodes) from torchrun's environment; (1, 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return local, max(1, world // max(1, local))


class LifeseqCLI(LightningCLI):
    """LightningCLI with torchrun-derived device counts and default CSV + TensorBoard loggers."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        devices, nodes = _torchrun_layout()
        parser.set_defaults({"trainer.devices": devices, "trainer.num_nodes": nodes})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.logger in (None, True):
            root = trainer.default_root_dir or os.getcwd()
            trainer.logger = [
                {
                    "class_path": f"lightning.pytorch.loggers.{cls}",
                    "init_args": {"save_dir": str(Path(root) / "logs"), "name": name},
                }
                for cls, name in (("CSVLogger", "csv"), ("TensorBoardLogger", "tensorboard"))
            ]
        # A fixed checkpoint directory (not per logger version), so `--ckpt_path last` of a
        # later run finds the previous run's `last.ckpt`.
        for callback in trainer.callbacks or []:
            class_path = getattr(callback, "class_path", "") or ""
            if class_path.endswith(
                ("ModelCheckpoint", "LastCheckpoint")
            ) and not callback.init_args.get("dirpath"):
                root = trainer.default_root_dir or os.getcwd()
                callback.init_args["dirpath"] = str(Path(root) / "checkpoints")


def main(argv: list[str] | None = None) -> int:
    """Run `fit`, `validate` or `test` (argv as after `lifeseq train`)."""
    logging.basicConfig(
        level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    LifeseqCLI(
        PlatformModule,
        LifeseqDataModule,
        subclass_mode_model=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
    )
    _shutdown_process_group()
    return 0


def _shutdown_process_group() -> None:
    """Leave the process group together: without this, a rank's interpreter exit may tear
    down gloo threads while a peer still talks to it (seen as SIGABRT "terminate called
    without an active exception" on one "node" and a hung peer, ~1 run in 10 with --nnodes 2).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
