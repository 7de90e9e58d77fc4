"""Every private third-party API lifeseq uses, wrapped in one place, so an upgrade that moves or
changes one fails here (and in its pinned test, `tests/unit/test_compat.py`), not somewhere
inside the pipeline, a model or the trainer.

Each wrapper imports its library inside the function: this module is importable from every
layer (it sits in the lowest, `pipeline`), and the Spark code that imports it never imports
torch. The import-rule test allows this module alone function-level imports of libraries its
layer bans, and no other first-party module may use a private third-party name.

| wrapper | private API | pinned to |
|---|---|---|
| `spark_gateway_running` | `pyspark.SparkContext._gateway` | pyspark 4.0 |
| `infinite_constant_sampler` | `torch.utils.data.dataloader._InfiniteConstantSampler` | torch 2.13 |
| `scan` | `torch._higher_order_ops.scan.scan` | torch 2.13 |
| `aoti_compile_and_package`, `aoti_load_package` | `torch._inductor.*` | torch 2.13 |
| `checkpoint_storage_info` | `torch.distributed.checkpoint.filesystem._StorageInfo` | torch 2.13 |
| `sharded_tensor_class` | `torch.distributed._shard.sharded_tensor.ShardedTensor` | torch 2.13 |
| `dtensor_global_offset` | `torch.distributed.tensor._utils.compute_local_shape_and_global_offset` | torch 2.13 |
| `apply_optimizer_in_backward` | `torch.distributed.optim._apply_optimizer_in_backward` | torch 2.13 |
| `dmp_world_size` | TorchRec `DistributedModelParallel._env` | torchrec 1.8 |
| `unwrap_lightning_optimizer` | Lightning `LightningOptimizer._optimizer` | lightning 2.6 |
| `optimizers_to_device` | `lightning.fabric.utilities.optimizer._optimizers_to_device` | lightning 2.6 |
| `tar_group_by_keys` | `webdataset.tariterators.group_by_keys` (an internal helper) | webdataset 1.0 |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


def spark_gateway_running() -> bool:
    """Whether this process already holds PySpark's JVM gateway (a stopped session's JVM,
    which `SparkContext` reuses instead of launching another)."""
    from pyspark import SparkContext

    return SparkContext._gateway is not None


def infinite_constant_sampler() -> type:
    """The sampler class `DataLoader` gives an `IterableDataset` (one `None` per step, for
    ever); a subclass of it keeps the loader's iterable-dataset checks passing."""
    from torch.utils.data.dataloader import _InfiniteConstantSampler

    return _InfiniteConstantSampler


def scan() -> Callable[..., Any]:
    """`torch`'s `scan` higher-order op: a loop `torch.export` traces with a dynamic length
    (`scan(combine_fn, init, xs)` → `(final carry, stacked outputs)`)."""
    from torch._higher_order_ops.scan import scan as torch_scan

    return torch_scan


def aoti_compile_and_package(program: Any, package_path: str) -> str:
    """AOTInductor: compile an `ExportedProgram` into a `.pt2` package at `package_path`."""
    import torch._inductor

    return torch._inductor.aoti_compile_and_package(program, package_path=package_path)


def aoti_load_package(package_path: str) -> Any:
    """Load an AOTInductor `.pt2` package as a callable."""
    import torch._inductor

    return torch._inductor.aoti_load_package(package_path)


def checkpoint_storage_info(
    relative_path: str, offset: int, length: int, transform_descriptors: Any
) -> Any:
    """`torch.distributed.checkpoint`'s record of where one saved item's bytes are (file,
    byte offset, length), as its file-system reader expects in the metadata's storage data."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    return _StorageInfo(
        relative_path=relative_path,
        offset=offset,
        length=length,
        transform_descriptors=transform_descriptors,
    )


def sharded_tensor_class() -> type:
    """The class of TorchRec's row-wise sharded state tensors (`ShardedTensor`)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return ShardedTensor


def dtensor_global_offset(value: Any) -> tuple[int, ...]:
    """Where a `DTensor`'s local shard starts in the global tensor (one offset per dim)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offsets = compute_local_shape_and_global_offset(
        value.shape, value.device_mesh, value.placements
    )
    return tuple(int(o) for o in offsets)


def apply_optimizer_in_backward(
    optimizer_class: type, params: Iterable[Any], optimizer_kwargs: dict[str, Any]
) -> None:
    """Mark `params` to be updated by `optimizer_class` inside backward, which is how TorchRec
    fuses a table's optimizer into its kernel."""
    from torch.distributed.optim import _apply_optimizer_in_backward

    _apply_optimizer_in_backward(optimizer_class, params, optimizer_kwargs)


def dmp_world_size(dmp: Any) -> int:
    """The world size a TorchRec `DistributedModelParallel` was planned for."""
    return int(dmp._env.world_size)


def unwrap_lightning_optimizer(optimizer: Any) -> Any:
    """The optimizer inside Lightning's `LightningOptimizer` wrapper (`optimizer` itself when it
    is not wrapped)."""
    from lightning.pytorch.core.optimizer import LightningOptimizer

    return optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def optimizers_to_device(optimizers: Iterable[Any], device: Any) -> None:
    """Move the optimizers' state tensors to `device` (what Lightning's strategies do after
    setting the optimizers up)."""
    from lightning.fabric.utilities.optimizer import _optimizers_to_device

    _optimizers_to_device(optimizers, device)


def tar_group_by_keys(
    members: Iterable[dict[str, Any]], keys: Callable[[str], tuple[str, str]], handler: Any
) -> Iterator[dict[str, Any]]:
    """WebDataset's grouping of consecutive tar members sharing a key into one sample (member
    names' case kept)."""
    from webdataset.tariterators import group_by_keys

    return group_by_keys(members, keys=keys, lcase=False, handler=handler)
