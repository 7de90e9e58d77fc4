"""Shard TorchRec embedding tables with `DistributedModelParallel` (DMP), planned from config.

`shard_model(model, cfg, device)`:

1. finds the `torchrec.EmbeddingCollection`s in `model` (those inside
   `models.blocks.embeddings.TorchRecEmbeddingCollection`);
2. attaches the fused sparse optimizer to their weights with
   `torch.distributed.optim._apply_optimizer_in_backward` (what the deprecated
   `torchrec.optim.apply_optimizer_in_backward` forwards to) — before wrapping, because the
   sharders read the optimizer off the parameters and fuse it into the FBGEMM kernels;
3. plans with `EmbeddingShardingPlanner(Topology(world_size, compute_device), constraints)`,
   one `ParameterConstraints` per table from `cfg`, via `collective_plan` (rank 0 plans and
   broadcasts, so every rank gets the same plan);
4. wraps the model in `DistributedModelParallel` and copies the unsharded module's table weights
   into the shards (so the sharded model starts from exactly the weights of the unsharded one,
   at any world size; build the model on `device="meta"` to skip this for huge tables).

Training semantics (read before writing a training loop):

* DMP already wraps the dense (non-embedding) parameters in DDP — never wrap the result again.
* The embedding optimizer steps *inside* `loss.backward()`; embedding gradients are never
  materialised, so `clip_grad_norm_` and gradient accumulation do not apply to them (use FBGEMM's
  `gradient_clipping`/`max_gradient` fused params if needed) and `dmp.fused_optimizer.step()` is
  a no-op kept for API symmetry.
* Gradients are averaged over ranks, for both parts: DDP averages the dense gradients and
  TorchRec divides the sharded embedding gradients by the world size in the backward of its
  all-to-all (`torchrec.distributed.comm_ops` gradient division, on by default; `shard_model`
  warns if it was turned off). So one W-rank step equals a 1-rank step on the *mean* of the
  per-rank losses, i.e. on the global batch when each rank's loss is a mean over equal local
  batches. `tests/distributed/test_sharding.py` pins this down, and that
  `CombinedOptimizer.step()` does not apply the fused update a second time.
* On CPU, FBGEMM fuses only `row_wise_adagrad`, `adagrad` and `sgd` (Adam is CUDA-only), and
  `data_parallel` sequence tables are refused (see `data_parallel_sequence_problem`).
* Row-wise Adagrad keeps one accumulator per row *per shard*: with `column_wise` sharding each
  column slice has its own accumulator, so the update differs from an unsharded row-wise
  Adagrad (SGD and element-wise optimizers are unaffected).
* Combine with the dense optimizer through `combined_optimizer(dmp, dense_factory)`
  (`torchrec.optim.keyed.CombinedOptimizer` of `dmp.fused_optimizer` and a
  `KeyedOptimizerWrapper` over the parameters without an in-backward optimizer); its
  `state_dict()` holds both, sharded — save it with `torch.distributed.checkpoint`, never a
  rank-0 `torch.save`.

torchrec is imported lazily: `ShardingConfig` and this module import without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lifeseq.pipeline.compat import (
    apply_optimizer_in_backward,
    dmp_world_size,
    dtensor_global_offset,
    sharded_tensor_class,
)

logger = logging.getLogger(__name__)

#: Sharding types accepted in `ShardingConfig`: those torchrec's `EmbeddingCollectionSharder`
#: offers (it has no table_row_wise / grid sharding for sequence tables).
SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
#: Sharding types the planner may choose when a table has no explicit type and no default
#: (`data_parallel` only when asked for: it replicates the table and is refused on CPU).
_PLANNER_CHOICES = ("table_wise", "row_wise", "column_wise")
#: Fused (in-backward) embedding optimizers.
OPTIMIZERS = ("row_wise_adagrad", "adagrad", "adam", "sgd")
#: Fused optimizers FBGEMM implements on CPU (Adam is CUDA-only in fbgemm-gpu 1.8).
CPU_OPTIMIZERS = ("row_wise_adagrad", "adagrad", "sgd")
#: Compute kernels torchrec offers model-parallel sequence tables: FBGEMM's fused TBE with
#: weights in device memory, in unified memory, or in unified memory behind a device cache
#: (the last two CUDA-only; `data_parallel` tables always use "dense").
COMPUTE_KERNELS = ("fused", "fused_uvm", "fused_uvm_caching")


@dataclass
class ShardingConfig:
    """How embedding tables are sharded and optimised (YAML `sharding:`).

    Attributes:
        sharding_types: per table, one of `SHARDING_TYPES`, e.g. `{"item": "row_wise"}`.
        default_sharding_type: for tables not in `sharding_types`; None lets the planner
            choose among table/row/column-wise.
        optimizer: fused embedding optimizer, one of `OPTIMIZERS`.
        lr: embedding learning rate.
        eps: optimizer epsilon (adagrad variants, adam).
        weight_decay: L2 weight decay, applied to the rows looked up in a step
            (row_wise_adagrad, adam; must be 0 for sgd and adagrad, whose FBGEMM kernels
            ignore it).
        betas: Adam's (beta1, beta2).
        compute_kernel: kernel for model-parallel tables, one of `COMPUTE_KERNELS`
            (only "fused" on cpu).
        min_partition: smallest column-wise shard width (None: the planner's choice).
        planner_batch_size: per-rank batch size the planner assumes for its cost model.
    """

    sharding_types: dict[str, str] = field(default_factory=dict)
    default_sharding_type: str | None = None
    optimizer: str = "row_wise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    compute_kernel: str = "fused"
    min_partition: int | None = None
    planner_batch_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sharding_types, dict):
            raise ValueError(
                f"sharding.sharding_types: expected a mapping table -> sharding type, "
                f"got {self.sharding_types!r}"
            )
        for table, kind in self.sharding_types.items():
            if kind not in SHARDING_TYPES:
                raise ValueError(
                    f"sharding.sharding_types[{table!r}]: expected one of {list(SHARDING_TYPES)}, "
                    f"got {kind!r}"
                )
        if self.default_sharding_type is not None and (
            self.default_sharding_type not in SHARDING_TYPES
        ):
            raise ValueError(
                f"sharding.default_sharding_type: expected one of {list(SHARDING_TYPES)} or "
                f"null, got {self.default_sharding_type!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"sharding.optimizer: expected one of {list(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.compute_kernel not in COMPUTE_KERNELS:
            raise ValueError(
                f"sharding.compute_kernel: expected one of {list(COMPUTE_KERNELS)}, "
                f"got {self.compute_kernel!r}"
            )
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"sharding.{name}: expected a positive number, got {value!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, int | float) or wd < 0:
            raise ValueError(f"sharding.weight_decay: expected a number >= 0, got {wd!r}")
        if self.optimizer in ("sgd", "adagrad") and wd:
            raise ValueError(
                f"sharding.weight_decay: FBGEMM's fused {self.optimizer} ignores weight decay; got "
                f"{wd!r} with optimizer {self.optimizer!r} (use 0, or row_wise_adagrad/adam)"
            )
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas):
            raise ValueError(f"sharding.betas: expected two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        if self.min_partition is not None and (
            not isinstance(self.min_partition, int) or self.min_partition < 1
        ):
            raise ValueError(
                f"sharding.min_partition: expected a positive int or null, "
                f"got {self.min_partition!r}"
            )
        if self.planner_batch_size is not None and (
            not isinstance(self.planner_batch_size, int) or self.planner_batch_size < 1
        ):
            raise ValueError(
                f"sharding.planner_batch_size: expected a positive int or null, "
                f"got {self.planner_batch_size!r}"
            )

    def sharding_type_of(self, table: str) -> str | None:
        """The configured sharding type of `table` (None: the planner chooses)."""
        return self.sharding_types.get(table, self.default_sharding_type)


# --- optimizer --------------------------------------------------------------------------------


def _fused_optimizer(cfg: ShardingConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """Optimizer class + kwargs for FBGEMM-fused tables (kwargs reach the TBE kernel as is)."""
    import torchrec.optim as trec_optim
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode

    if cfg.optimizer == "row_wise_adagrad":
        decay: dict[str, Any] = {}
        if cfg.weight_decay:
            decay = {"weight_decay": cfg.weight_decay, "weight_decay_mode": WeightDecayMode.L2}
        return trec_optim.RowWiseAdagrad, {"lr": cfg.lr, "eps": cfg.eps, **decay}
    if cfg.optimizer == "adagrad":
        return trec_optim.Adagrad, {"lr": cfg.lr, "eps": cfg.eps}
    if cfg.optimizer == "adam":
        beta1, beta2 = cfg.betas
        return trec_optim.Adam, {
            "lr": cfg.lr,
            "eps": cfg.eps,
            "beta1": beta1,
            "beta2": beta2,
            "weight_decay": cfg.weight_decay,
        }
    return trec_optim.SGD, {"lr": cfg.lr}


def _dense_table_optimizer(
    cfg: ShardingConfig,
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """Real torch optimizer for data-parallel tables (run in backward after DDP's all-reduce)."""
    from torchrec.optim import RowWiseAdagrad

    if cfg.optimizer == "row_wise_adagrad":
        return RowWiseAdagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad, {"lr": cfg.lr, "eps": cfg.eps}
    if cfg.optimizer == "adam":
        return torch.optim.Adam, {
            "lr": cfg.lr,
            "eps": cfg.eps,
            "betas": cfg.betas,
            "weight_decay": cfg.weight_decay,
        }
    return torch.optim.SGD, {"lr": cfg.lr}


def data_parallel_sequence_problem(device: torch.device | str) -> str | None:
    """Why `data_parallel` sequence tables give wrong results on `device`, or None if they work.

    TorchRec's data-parallel `EmbeddingCollection` uses FBGEMM's
    `DenseTableBatchedEmbeddingBagsCodegen(pooling_mode=NONE)`; the CPU build (fbgemm-gpu-cpu
    1.8) ignores `NONE` and sums each row's ids, so outputs have B rows instead of N. This probes
    the kernel once (a few microseconds) so the guard lifts itself once FBGEMM is fixed.
    """
    device = torch.device(device)
    if device.type != "cpu":
        return None
    return _cpu_dense_sequence_probe()


_PROBE_RESULT: list[str | None] = []


def _cpu_dense_sequence_probe() -> str | None:
    if _PROBE_RESULT:
        return _PROBE_RESULT[0]
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        DenseTableBatchedEmbeddingBagsCodegen,
    )

    kernel = DenseTableBatchedEmbeddingBagsCodegen(
        [(5, 4)], pooling_mode=PoolingMode.NONE, use_cpu=True
    )
    with torch.no_grad():
        out = kernel(indices=torch.tensor([1, 2, 3]), offsets=torch.tensor([0, 2, 3]))
    problem = None
    if tuple(out.shape) != (3, 4):
        problem = (
            "FBGEMM's CPU DenseTableBatchedEmbeddingBagsCodegen(pooling_mode=NONE) returned "
            f"shape {tuple(out.shape)} for 3 ids in 2 rows (expected (3, 4): it pools), so "
            "TorchRec's data-parallel EmbeddingCollection fails or sums sequences"
        )
    _PROBE_RESULT.append(problem)
    return problem


# --- model discovery --------------------------------------------------------------------------


def embedding_collections(model: nn.Module) -> dict[str, Any]:
    """`{module path: torchrec.EmbeddingCollection}` of every unsharded collection in `model`."""
    from torchrec import EmbeddingCollection

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, EmbeddingCollection)
    }


