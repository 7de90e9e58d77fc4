"""Training configs outside `lifeseq train`: parse a family's base + per-model YAML exactly as
LightningCLI does (same merge, same `class_path` resolution) and build the task module, for
benchmarks and reports that run a model without a Trainer.

    run = load_run_config([CONFIGS / "ctr" / "base.yaml", CONFIGS / "ctr" / "twin.yaml"],
                          ["--model.init_args.embedding.backend", "torch"])
    module = run.module                      # a trainers.platform_module.PlatformModule
    model = module.build_model(schema)       # its SparseDenseModel
    run.data["embedding_dim"], run.data["max_history"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser

from lifeseq.trainers.data import LifeseqDataModule
from lifeseq.trainers.platform_module import PlatformModule


@dataclass
class RunConfig:
    """A parsed training config.

    Attributes:
        module: the task module (model not built: call `build_model(schema)`).
        hparams: the module's hyper-parameters as LightningCLI saves them in a checkpoint
            (`_class_path` + init args, zoo models as nested `class_path`/`init_args` dicts).
        data: the `data:` init arguments.
        trainer: the `trainer:` section, unparsed.
    """

    module: PlatformModule
    hparams: dict[str, Any]
    data: dict[str, Any]
    trainer: dict[str, Any]


def load_run_config(configs: Sequence[Path], overrides: Sequence[str] = ()) -> RunConfig:
    """Parse `configs` (merged in order, as repeated `--config`) and command-line `overrides`.

    Raises:
        jsonargparse.ArgumentError: a bad key or value, naming it.
    """
    parser = LightningArgumentParser(exit_on_error=False, parser_mode="yaml")
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=bool | int, default=True)
    parser.add_argument("--trainer", type=dict, default={})
    parser.add_lightning_class_args(PlatformModule, "model", subclass_mode=True)
    parser.add_lightning_class_args(LifeseqDataModule, "data")
    args = [a for path in configs for a in ("--config", str(path))] + list(overrides)
    config = parser.parse_args(args)
    data = config.data.as_dict() if hasattr(config.data, "as_dict") else dict(config.data)
    model = yaml.safe_load(parser.dump(config, skip_check=True))["model"]
    hparams = {"_class_path": model["class_path"], **(model.get("init_args") or {})}
    module = parser.instantiate_classes(config).model
    return RunConfig(module=module, hparams=hparams, data=data, trainer=dict(config.trainer))
