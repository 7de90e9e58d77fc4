"""Does a checkpoint fit the run about to load it? Asked by `lifeseq train` before the Trainer
exists, so a wrong `--ckpt_path` costs one line and writes nothing (no run folder, no logs),
instead of a traceback from inside `torch.distributed.checkpoint` after start-up.

`checkpoint_fit_error(path, module, schema, settings)` compares, in this order:

1. the directory: a lifeseq checkpoint (`trainers.checkpoint`), readable;
2. the feature schema it was trained on (`FeatureSchema.hash()`, other vocabularies or tables);
3. every tensor of the model the run would build — built on the `meta` device, so no memory
   is allocated whatever the table sizes — against the checkpoint's saved sizes, naming the
   first parameter that differs with both shapes, and the settings that differ between the
   checkpoint's saved configuration and this run's (`settings`: the run's `model:` and
   `data:` sections as plain dicts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lifeseq.features.schema import FeatureSchema
from lifeseq.trainers import checkpoint as ckpt
from lifeseq.trainers.platform_module import PlatformModule
from lifeseq.trainers.run_state import SECTION

#: Checkpoint keys of model tensors start with this.
STATE_PREFIX = "/state_dict/"
#: Data settings that change no tensor and no number a checkpoint holds (not compared).
UNCOMPARED_DATA = ("root", "num_workers", "batch_size", "eval_batch_size", "pin_memory",
                   "strict", "shuffle_buffer", "seed", "train_windows", "view")  # fmt: skip
#: Differing settings named in a refusal.
SHOWN_SETTINGS = 3


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a.b.c": leaf}` of a nested mapping (lists and scalars are leaves; keys starting with
    `_` other than `_class_path` dropped)."""
    if not isinstance(value, Mapping):
        return {prefix: value} if prefix else {}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if key.startswith("_") and key != "_class_path":
            continue
        name = "class_path" if key == "_class_path" else str(key)
        flat.update(flatten(item, f"{prefix}.{name}" if prefix else name))
    return flat


def _plain(value: Any) -> Any:
    """JSON-comparable form (tuples as lists, dataclasses as dicts), as the checkpoint stores."""
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "__dict__", str(v))))


def saved_settings(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's `model.init_args...` and `data...` settings, flattened: hyper-parameters
    as LightningCLI saved them (`_class_path` + init args) in the layout of a run's config."""
    hparams = dict(tree.get("hyper_parameters") or {})
    model = {
        "class_path": hparams.pop("_class_path", None),
        "init_args": {k: v for k, v in hparams.items() if not k.startswith("_")},
    }
    data = tree.get("datamodule_hyper_parameters") or {}
    return flatten(_plain({"model": model, "data": data}))


def setting_differences(saved: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """`--key SAVED (here RUN)` for each setting that differs, model first; data settings that
    do not shape the model (`UNCOMPARED_DATA`) are skipped."""
    flat_run = flatten(_plain(dict(run)))
    keys = [k for k in dict.fromkeys([*saved, *flat_run])
            if not (k.startswith("data.") and k.split(".")[1] in UNCOMPARED_DATA)]  # fmt: skip
    return [
        f"--{key} {json.dumps(saved.get(key))} (here {json.dumps(flat_run.get(key))})"
        for key in keys
        if saved.get(key) != flat_run.get(key)
    ]


def expected_shapes(module: PlatformModule, schema: FeatureSchema) -> dict[str, tuple[int, ...]]:
    """`{"/state_dict/model.<name>": shape}` of the model `module` builds for `schema`, built on
    the `meta` device (no memory, whatever the table sizes; the module is left as it was)."""
    if module.embedding.backend == "torchrec":
        # Imported outside the meta device: torchrec's import computes a constant with .item().
        import torchrec  # noqa: F401
    with torch.device("meta"):
        model = module.build_model(schema)
    return {f"{STATE_PREFIX}model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def zoo_classes(section: Any) -> list[str]:
    """The zoo class names (`SmokeCtr`, `LifelongCtr`, `Twin`) a `model` section or saved
    hyper-parameters name, outermost first."""
    found = [v for k, v in flatten(_plain(section or {})).items()
             if k.endswith("class_path") and isinstance(v, str) and v.startswith("lifeseq.models.zoo.")]  # fmt: skip
    return [path.rsplit(".", 1)[-1] for path in found]


def _run_folder_config(path: Path) -> str:
    """Where the configuration a checkpoint was trained with is saved, for the refusal's hint."""
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    if run is not None:
        found = sorted((run / "logs" / "csv").glob("version_*/config.yaml"))
        if found:
            return str(found[-1])
    return "RUN/logs/csv/version_N/config.yaml"


def checkpoint_fit_error(
    path: str | Path,
    module: PlatformModule,
    schema: FeatureSchema,
    settings: Mapping[str, Any],
) -> str | None:
    """Why the checkpoint at `path` cannot load into the run of `module` on `schema`, or None.

    Args:
        path: a checkpoint directory (`--ckpt_path`).
        module: the run's task module (its model is built on `meta` to compare shapes).
        schema: the run's feature schema (from its `--data.root`).
        settings: the run's `model` and `data` sections, `{"model": {...}, "data": {...}}`.

    Returns:
        `error: --ckpt_path PATH ...` naming the file, parameter and shapes, or the schemas.
    """
    path = Path(path)
    flag = f"--ckpt_path {path}"
    if not path.exists():
        return f"error: {flag}: no such checkpoint; checkpoints are RUN/checkpoints/*.ckpt"
    try:
        tree, saved = ckpt.read_checkpoint_tree(path)
    except (FileNotFoundError, ValueError, json.JSONDecodeError, KeyError) as err:
        reason = str(err).removeprefix(f"{path}: ").removeprefix(f"{path / ckpt.TREE_FILE}: ")
        return f"error: {flag}: {reason}"
    reasons = []
    saved_models = zoo_classes(tree.get("hyper_parameters"))
    run_models = zoo_classes(settings.get("model"))
    if saved_models != run_models:
        reasons.append(
            f"it holds {' + '.join(saved_models) or 'no zoo model'}, this run builds "
            f"{' + '.join(run_models) or 'no zoo model'}"
        )
    shapes = expected_shapes(module, schema)
    differing: list[str] = []
    for key, shape in shapes.items():
        name = key.removeprefix(STATE_PREFIX)
        if key not in saved:
            differing.append(f"{name} is not in the checkpoint (here {list(shape)})")
        elif tuple(saved[key].size) != shape:
            differing.append(
                f"{name} is {list(saved[key].size)} in the checkpoint, {list(shape)} here"
            )
    if differing and not reasons:
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        reasons.append(f"{differing[0]}{more}")
    section = tree.get(SECTION)
    saved_hash = section.get("schema_hash") if isinstance(section, dict) else None
    if saved_hash is not None and saved_hash != schema.hash() and not reasons:
        reasons.append(
            f"it was trained on feature schema {saved_hash[:12]}…, --data.root and the data "
            f"settings give {schema.hash()[:12]}… (other vocabularies, tables or feature settings)"
        )
    if not reasons:
        return None
    changes = setting_differences(saved_settings(tree), settings)
    shown = "; ".join(changes[:SHOWN_SETTINGS]) + (" ..." if len(changes) > SHOWN_SETTINGS else "")
    because = f"\nSettings that differ: {shown}" if changes else ""
    return (
        f"error: {flag} does not fit this run: {reasons[0]}.{because}\n"
        f"Load it with the config and build it was trained with "
        f"({_run_folder_config(path)}), or train this config from scratch (no --ckpt_path)"
    )