def _table_names(collections: dict[str, Any]) -> list[str]:
    names: list[str] = []
    seen: dict[str, str] = {}
    for path, collection in collections.items():
        for config in collection.embedding_configs():
            if config.name in seen:
                raise ValueError(
                    f"table {config.name!r} appears in two embedding collections "
                    f"({seen[config.name]!r} and {path!r}); table names must be unique per model "
                    "because sharding constraints are keyed by table name"
                )
            seen[config.name] = path
            names.append(config.name)
    return names


def _constraints(cfg: ShardingConfig, tables: list[str]) -> dict[str, Any]:
    from torchrec.distributed.planner.types import ParameterConstraints

    unknown = sorted(set(cfg.sharding_types) - set(tables))
    if unknown:
        raise ValueError(
            f"sharding.sharding_types: unknown tables {unknown}; the model's tables are {tables}"
        )
    constraints = {}
    for table in tables:
        kind = cfg.sharding_type_of(table)
        if kind == "data_parallel":
            constraints[table] = ParameterConstraints(
                sharding_types=["data_parallel"], compute_kernels=["dense"]
            )
            continue
        constraints[table] = ParameterConstraints(
            sharding_types=[kind] if kind is not None else list(_PLANNER_CHOICES),
            compute_kernels=[cfg.compute_kernel],
            min_partition=cfg.min_partition,
        )
    return constraints


