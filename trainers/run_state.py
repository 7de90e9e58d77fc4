"""Run state that a lifeseq checkpoint carries besides weights and loop counters.

* **RNG states** of every rank (torch CPU, and CUDA when present), so dropout and any other
  random op after `fit --ckpt_path last` draw what an uninterrupted run would have drawn.
  Gathered from all ranks into one `(world_size, n)` uint8 tensor (a replicated tensor in the
  sharded checkpoint); each rank restores its own row, or row `rank % saved_world_size` when
  the world size changed (exactness then is impossible anyway).
* **Feature-schema hash** (`FeatureSchema.hash()`): a checkpoint only loads against data whose
  schema (tables, sizes, features) is the one it was trained on (STYLE rule 4).

Both live under `checkpoint["lifeseq"]`; `stamp(...)` writes, `restore(...)` reads. Called from
the LightningModules' `on_save_checkpoint` / `on_load_checkpoint` (every rank).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: Key of the lifeseq section of a checkpoint dict.
SECTION = "lifeseq"


def _cuda_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def local_rng_states() -> dict[str, torch.Tensor]:
    """This process's RNG states as uint8 tensors: `cpu` and, if CUDA is in use, `cuda`."""
    states = {"cpu": torch.get_rng_state()}
    if _cuda_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def stamp(
    checkpoint: dict[str, Any],
    schema_hash: str,
    all_gather: Callable[[torch.Tensor], torch.Tensor],
    world_size: int,
) -> None:
    """Add `checkpoint["lifeseq"]`: the schema hash and every rank's RNG states (collective).

    Args:
        checkpoint: Lightning's checkpoint dict (modified in place).
        schema_hash: `FeatureSchema.hash()` of the data the model was built for.
        all_gather: gathers a tensor from every rank into `(world_size, ...)` (Lightning's
            `LightningModule.all_gather`; identity plus a leading axis in one process).
        world_size: ranks in the job.
    """
    rng: dict[str, torch.Tensor] = {}
    for name, state in local_rng_states().items():
        gathered = all_gather(state)
        if world_size == 1 or gathered.dim() == 1:
            gathered = gathered.reshape(1, -1)
        rng[name] = gathered.cpu()
    checkpoint[SECTION] = {"schema_hash": schema_hash, "rng": rng, "world_size": world_size}


def restore(checkpoint: dict[str, Any], schema_hash: str, rank: int, source: str) -> None:
    """Check the schema hash and restore this rank's RNG states from `checkpoint["lifeseq"]`.

    Checkpoints without the section (written before it existed) are accepted unchecked.

    Raises:
        ValueError: the checkpoint was trained on another feature schema, naming both hashes.
    """
    section = checkpoint.get(SECTION)
    if not isinstance(section, dict):
        return
    saved = section.get("schema_hash")
    if saved is not None and saved != schema_hash:
        raise ValueError(
            f"{source}: the checkpoint was trained on feature schema {saved[:12]}…, but the "
            f"data gives schema {schema_hash[:12]}… (other vocabularies, tables or feature "
            "settings); use the pipeline output and data settings it was trained with"
        )
    for name, states in (section.get("rng") or {}).items():
        if not isinstance(states, torch.Tensor) or states.dim() != 2 or states.shape[0] == 0:
            continue
        # clone(): a fresh tensor at storage offset 0 — torch 2.13's set_rng_state crashes
        # (SIGSEGV) on a row view of a larger tensor, even a contiguous one.
        state = states[rank % states.shape[0]].to(torch.uint8).cpu().clone()
        if name == "cpu":
            torch.set_rng_state(state)
        elif name == "cuda" and _cuda_available():
            torch.cuda.set_rng_state(state)
