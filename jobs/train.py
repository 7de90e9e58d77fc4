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
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from lifeseq.jobs.terminal import configure_logging  # noqa: E402
from lifeseq.jobs.train_usage import (  # noqa: E402
    IMPORT_FAILURES,
    flags_in_help,
    help_hint,
    usage_error,
)
from lifeseq.pipeline.yaml_files import yaml_file_error  # noqa: E402
from lifeseq.trainers.data import LifeseqDataModule  # noqa: E402
from lifeseq.trainers.platform_module import PlatformModule  # noqa: E402

logger = logging.getLogger(__name__)

#: Subcommands that evaluate a trained model: refused without `--ckpt_path` unless
#: `--untrained true` asks for a freshly initialized one.
EVAL_SUBCOMMANDS = ("validate", "test", "predict")
#: Where a run goes without `--trainer.default_root_dir`: `runs/<name of the last --config>`.
RUNS_DIR = Path("runs")
#: `--ckpt_path` values Lightning resolves itself instead of a path.
CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def _torchrun_layout() -> tuple[int, int]:
    """(devices per node, nodes) from torchrun's environment; (1, 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return local, max(1, world // max(1, local))


#: The zoo's interfaces (`models.interfaces`), whose implementations `class_path` names.
INTERFACES = ("SequenceEncoder", "LongTermUnit", "CtrModel", "InputFeatures")


class LifeseqArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors name the flag or key in a line or two instead of a
    usage block and jsonargparse's nested report (`jobs.train_usage`), and list the valid
    choices of a bad zoo `class_path`.

    Args:
        argv: the command line being parsed (default `sys.argv[1:]`), to name the flag given.
    """

    def __init__(self, *args: Any, argv: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.argv = list(sys.argv[1:] if argv is None else argv)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print the condensed message and the help hint, exit 2; a zoo model given where
        another interface goes exits 1 with two lines saying so (`misplaced`). Only where the
        parser would exit: nested parsers raise, and their caller decides."""
        if not self.exit_on_error:
            super().error(message, ex)
        refusal = misplaced(message)
        if refusal:
            print(refusal, file=sys.stderr)
            sys.exit(1)
        text = usage_error(message, self.argv, flags_in_help(self.format_help()))
        print(f"{text}{choices_hint(message)}", file=sys.stderr)
        print(help_hint(help_command(self.argv)), file=sys.stderr)
        sys.exit(2)


def help_command(argv: list[str]) -> str:
    """The command whose `--help` lists the flags: `lifeseq train fit` (or `jobs/train.py fit`
    under torchrun / python)."""
    program = "lifeseq train" if sys.argv[0].endswith(" train") else "jobs/train.py"
    sub = next((a for a in argv if a in ("fit", *EVAL_SUBCOMMANDS)), "")
    return f"{program} {sub}".strip()


class StartupRefused(Exception):
    """A run refused before the Trainer exists (`trainers.fit_check`, the data root, the
    checkpoint): `main` prints it (rank 0) and exits with `exit_code` (1: the run cannot work
    on what it was given; 2: the command line itself is incomplete)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Where a model of each zoo interface goes (the task it serves, the configs that use it), for
#: the refusal of one given elsewhere.
GOES = {
    "SequenceEncoder": (
        "the encoder of lifeseq.trainers.tasks.next_item.NextItemModule or "
        "lifeseq.trainers.tasks.masked_item.MaskedItemModule", "configs/sequential/",
    ),
    "LongTermUnit": (
        "the long_term unit of lifeseq.models.zoo.ctr.lifelong.LifelongCtr under "
        "lifeseq.trainers.tasks.ctr.CtrModule", "configs/ctr/",
    ),
    "CtrModel": ("the model of lifeseq.trainers.tasks.ctr.CtrModule", "configs/ctr/, configs/smoke.yaml"),
    "InputFeatures": (
        "the features of lifeseq.trainers.tasks.next_item.NextItemModule or "
        "lifeseq.trainers.tasks.masked_item.MaskedItemModule", "configs/sequential/",
    ),
}  # fmt: skip


def misplaced(message: str) -> str | None:
    """When jsonargparse's `message` refuses a zoo class given where a model of another
    interface goes (a `LongTermUnit` as a sequence encoder, a `SequenceEncoder` as a CTR
    model): `error: ...` naming the class, its interface, the task and what fits; else None."""
    from lifeseq.models import interfaces
    from lifeseq.models.zoo import choices

    expected = list(dict.fromkeys(re.findall(r"models\.interfaces\.(\w+)\]", message)))
    given: dict[str, str] = {}
    for path in dict.fromkeys(re.findall(r"lifeseq\.models\.zoo\.[\w.]+\w", message)):
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
    from lifeseq.models import interfaces
    from lifeseq.models.zoo import choices

    positions = [message.find(sign) for sign in IMPORT_FAILURES if sign in message]
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


def _flag_values(argv: list[str]) -> list[tuple[str, str]]:
    """`(flag, value)` of each `--flag value` and `--flag=value` in `argv`."""
    pairs = []
    for index, token in enumerate(argv):
        if token.startswith("--") and "=" in token:
            name, _, value = token.partition("=")
            pairs.append((name, value))
        elif index and argv[index - 1].startswith("--") and not token.startswith("--"):
            pairs.append((argv[index - 1], token))
    return pairs


def config_error(argv: list[str]) -> str | None:
    """A message when a `--config` file or the `--ckpt_path` checkpoint is from before the
    model zoo, or a config or flag names a class path from before the `lifeseq.*` namespace
    (`trainers.legacy`), saying how to migrate it; or when a per-model config comes without
    its family's base before it or after another family's base (a CTR model file on the
    sequential base)."""
    import json

    import yaml

    from lifeseq.trainers.legacy import is_legacy, namespaced, namespaced_tree

    seen_model = False
    base: Path | None = None
    for flag, value in _flag_values(argv):
        if namespaced(value) != value and value.rpartition(".")[2][:1].isupper():
            return (
                f"error: {flag} {value}: lifeseq's class paths are under lifeseq.* now; "
                f"pass {namespaced(value)}"
            )
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
        if not is_legacy(path) and namespaced_tree(config) != config:
            return (
                f"error: {value}: its class paths are from before the lifeseq.* namespace "
                f"(models.… is lifeseq.models.… now); rewrite it with `lifeseq migrate {value} "
                "--out NEW.yaml`"
            )
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

    #: The run folder chosen for a run without `--trainer.default_root_dir` (logged once the
    #: start-up checks pass).
    _chosen_folder: str | None = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Refuse a task/model/data mismatch (`trainers.fit_check.fit_error`), a full softmax
        over too large a catalog (`catalog_error`) and CTR windows the machine cannot hold
        (`window_memory_error`), then build the Trainer (nothing has run or been written yet)."""
        from lifeseq.features.schema import FeatureSchema
        from lifeseq.trainers.fit_check import (
            available_memory_bytes,
            catalog_error,
            fit_error,
            window_memory_error,
        )

        data = self.datamodule
        error = fit_error(self.model, data.view, data.feature_config)
        if error:
            raise StartupRefused(error)
        from lifeseq.pipeline import storage

        try:
            data.check_root()
        except (OSError, ValueError) as err:
            raise StartupRefused(f"error: {err}") from None
        manifest = storage.read_json(storage.join(data.root, "manifest.json"))
        schema = FeatureSchema.from_manifest_dict(manifest, data.feature_config)
        error = catalog_error(self.model, schema)
        if error:
            raise StartupRefused(error)
        self._check_checkpoint(schema)
        if data.view == "ctr":
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
        if self._chosen_folder and int(os.environ.get("RANK", "0")) == 0:
            logger.info(
                "run folder: %s (--trainer.default_root_dir sets another)", self._chosen_folder
            )
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as error:  # a trainer flag Lightning refuses
            raise StartupRefused(f"error: trainer: {error}", exit_code=2) from None

    def _check_checkpoint(self, schema: Any) -> None:
        """Refuse a `--ckpt_path` that is not there, not a checkpoint, or not of this run's
        model and data (`trainers.checkpoint_fit`), before anything is written; a `last` that
        `validate` / `test` / `predict` cannot find is refused too (Lightning would warn and
        evaluate an untrained model)."""
        from lifeseq.trainers.checkpoint_fit import checkpoint_fit_error

        config = self.config[self.subcommand]
        path = config.get("ckpt_path")
        if path is None:
            return
        if path in CKPT_KEYWORDS:
            if path == "last" and self.subcommand in EVAL_SUBCOMMANDS:
                last = Path(config.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
                if not last.exists():
                    raise StartupRefused(
                        f"error: --ckpt_path last: no {last}; pass the checkpoint's path "
                        "(RUN/checkpoints/last.ckpt) or --trainer.default_root_dir RUN"
                    )
                path = str(last)
            elif path == "last" and self.subcommand == "fit":
                last = Path(config.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
                if not last.exists():
                    logger.info("--ckpt_path last: no %s yet, training from scratch", last)
                    return
                path = str(last)
            else:
                return
        settings = {"model": config.model.as_dict(), "data": config.data.as_dict()}
        error = checkpoint_fit_error(path, self.model, schema, settings)
        if error:
            raise StartupRefused(error)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        devices, nodes = _torchrun_layout()
        parser.set_defaults({"trainer.devices": devices, "trainer.num_nodes": nodes})
        parser.add_argument(
            "--untrained",
            type=bool,
            default=False,
            help="validate / test a freshly initialized model on purpose (without it, these "
            "subcommands require --ckpt_path)",
        )

    def instantiate_classes(self) -> None:
        """Instantiate the task and the data module; a config value they reject (a
        `ValueError` naming the field) is refused in one line, without a traceback."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            argv = getattr(self.parser, "argv", [])
            raise StartupRefused(usage_error(str(error), argv, []), exit_code=2) from None

    def before_instantiate_classes(self) -> None:
        """Refuse an evaluation without a checkpoint (unless `--untrained true`), choose the
        run folder when none is given (`default_run_folder`), and default the loggers and
        checkpoint directory into it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        self._check_untrained(config)
        if trainer.default_root_dir is None:
            trainer.default_root_dir = str(
                default_run_folder(self.subcommand, config.get("config") or [],
                                   config.get("ckpt_path"), config.model.as_dict())
            )  # fmt: skip
            self._chosen_folder = trainer.default_root_dir
        if trainer.logger in (None, True):
            root = trainer.default_root_dir
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
                root = trainer.default_root_dir
                callback.init_args["dirpath"] = str(Path(root) / "checkpoints")
        _progress_bar_on_a_terminal(trainer)

    def _check_untrained(self, config: Namespace) -> None:
        if self.subcommand == "predict":
            raise StartupRefused(
                "error: predict: lifeseq's tasks define no prediction step; `lifeseq train test` "
                "gives a checkpoint's metrics, `lifeseq export` + `lifeseq serve` (or "
                "serving.Scorer) its scores",
                exit_code=2,
            )
        untrained = bool(config.get("untrained"))
        if self.subcommand == "fit" and untrained:
            raise StartupRefused(
                "error: --untrained applies to validate / test; fit trains the model "
                "(from scratch, or from --ckpt_path)",
                exit_code=2,
            )
        if (
            self.subcommand in EVAL_SUBCOMMANDS
            and config.get("ckpt_path") is None
            and not untrained
        ):
            raise StartupRefused(
                f"error: {self.subcommand} needs --ckpt_path, the checkpoint to evaluate (e.g. "
                "RUN/checkpoints/last.ckpt); --untrained true evaluates a freshly initialized "
                "model on purpose",
                exit_code=2,
            )


def default_run_folder(
    subcommand: str | None,
    configs: list[Any],
    ckpt_path: str | None,
    model: dict[str, Any],
) -> Path:
    """The run folder when `--trainer.default_root_dir` is not given: the checkpoint's own run
    folder when evaluating `RUN/checkpoints/X.ckpt`, else `runs/<stem of the last --config>`
    (`runs/twin` for `--config configs/ctr/base.yaml --config configs/ctr/twin.yaml`), or
    `runs/<model class>` without a config file; never the current directory itself."""
    if ckpt_path and ckpt_path not in CKPT_KEYWORDS and subcommand in EVAL_SUBCOMMANDS:
        checkpoint = Path(ckpt_path)
        if checkpoint.parent.name == "checkpoints":
            return checkpoint.parent.parent
    if configs:
        return RUNS_DIR / Path(str(configs[-1])).stem
    name = str(model.get("class_path") or "model").rsplit(".", 1)[-1]
    return RUNS_DIR / name.lower()


def _progress_bar_on_a_terminal(trainer: Namespace) -> None:
    """Without a terminal (a log file, a captured subprocess) turn the progress bar off unless
    `enable_progress_bar` is given: its frames would only clutter the log. On a terminal
    Lightning picks its `RichProgressBar` itself (rich is installed): steps, samples/s and the
    metrics logged to the bar."""
    if trainer.enable_progress_bar is None and not sys.stdout.isatty():
        trainer.enable_progress_bar = False


def main(argv: list[str] | None = None) -> int:
    """Run `fit`, `validate` or `test` (argv as after `lifeseq train`)."""
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    configure_logging(own_level=logging.INFO if rank_zero else logging.WARNING)
    args = list(sys.argv[1:] if argv is None else argv)
    unreadable = next(filter(None, map(yaml_file_error, config_files(args))), None)
    if unreadable:
        if rank_zero:
            print(f"error: --config {unreadable}", file=sys.stderr)
            print(help_hint(help_command(args)), file=sys.stderr)
        return 2
    legacy = config_error(args)
    if legacy:
        print(legacy, file=sys.stderr)
        return 1
    try:
        cli = LifeseqCLI(
            PlatformModule,
            LifeseqDataModule,
            subclass_mode_model=True,
            args=argv,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "yaml", "argv": args},
            parser_class=LifeseqArgumentParser,
        )
    except StartupRefused as refused:
        if rank_zero:
            print(refused, file=sys.stderr)
        return refused.exit_code
    if rank_zero and cli.subcommand:
        print(run_summary(cli.trainer, cli.subcommand), flush=True)
    _shutdown_process_group()
    return 0


def config_files(argv: list[str]) -> list[str]:
    """The `--config` / `-c` files of a command line (`--config=PATH` too), in order."""
    found = []
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        if flag in ("--config", "-c") and value:
            found.append(value)
        elif flag.startswith("--config="):
            found.append(flag.split("=", 1)[1])
    return found


def run_summary(trainer: Trainer, subcommand: str) -> str:
    """The last line of a run: what ran, its final metrics and the checkpoint, e.g.
    `fit: 150 steps; val/auc 0.9165, val/gauc 0.9111, val/loss 0.3778; checkpoint
    runs/twin/checkpoints/last.ckpt`."""
    module = trainer.lightning_module
    stage = {"fit": "val", "validate": "val", "test": "test", "predict": ""}[subcommand]
    names = [f"{stage}/{n}" for n in (*getattr(module, "progress_metrics", ()), "loss")]
    metrics = trainer.callback_metrics
    if subcommand == "fit" and not any(n in metrics for n in names):
        names = ["train/loss"]  # no validation ran
    shown = ", ".join(f"{n} {float(metrics[n]):.4f}" for n in names if n in metrics)
    if subcommand == "fit":
        callback = trainer.checkpoint_callback
        path = (callback.last_model_path or callback.best_model_path) if callback else ""
        done = f"fit: {trainer.global_step} steps"
    else:
        path = str(trainer.ckpt_path or "") or "none (--untrained)"
        done = subcommand
    return f"{done}; {shown or 'no metrics logged'}; checkpoint {path or 'none written'}"


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