# --- sharding ---------------------------------------------------------------------------------


def shard_model(
    model: nn.Module,
    cfg: ShardingConfig,
    device: torch.device | str,
    pg: torch.distributed.ProcessGroup | None = None,
) -> Any:
    """Plan, attach the fused optimizer and wrap `model` in `DistributedModelParallel`.

    `model` is modified in place (its collections get in-backward optimizers and are replaced by
    sharded ones inside the returned DMP); do not use it afterwards. Call on every rank, after
    `torch.distributed.init_process_group`, with a model built identically (same seed) on every
    rank: each rank copies its own copy of the initial tables into the shards it holds.

    Args:
        model: a module containing `torchrec.EmbeddingCollection`s (e.g. through
            `models.blocks.embeddings.TorchRecEmbeddingCollection`) and any dense layers.
        cfg: sharding types, planner constraints and the fused optimizer.
        device: compute device of this rank (`cpu` with gloo, `cuda:{local_rank}` with nccl).
        pg: process group (default: the world).

    Returns:
        The `DistributedModelParallel`; dense parameters are already DDP-wrapped.

    Raises:
        ValueError: no torchrec embedding collection in `model`, a config entry naming a table
            the model lacks, duplicate table names, an optimizer or compute kernel this device
            lacks (adam, fused_uvm* on cpu), or data_parallel tables where they would be wrong
            (cpu).
        RuntimeError: the default process group is not initialised.
    """
    import torch.distributed as dist
    from torchrec.distributed.comm import get_local_size
    from torchrec.distributed.comm_ops import get_gradient_division
    from torchrec.distributed.model_parallel import (
        DefaultDataParallelWrapper,
        DistributedModelParallel,
    )
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.types import ShardingEnv

    if not dist.is_initialized():
        raise RuntimeError("shard_model: call torch.distributed.init_process_group() first")
    pg = pg if pg is not None else dist.GroupMember.WORLD
    device = torch.device(device)
    collections = embedding_collections(model)
    if not collections:
        raise ValueError(
            "shard_model: the model has no torchrec EmbeddingCollection to shard; build its "
            "embeddings with `embedding.backend: torchrec` (the torch backend is data-parallel "
            "only: wrap such a model in DDP instead)"
        )
    tables = _table_names(collections)
    constraints = _constraints(cfg, tables)
    if device.type == "cpu" and cfg.optimizer not in CPU_OPTIMIZERS:
        raise ValueError(
            f"sharding.optimizer: {cfg.optimizer!r} has no FBGEMM CPU kernel; on cpu use one of "
            f"{list(CPU_OPTIMIZERS)}"
        )
    if device.type == "cpu" and cfg.compute_kernel != "fused":
        raise ValueError(
            f"sharding.compute_kernel: {cfg.compute_kernel!r} needs CUDA; on cpu use 'fused'"
        )
    data_parallel = [t for t in tables if cfg.sharding_type_of(t) == "data_parallel"]
    if data_parallel:
        problem = data_parallel_sequence_problem(device)
        if problem is not None:
            raise ValueError(
                f"sharding.sharding_types: data_parallel for tables {data_parallel} is not usable "
                f"on {device.type}: {problem}; use table_wise or row_wise for them"
            )

    # Full unsharded weights, copied into the shards after wrapping (skipped on meta).
    initial: dict[str, torch.Tensor] = {}
    for path, collection in collections.items():
        for key, value in collection.state_dict().items():
            if value.device.type != "meta":
                initial[f"{path}.{key}" if path else key] = value.detach().clone()

    if not get_gradient_division():
        logger.warning(
            "torchrec gradient division is off: sharded embedding gradients are summed over "
            "ranks while DDP averages dense gradients"
        )
    fused = _fused_optimizer(cfg)
    dense = _dense_table_optimizer(cfg)
    for collection in collections.values():
        for config in collection.embedding_configs():
            weight = collection.embeddings[config.name].weight
            kind = cfg.sharding_type_of(config.name)
            optimizer_class, kwargs = dense if kind == "data_parallel" else fused
            apply_optimizer_in_backward(optimizer_class, [weight], dict(kwargs))

    world_size = dist.get_world_size(pg)
    topology = Topology(
        world_size=world_size,
        compute_device=device.type,
        local_world_size=get_local_size(world_size),
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=cfg.planner_batch_size,
        constraints=constraints,
        debug=False,
    )
    sharders = get_default_sharders()
    plan = planner.collective_plan(model, sharders, pg)
    # Not TorchRec's default static-graph DDP: its first all-reduce hooks onto the tensors of
    # the forward output, which it cannot find inside a dataclass output (CtrOutput,
    # SequenceOutput), and then dense gradients are silently never averaged over ranks.
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(pg),
        device=device,
        plan=plan,
        sharders=sharders,
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False),
    )
    if initial:
        load_full_state_dict(dmp, initial)
    if dist.get_rank(pg) == 0:
        plan_dict = plan_summary(dmp)
        logger.info(
            "embedding tables: %s",
            ", ".join(
                f"{table} {p['sharding_type']} on rank(s) {p['ranks']}"
                for table, p in plan_dict.items()
            ),
        )
        logger.debug("embedding sharding plan: %s", plan_dict)
    return dmp


