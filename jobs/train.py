"""`lifeseq train`: LightningCLI over any task (`PlatformModule`: `trainers.tasks.ctr.CtrModule`,
`trainers.tasks.next_item.NextItemModule`, `trainers.tasks.masked_item.MaskedItemModule`) with a
zoo model chosen by `class_path`, + `LifeseqDataModule` (fit, validate, test). A family's
configs are a base plus a per-model file, passed in that order:

    lifeseq train fit --config configs/ctr/base.yaml --config configs/ctr/twin.yaml --data.root OUT

A misspelt `class_path` is refused with the valid choices; a config from before the model zoo
with the command that migrates it (`lifeseq migrate`).

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

import importlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `torchrun jobs/train.py` runs this file as a script
    sys.path.insert(0, str(REPO_ROOT))

from jsonargparse import Namespace  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from jobs.terminal import configure_logging  # noqa: E402
from trainers.data import LifeseqDataModule  # noqa: E402
from trainers.platform_module import PlatformModule  # noqa: E402


def _torchrun_layout() -> tuple[int, int]:
    """(devices per node, nodes) from torchrun's environment; (1, 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return local, max(1, world // max(1, local))


#: What jsonargparse's message says when a `class_path` does not resolve.
CLASS_PATH_ERRORS = (
    "has no attribute", "No module named", "Import path", "not a subclass", "dot import path",
)  # fmt: skip
#: The zoo's interfaces (`models.interfaces`), whose implementations `class_path` names.
INTERFACES = ("SequenceEncoder", "LongTermUnit", "CtrModel", "InputFeatures")


class LifeseqArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors about a zoo `class_path` list the valid choices."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Add the valid choices of the interface a bad `class_path` was meant for; a zoo model
        given where another interface goes exits 1 with two lines saying so (`misplaced`; only
        where the parser would exit: nested parsers raise, and their caller decides)."""
        refusal = misplaced(message) if self.exit_on_error else None
        if refusal:
            print(refusal, file=sys.stderr)
            sys.exit(1)
        hint = choices_hint(message)
        super().error(f"{message}{hint}", ex)


class StartupRefused(Exception):
    """A run the task cannot train (`trainers.fit_check`): `main` prints it and exits 1."""


#: Where a model of each zoo interface goes (the task it serves, the configs that use it), for
#: the refusal of one given elsewhere.
GOES = {
    "SequenceEncoder": (
        "the encoder of trainers.tasks.next_item.NextItemModule or "
        "trainers.tasks.masked_item.MaskedItemModule", "configs/sequential/",
    ),
    "LongTermUnit": (
        "the long_term unit of models.zoo.ctr.lifelong.LifelongCtr under "
        "trainers.tasks.ctr.CtrModule", "configs/ctr/",
    ),
    "CtrModel": ("the model of trainers.tasks.ctr.CtrModule", "configs/ctr/, configs/smoke.yaml"),
    "InputFeatures": (
        "the features of trainers.tasks.next_item.NextItemModule or "
        "trainers.tasks.masked_item.MaskedItemModule", "configs/sequential/",
    ),
}  # fmt: skip


def misplaced(message: str) -> str | None:
    """When jsonargparse's `message` refuses a zoo class given where a model of another
    interface goes (a `LongTermUnit` as a sequence encoder, a `SequenceEncoder` as a CTR
    model): `error: ...` naming the class, its interface, the task and what fits; else None."""
    from models import interfaces
    from models.zoo import choices

    expected = list(dict.fromkeys(re.findall(r"models\.interfaces\.(\w+)\]", message)))
    given: dict[str, str] = {}
    for path in dict.fromkeys(re.findall(r"models\.zoo\.[\w.]+\w", message)):
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if not isinstance(cls, type):
            continue
        kinds = [n for n in INTERFACES if issubclass(cls, getattr(interfaces, n))]
        if kinds:
            given[path] = kinds[0]
    wrong = [p for p, kind in given.items() if kind not in expected]
    slots = [n for n in expected if n in INTERFACES and n not in given.values()]
    if not wrong or not slots:
        return None
    path, slot = wrong[0], slots[0]
    home, configs = GOES[given[path]]
    return (
        f"error: {path} is a {given[path]}, given as {GOES[slot][0]} (a {slot}).\nWhat fits: a "
        f"{given[path]} is {home} ({configs}); valid {slot} class paths: "
        f"{', '.join(choices(getattr(interfaces, slot)))}"
    )


def choices_hint(message: str) -> str:
    """The valid class paths of the zoo interface whose `class_path` failed to resolve in
    `message`, as an appended line ('' when none did, or the list is already there)."""
    from models import interfaces
    from models.zoo import choices

    positions = [message.find(sign) for sign in CLASS_PATH_ERRORS if sign in message]
    if not positions:
        return ""
    before = message[: min(positions)]
    named = [
        (before.rfind(f"interfaces.{n}"), n) for n in INTERFACES if f"interfaces.{n}" in before
    ]
    if not named:
        return ""
    name = max(named)[1]
    if f"Valid {name} class paths" in message:
        return ""
    return f"\nValid {name} class paths: {', '.join(choices(getattr(interfaces, name)))}"


def config_error(argv: list[str]) -> str | None:
    """A message when a `--config` file or the `--ckpt_path` checkpoint is from before the
    model zoo (`trainers.legacy`), saying how to migrate it, or when a per-model config comes
    without its family's base before it or after another family's base (a CTR model file on
    the sequential base)."""
    import json

    import yaml

    from trainers.legacy import is_legacy

    seen_model = False
    base: Path | None = None
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--ckpt_path" and (Path(value) / "checkpoint.json").is_file():
            try:
                tree = json.loads((Path(value) / "checkpoint.json").read_text()).get("tree", {})
            except json.JSONDecodeError:
                continue
            path = (tree.get("hyper_parameters") or {}).get("_class_path")
            if is_legacy(path):
                return (
                    f"error: {value}: a checkpoint from before the model zoo (by {path}); "
                    f"convert it with `lifeseq migrate {value} --out NEW.ckpt` and pass "
                    "--ckpt_path NEW.ckpt"
                )
        if flag != "--config" or not Path(value).is_file():
            continue
        try:
            config = yaml.safe_load(Path(value).read_text()) or {}
        except yaml.YAMLError:
            continue
        model = config.get("model") if isinstance(config, dict) else None
        path = model.get("class_path") if isinstance(model, dict) else None
        family_base = Path(value).with_name("base.yaml")
        if Path(value).name == "base.yaml":
            base = Path(value)
        elif base is not None and family_base.is_file() and family_base.resolve() != base.resolve():
            return (
                f"error: {value} is a {family_base.parent.name} model file, but {base} is the "
                f"{base.parent.name} base.\nWhat fits: --config {family_base} --config {value}"
            )
        if path:
            seen_model = True
        elif isinstance(model, dict) and not seen_model:
            base = Path(value).with_name("base.yaml")
            hint = (
                f"--config {base} --config {value}" if base.is_file() else "its base config first"
            )
            return (
                f"error: {value} holds only what differs from its family's base config (it "
                f"names no model.class_path); pass the base first: {hint}"
            )
        if is_legacy(path):
            return (
                f"error: {value}: model.class_path {path} is from before the model zoo; "
                f"convert it with `lifeseq migrate {value} --out NEW.yaml` (a checkpoint too: "
                "`lifeseq migrate CKPT --out NEW.ckpt`), or use today's configs, e.g. "
                "--config configs/ctr/base.yaml --config configs/ctr/twin.yaml"
            )
    return None


class LifeseqCLI(LightningCLI):
    """LightningCLI with torchrun-derived device counts, default CSV + TensorBoard loggers,
    the zoo's valid choices in `class_path` errors, and a task that cannot train its model on
    the run's data refused before the Trainer exists (`StartupRefused`)."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Refuse a task/model/data mismatch (`trainers.fit_check.fit_error`), a full softmax
        over too large a catalog (`catalog_error`) and CTR windows the machine cannot hold
        (`window_memory_error`), then build the Trainer (nothing has run or been written yet)."""
        from features.schema import FeatureSchema
        from trainers.fit_check import (
            available_memory_bytes,
            catalog_error,
            fit_error,
            window_memory_error,
        )

        data = self.datamodule
        error = fit_error(self.model, data.view, data.feature_config)
        if error:
            raise StartupRefused(error)
        from pipeline import storage

        manifest = None
        try:
            manifest = storage.read_json(storage.join(data.root, "manifest.json"))
            schema = FeatureSchema.from_manifest_dict(manifest, data.feature_config)
        except (OSError, ValueError):  # the data module reports a missing or bad build itself
            schema = None
        error = catalog_error(self.model, schema) if schema else None
        if error:
            raise StartupRefused(error)
        if data.view == "ctr" and schema is not None:
            error = window_memory_error(
                data.batch_size,
                data.eval_batch_size,
                data.feature_config.max_history,
                (manifest or {}).get("max_user_events"),
                data.feature_config.embedding_dim,
                available_memory_bytes(str(kwargs.get("accelerator", "cpu"))),
            )
            if error:
                raise StartupRefused(error)
        return super().instantiate_trainer(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        devices, nodes = _torchrun_layout()
        parser.set_defaults({"trainer.devices": devices, "trainer.num_nodes": nodes})

    def instantiate_classes(self) -> None:
        """Instantiate the task and the data module; a config value they reject (a
        `ValueError` naming the field) is refused in one line, without a traceback."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            raise StartupRefused(f"error: {error}") from error

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
        _progress_bar_on_a_terminal(trainer)


def _progress_bar_on_a_terminal(trainer: Namespace) -> None:
    """Without a terminal (a log file, a captured subprocess) turn the progress bar off unless
    `enable_progress_bar` is given: its frames would only clutter the log. On a terminal
    Lightning picks its `RichProgressBar` itself (rich is installed): steps, samples/s and the
    metrics logged to the bar."""
    if trainer.enable_progress_bar is None and not sys.stdout.isatty():
        trainer.enable_progress_bar = False


def main(argv: list[str] | None = None) -> int:
    """Run `fit`, `validate` or `test` (argv as after `lifeseq train`)."""
    configure_logging(
        own_level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING
    )
    legacy = config_error(list(sys.argv[1:] if argv is None else argv))
    if legacy:
        print(legacy, file=sys.stderr)
        return 1
    try:
        LifeseqCLI(
            PlatformModule,
            LifeseqDataModule,
            subclass_mode_model=True,
            args=argv,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "yaml"},
            parser_class=LifeseqArgumentParser,
        )
    except StartupRefused as refused:
        if int(os.environ.get("RANK", "0")) == 0:
            print(refused, file=sys.stderr)
        return 1
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
