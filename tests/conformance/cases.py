"""What the conformance suite runs: every zoo model, found without a hand-written list.

* `class_cases()` — every class `models.zoo.discover` finds, with its default config, inside
  the composite and task its interface belongs to: a `SequenceEncoder` in the next-item task
  (masked-item when its default is bidirectional), a `LongTermUnit` inside
  `models.zoo.ctr.lifelong.LifelongCtr`, a `CtrModel` as is. The structural checks run on these.
* `config_cases()` — every model config under `configs/` (a family's `NAME.yaml` merged onto
  its `base.yaml`, and standalone training configs like `configs/smoke.yaml`), exactly as
  `lifeseq train` would parse it. Training and export checks run on these.

A case carries the task's hyper-parameters as LightningCLI saves them (`_class_path` + init
args), with the torch embedding backend; `build(schema)` returns the task module with its model.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeseq.features.schema import FeatureSchema
from lifeseq.jobs.run_config import load_run_config
from lifeseq.models.interfaces import CtrModel, LongTermUnit, ModelDims, SequenceEncoder
from lifeseq.models.zoo import discover
from lifeseq.trainers.platform_module import PlatformModule, module_from_hparams
from tests.conformance import planted

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
#: Training-config folders that are not model families.
NOT_FAMILIES = ("pipeline",)
LIFELONG_CTR = "lifeseq.models.zoo.ctr.lifelong.LifelongCtr"
CTR_TASK = "lifeseq.trainers.tasks.ctr.CtrModule"
NEXT_ITEM_TASK = "lifeseq.trainers.tasks.next_item.NextItemModule"
MASKED_ITEM_TASK = "lifeseq.trainers.tasks.masked_item.MaskedItemModule"


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class ZooCase:
    """One model to check.

    Attributes:
        name: test id (`class:...` or `config:...`).
        hparams: the task module's hyper-parameters (torch embedding backend).
        configs: the config files it came from (config cases).
        zoo: class paths of the zoo models it uses.
    """

    name: str
    hparams: dict[str, Any]
    configs: tuple[Path, ...] = ()
    zoo: tuple[str, ...] = field(default_factory=tuple)

    @property
    def task(self) -> str:
        """The task module's class path."""
        return str(self.hparams["_class_path"])

    @property
    def family(self) -> str:
        """`ctr` or `sequential`."""
        return "ctr" if self.task == CTR_TASK else "sequential"

    @property
    def masked(self) -> bool:
        """Whether the task is masked-item (cloze)."""
        return self.task == MASKED_ITEM_TASK

    @property
    def long_term(self) -> bool:
        """Whether the CTR model reads far history by design: `LifelongCtr` with a long-term
        unit, or a zoo `CtrModel` that says so (`reads_far_history`, e.g. MIMN's memory)."""
        model = self.hparams.get("model") or {}
        if (model.get("init_args") or {}).get("long_term"):
            return True
        path = str(model.get("class_path", ""))
        if not path.startswith("lifeseq.models.zoo."):
            return False
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return bool(getattr(cls, "reads_far_history", False))

    def schema(self) -> FeatureSchema:
        """The planted data's schema for this family (small widths)."""
        if self.family == "ctr":
            return planted.schema(planted.CTR_VOCAB, embedding_dim=8, max_history=planted.HISTORY)
        return planted.schema(planted.SEQ_VOCAB, embedding_dim=16, max_len=planted.SEQ_MAX_LEN)

    def build(self, seed: int = 0) -> PlatformModule:
        """The task module with its model built for `schema()` (initialised from `seed`)."""
        hparams = copy.deepcopy(self.hparams)
        hparams["seed"] = seed
        module = module_from_hparams(hparams)
        module.setup_model(self.schema())
        return module


def _task_hparams(task: str, **init_args: Any) -> dict[str, Any]:
    return {"_class_path": task, **init_args, "embedding": {"backend": "torch"}}


def class_cases() -> list[ZooCase]:
    """Every zoo class with its default config (see the module docstring)."""
    cases = []
    dims = ModelDims(item_rows=planted.ITEMS, embedding_dim=16, max_len=planted.SEQ_MAX_LEN)
    for cls in discover(SequenceEncoder):
        task = NEXT_ITEM_TASK if cls(dims).causal else MASKED_ITEM_TASK
        hparams = _task_hparams(task, encoder={"class_path": _path(cls)})
        cases.append(ZooCase(f"class:{_path(cls)}", hparams, zoo=(_path(cls),)))
    for cls in discover(LongTermUnit):
        model = {"class_path": LIFELONG_CTR, "init_args": {"long_term": {"class_path": _path(cls)}}}
        hparams = _task_hparams(CTR_TASK, model=model)
        cases.append(ZooCase(f"class:{_path(cls)}", hparams, zoo=(LIFELONG_CTR, _path(cls))))
    for cls in discover(CtrModel):
        hparams = _task_hparams(CTR_TASK, model={"class_path": _path(cls)})
        cases.append(ZooCase(f"class:{_path(cls)}", hparams, zoo=(_path(cls),)))
    return cases


def model_configs() -> list[tuple[str, tuple[Path, ...]]]:
    """(name, config files) of every model config: `configs/FAMILY/base.yaml` + each other file
    there, and every standalone `configs/*.yaml`."""
    found = [(p.stem, (p,)) for p in sorted(CONFIGS.glob("*.yaml"))]
    for family in sorted(d for d in CONFIGS.iterdir() if d.is_dir() and d.name not in NOT_FAMILIES):
        base = family / "base.yaml"
        for path in sorted(family.glob("*.yaml")):
            if path != base:
                found.append(
                    (f"{family.name}/{path.stem}", (base, path) if base.is_file() else (path,))
                )
    return found


def _zoo_paths(value: Any) -> list[str]:
    """Class paths under `models.zoo` named anywhere in a hyper-parameter tree."""
    if isinstance(value, dict):
        own = (
            [value["class_path"]]
            if str(value.get("class_path", "")).startswith("lifeseq.models.zoo.")
            else []
        )
        return own + [p for v in value.values() for p in _zoo_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _zoo_paths(v)]
    return []


def config_cases() -> list[ZooCase]:
    """Every model config, parsed as `lifeseq train` does (torch embedding backend)."""
    cases = []
    for name, paths in model_configs():
        run = load_run_config(
            paths, ["--model.init_args.embedding.backend", "torch", "--data.root", "unused"]
        )
        cases.append(ZooCase(f"config:{name}", run.hparams, paths, tuple(_zoo_paths(run.hparams))))
    return cases