def plan_summary(dmp: Any) -> dict[str, dict[str, Any]]:
    """Where each table went: `{table: {sharding_type, compute_kernel, ranks, shards}}`.

    `shards` lists `{"rank", "offsets", "sizes"}` (row, column) per shard; `ranks` are the
    ranks holding a shard (all ranks for data_parallel).
    """
    summary: dict[str, dict[str, Any]] = {}
    world_size = dmp_world_size(dmp)
    for module_plan in dmp.plan.plan.values():
        for table, sharding in module_plan.items():
            shards = []
            if sharding.sharding_spec is not None:
                for meta in sharding.sharding_spec.shards:
                    shards.append(
                        {
                            "rank": int(meta.placement.rank()),
                            "offsets": [int(x) for x in meta.shard_offsets],
                            "sizes": [int(x) for x in meta.shard_sizes],
                        }
                    )
            if sharding.sharding_type == "data_parallel":
                ranks = list(range(world_size))
            elif shards:
                ranks = sorted({s["rank"] for s in shards})
            else:
                ranks = sorted(set(sharding.ranks or []))
            summary[table] = {
                "sharding_type": sharding.sharding_type,
                "compute_kernel": sharding.compute_kernel,
                "ranks": ranks,
                "shards": shards,
            }
    return summary


