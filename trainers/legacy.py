"""Runs of older lifeseq versions, translated to today's: class paths from before the `lifeseq.*`
namespace, and configs, checkpoints' hyper-parameters and parameter names from before the
model zoo.

**The namespace.** lifeseq's packages used to install as top-level `models`, `trainers`, ...;
they are `lifeseq.models`, `lifeseq.trainers`, ... now. `namespaced_tree` rewrites the class
paths of a config or of a checkpoint's hyper-parameters; checkpoints are read through it
(`trainers.checkpoint.read_checkpoint_tree`), so older checkpoints load as they are, and
`lifeseq migrate` rewrites an older config file (training refuses one, naming that command).

**The model zoo.** Before it (lifeseq ≤ 7428c32), a model was chosen by strings inside three LightningModules:

| old `class_path` | old choice | today |
|---|---|---|
| `trainers.ctr_module.CtrModule` | `hidden` | `trainers.tasks.ctr.CtrModule` + `models.zoo.ctr.smoke.SmokeCtr` |
| `trainers.lifelong_module.LifelongCtrModule` | `arch.long_term` | `trainers.tasks.ctr.CtrModule` + `models.zoo.ctr.lifelong.LifelongCtr` (+ a `models/zoo/long_term/` unit) |
| `trainers.generative_module.GenerativeModule` | `arch.encoder` | `trainers.tasks.next_item.NextItemModule` + `models.zoo.sequence.{hstu.Hstu,sasrec.SasRec}` |

`migrate_model_config` maps a LightningCLI `model:` section; `parameter_name` maps a
parameter's name (the dense layers moved under `dense.`). `lifeseq migrate` applies both to a
config file or a checkpoint directory (`jobs/migrate.py`); export migrates a checkpoint's
hyper-parameters on the fly.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

SMOKE = "trainers.ctr_module.CtrModule"
LIFELONG = "trainers.lifelong_module.LifelongCtrModule"
GENERATIVE = "trainers.generative_module.GenerativeModule"
LEGACY_MODULES = (SMOKE, LIFELONG, GENERATIVE)

_UNITS = {
    "sim_hard": "lifeseq.models.zoo.long_term.sim_hard.SimHard",
    "sim_soft": "lifeseq.models.zoo.long_term.sim_soft.SimSoft",
    "eta": "lifeseq.models.zoo.long_term.eta.Eta",
    "twin": "lifeseq.models.zoo.long_term.twin.Twin",
    "full": "lifeseq.models.zoo.long_term.full_attention.FullAttention",
}
_ENCODERS = {
    "hstu": "lifeseq.models.zoo.sequence.hstu.Hstu",
    "sasrec": "lifeseq.models.zoo.sequence.sasrec.SasRec",
}
_OLD_CTR_ARCH = {
    "long_term": "twin", "short_term_len": 100, "top_k": 64, "chunk": 1024, "heads": 4,
    "head_dim": 16, "attention_out": 64, "din_hidden": [64, 32], "tower_hidden": [128, 64],
    "eta_bits": 64, "sim_soft_dim": 32, "aux_weight": 0.1,
}  # fmt: skip
_OLD_GENERATIVE_ARCH = {
    "encoder": "hstu", "blocks": 2, "heads": 1, "attention_dim": 50, "linear_dim": 50,
    "ffn_dim": 50, "dropout": 0.2, "input_dropout": 0.2, "num_time_buckets": 128,
    "length_bucket": 32, "stochastic_length_alpha": None,
}  # fmt: skip


#: The card's package folders, each installed as `lifeseq.<folder>` (before the `lifeseq`
#: namespace: as a top-level package of that name).
PACKAGE_FOLDERS = ("pipeline", "features", "models", "trainers", "serving", "jobs")
#: Keys whose string values are class paths in a LightningCLI config or saved hyper-parameters.
CLASS_PATH_KEYS = ("class_path", "_class_path")


def namespaced(class_path: str) -> str:
    """`class_path` under the `lifeseq` namespace (`models.zoo.ctr.smoke.SmokeCtr` →
    `lifeseq.models.zoo.ctr.smoke.SmokeCtr`); today's paths, third-party paths and the
    pre-zoo modules (`LEGACY_MODULES`, translated by `migrate_model_config`) unchanged."""
    head, dot, _ = class_path.partition(".")
    if not dot or head not in PACKAGE_FOLDERS or class_path in LEGACY_MODULES:
        return class_path
    return f"lifeseq.{class_path}"


def namespaced_tree(value: Any) -> Any:
    """A copy of a config / hyper-parameter tree with every `class_path` / `_class_path` value
    `namespaced` (equal to `value` when it is today's already)."""
    if isinstance(value, dict):
        return {
            key: namespaced(item) if key in CLASS_PATH_KEYS and isinstance(item, str)
            else namespaced_tree(item)
            for key, item in value.items()
        }  # fmt: skip
    if isinstance(value, list):
        return [namespaced_tree(item) for item in value]
    return value


def is_legacy(class_path: str | None) -> bool:
    """Whether `class_path` names a LightningModule from before the model zoo."""
    return class_path in LEGACY_MODULES


def _zoo(path: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"class_path": path, "init_args": {"config": config, **extra}}


def migrate_model_config(class_path: str, init_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Today's `(class_path, init_args)` of an old LightningCLI `model:` section.

    Raises:
        ValueError: `class_path` is not a legacy module, or an unknown old `arch` choice.
    """
    args = copy.deepcopy(dict(init_args))
    if class_path == SMOKE:
        hidden = list(args.pop("hidden", [32]))
        args["model"] = _zoo("lifeseq.models.zoo.ctr.smoke.SmokeCtr", {"hidden": hidden})
        return "lifeseq.trainers.tasks.ctr.CtrModule", args
    if class_path == LIFELONG:
        arch = {**_OLD_CTR_ARCH, **(args.pop("arch", None) or {})}
        unit = arch["long_term"]
        if unit != "none" and unit not in _UNITS:
            raise ValueError(f"arch.long_term: unknown old long-term unit {unit!r}")
        esu = {
            "heads": arch["heads"],
            "head_dim": arch["head_dim"],
            "out_dim": arch["attention_out"],
        }
        unit_config: dict[str, Any] = {"top_k": arch["top_k"], "chunk": arch["chunk"], "esu": esu}
        if unit == "full":
            unit_config.pop("top_k")
        if unit == "eta":
            unit_config["bits"] = arch["eta_bits"]
        if unit == "sim_soft":
            unit_config |= {
                "projection_dim": arch["sim_soft_dim"],
                "aux_weight": arch["aux_weight"],
            }
        frame = {
            "short_term_len": arch["short_term_len"],
            "din_hidden": list(arch["din_hidden"]),
            "tower_hidden": list(arch["tower_hidden"]),
        }
        long_term = None if unit == "none" else _zoo(_UNITS[unit], unit_config)
        args["model"] = _zoo(
            "lifeseq.models.zoo.ctr.lifelong.LifelongCtr", frame, long_term=long_term
        )
        return "lifeseq.trainers.tasks.ctr.CtrModule", args
    if class_path == GENERATIVE:
        arch = {**_OLD_GENERATIVE_ARCH, **(args.pop("arch", None) or {})}
        name = arch["encoder"]
        if name not in _ENCODERS:
            raise ValueError(f"arch.encoder: unknown old encoder {name!r}")
        keys = ("blocks", "heads", "dropout", "length_bucket") + (
            ("attention_dim", "linear_dim", "num_time_buckets") if name == "hstu" else ("ffn_dim",)
        )
        args["encoder"] = _zoo(_ENCODERS[name], {k: arch[k] for k in keys})
        args["features"] = {
            "class_path": "lifeseq.models.blocks.input_features.ItemAndPosition",
            "init_args": {"dropout": arch["input_dropout"]},
        }
        args["stochastic_length_alpha"] = arch["stochastic_length_alpha"]
        return "lifeseq.trainers.tasks.next_item.NextItemModule", args
    raise ValueError(f"{class_path!r} is not a LightningModule from before the model zoo")


def migrate_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's LightningCLI hyper-parameters (`_class_path` + init args) in today's
    form (pre-zoo modules translated, class paths `namespaced`); `hparams` itself when they are
    today's already."""
    path = hparams.get("_class_path")
    if not is_legacy(path):
        renamed = namespaced_tree(hparams)
        return hparams if renamed == hparams else renamed
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    new_path, new_args = migrate_model_config(str(path), init_args)
    extras = {k: v for k, v in hparams.items() if k.startswith("_") and k != "_class_path"}
    return {"_class_path": new_path, **new_args, **extras}


def parameter_name(old_class_path: str, name: str) -> str:
    """Today's name of parameter (or buffer) `name` of a model trained by `old_class_path`:
    embedding tables keep theirs; the lifelong models' ESU and GSU moved into the long-term
    unit; every other dense layer moved under `dense.` (HSTU/SASRec's position table into the
    input features)."""
    if name.startswith("embeddings."):
        return name
    if old_class_path == LIFELONG and name.startswith(("attention.", "search.")):
        return f"dense.long_term.{name}"
    if old_class_path == GENERATIVE and name.startswith("position."):
        return f"dense.features.{name}"
    return f"dense.{name}"


def legacy_parameter_name(old_class_path: str, name: str) -> str:
    """The inverse of `parameter_name`: the old name of today's parameter `name`."""
    for prefix in ("dense.long_term.", "dense.features.", "dense."):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def checkpoint_names(hparams: dict[str, Any], names: list[str]) -> dict[str, str]:
    """Today's parameter name → its name in a checkpoint with `hparams` (legacy checkpoints
    store the old names)."""
    old = hparams.get("_class_path")
    if not is_legacy(old):
        return {name: name for name in names}
    return {name: legacy_parameter_name(str(old), name) for name in names}


def migrate_config(config: dict[str, Any]) -> dict[str, Any]:
    """A LightningCLI config (a parsed `config.yaml`) with an old `model:` section translated
    and every class path `namespaced`; everything else unchanged.

    Raises:
        ValueError: the config is today's already.
    """
    model = config.get("model") or {}
    path = model.get("class_path")
    if not is_legacy(path):
        renamed = namespaced_tree(config)
        if renamed == config:
            raise ValueError(
                f"model.class_path {path!r} is today's (lifeseq.* namespace, model zoo); "
                "nothing to do"
            )
        return renamed
    new_path, new_args = migrate_model_config(str(path), model.get("init_args") or {})
    return namespaced_tree({**config, "model": {"class_path": new_path, "init_args": new_args}})


def _renamer(mapping: dict[str, str]) -> Callable[[str], str]:
    """Rename whole parameter names inside checkpoint keys (`model.NAME`, `/state_dict/model.NAME`,
    `/optimizer_states/0/state/NAME/exp_avg`, a bare `NAME`)."""
    if not mapping:
        return lambda s: s
    names = "|".join(re.escape(n) for n in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(rf"(?<![^./])({names})(?![^/])")
    return lambda s: pattern.sub(lambda m: mapping[m.group(1)], s)


def _rename_json(value: Any, rename: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {rename(k): _rename_json(v, rename) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_json(v, rename) for v in value]
    return rename(value) if isinstance(value, str) else value


def migrate_checkpoint(src: Path, dst: Path) -> dict[str, Any]:
    """Copy checkpoint directory `src` to `dst` with today's hyper-parameters and parameter
    names (tensor files are copied unchanged; the JSON tree and DCP's JSON index are rewritten).

    Returns:
        The migrated hyper-parameters.

    Raises:
        FileNotFoundError: `src` is not a checkpoint directory.
        ValueError: `src` is not from before the model zoo, or `dst` exists.
    """
    tree_path, index_path = src / "checkpoint.json", src / ".metadata.json"
    if not tree_path.is_file() or not index_path.is_file():
        raise FileNotFoundError(f"{src}: not a lifeseq checkpoint directory (no checkpoint.json)")
    if dst.exists():
        raise ValueError(f"{dst}: exists; choose a new --out")
    data = json.loads(tree_path.read_text())
    tree = data["tree"]
    old = (tree.get("hyper_parameters") or {}).get("_class_path")
    if not is_legacy(old):
        raise ValueError(f"{src}: written by {old!r}, not from before the model zoo; nothing to do")
    index = json.loads(index_path.read_text())
    prefix = "/state_dict/model."
    names = [k.removeprefix(prefix) for k in index["state_dict_metadata"] if k.startswith(prefix)]
    rename = _renamer(
        {n: parameter_name(str(old), n) for n in names if parameter_name(str(old), n) != n}
    )
    hparams = migrate_hparams(tree["hyper_parameters"])
    tree = _rename_json({k: v for k, v in tree.items() if k != "hyper_parameters"}, rename)
    tree["hyper_parameters"] = hparams
    tmp = dst.parent / f"{dst.name}.tmp-migrate"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / "checkpoint.json").write_text(json.dumps({**data, "tree": tree}))
    (tmp / ".metadata.json").write_text(json.dumps(_rename_json(index, rename)))
    tmp.rename(dst)
    return hparams