# --- state helpers ----------------------------------------------------------------------------


def local_shards(state: dict[str, Any]) -> dict[str, list[tuple[tuple[int, ...], torch.Tensor]]]:
    """This rank's pieces of every tensor in a (sharded) state dict.

    Args:
        state: e.g. `dmp.state_dict()`: plain tensors, `ShardedTensor`s or `DTensor`s.

    Returns:
        `{key: [(global offsets, local tensor), ...]}`; a plain (replicated) tensor is one piece
        at offset 0. The local tensors are views: writing into them writes the model.
    """
    from torch.distributed.tensor import DTensor

    sharded_tensor = sharded_tensor_class()

    out: dict[str, list[tuple[tuple[int, ...], torch.Tensor]]] = {}
    for key, value in state.items():
        if isinstance(value, sharded_tensor):
            out[key] = [
                (tuple(int(o) for o in shard.metadata.shard_offsets), shard.tensor)
                for shard in value.local_shards()
            ]
        elif isinstance(value, DTensor):
            out[key] = [(dtensor_global_offset(value), value.to_local())]
        elif isinstance(value, torch.Tensor):
            out[key] = [((0,) * value.dim(), value)]
    return out


@torch.no_grad()
def load_full_state_dict(
    dmp: nn.Module, full: dict[str, torch.Tensor], strict: bool = True
) -> None:
    """Copy full (unsharded) tensors into this rank's shards of `dmp`.

    Every rank must pass the same `full` tensors; each copies the slices it holds.

    Args:
        dmp: the sharded model.
        full: `{state-dict key: full tensor}` with the keys of `dmp.state_dict()`.
        strict: raise if a key of `full` is not in the model.

    Raises:
        ValueError: unknown key (with `strict`) or a piece outside the full tensor's shape.
    """
    pieces = local_shards(dmp.state_dict())
    unknown = sorted(set(full) - set(pieces))
    if unknown and strict:
        raise ValueError(f"load_full_state_dict: keys not in the model: {unknown}")
    for key, tensor in full.items():
        for offsets, local in pieces.get(key, []):
            if local.numel() == 0:
                continue
            index = tuple(slice(o, o + n) for o, n in zip(offsets, local.shape, strict=True))
            piece = tensor[index]
            if tuple(piece.shape) != tuple(local.shape):
                raise ValueError(
                    f"load_full_state_dict[{key!r}]: local shard at {offsets} has shape "
                    f"{tuple(local.shape)} but the full tensor {tuple(tensor.shape)} gives "
                    f"{tuple(piece.shape)}"
                )
            local.copy_(piece.to(device=local.device, dtype=local.dtype))


def combined_optimizer(
    dmp: Any,
    dense_factory: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer],
) -> Any:
    """One `CombinedOptimizer` over the fused embedding optimizer and a dense optimizer.

    Its `step(closure)` calls the closure once, then steps the dense part (the fused part
    already stepped in backward): TorchRec's own `CombinedOptimizer.step(closure)` hands the
    closure to every inner optimizer, which would run Lightning's forward/backward closure once
    per optimizer.

    Args:
        dmp: the sharded model from `shard_model`.
        dense_factory: builds the dense optimizer from parameters, e.g.
            `lambda params: torch.optim.Adam(params, lr=1e-3)`.

    Returns:
        A `torchrec.optim.keyed.CombinedOptimizer`; `step()`/`zero_grad()` act on the dense
        part and `state_dict()` holds both.
    """
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    class _ClosureOnceCombinedOptimizer(CombinedOptimizer):
        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            super().step()
            return loss

    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    optimizers: list[Any] = [dmp.fused_optimizer]
    if dense_params:
        optimizers.append(KeyedOptimizerWrapper(dense_params, dense_factory))
    return _ClosureOnceCombinedOptimizer(optimizers)
