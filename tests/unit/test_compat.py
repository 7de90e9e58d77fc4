"""One test per wrapper of `pipeline/compat.py`, each on the private API it wraps, pinned to the
versions we test with: an upgrade that moves or changes one fails here first."""

from __future__ import annotations

import importlib.metadata
import inspect
import io
import tarfile

import pytest
import torch
import torch.distributed as dist

from lifeseq.pipeline import compat

pytestmark = pytest.mark.unit

#: The release lines the wrappers are written and tested against.
PINNED = {"torch": "2.13", "torchrec": "1.8", "lightning": "2.6", "pyspark": "4.0",
          "webdataset": "1.0"}  # fmt: skip


def test_the_wrapped_libraries_are_the_pinned_release_lines() -> None:
    found = {name: importlib.metadata.version(name) for name in PINNED}
    moved = {n: v for n, v in found.items() if not v.startswith(PINNED[n] + ".")}
    assert not moved, (
        f"{moved}: not the release lines pipeline/compat.py was checked against ({PINNED}); "
        "check each wrapper's private API, then update PINNED"
    )


def test_spark_gateway_running_reads_the_context_class_gateway() -> None:
    from pyspark import SparkContext

    assert "_gateway" in vars(SparkContext)
    assert compat.spark_gateway_running() is (SparkContext._gateway is not None)


def test_infinite_constant_sampler_is_what_dataloader_gives_an_iterable_dataset() -> None:
    class Numbers(torch.utils.data.IterableDataset):
        def __iter__(self):  # noqa: ANN204
            return iter(range(3))

    loader = torch.utils.data.DataLoader(Numbers(), batch_size=None)
    sampler = compat.infinite_constant_sampler()
    assert type(loader.sampler) is sampler
    values = iter(sampler())
    assert [next(values) for _ in range(3)] == [None, None, None]


def test_scan_is_a_running_loop_with_stacked_outputs() -> None:
    def step(carry: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = carry + x
        return total, total.clone()

    final, outputs = compat.scan()(step, torch.zeros(2), torch.arange(6.0).reshape(3, 2))
    assert final.tolist() == [6.0, 9.0]
    assert outputs.tolist() == [[0.0, 1.0], [2.0, 4.0], [6.0, 9.0]]


def test_aoti_entry_points_take_what_the_wrappers_pass() -> None:
    import torch._inductor

    compile_params = inspect.signature(torch._inductor.aoti_compile_and_package).parameters
    assert list(compile_params)[0] == "exported_program" and "package_path" in compile_params
    load_params = inspect.signature(torch._inductor.aoti_load_package).parameters
    assert list(load_params)[0] == "path"


def test_checkpoint_storage_info_is_the_readers_record() -> None:
    info = compat.checkpoint_storage_info("__0_0.distcp", 128, 64, [])
    assert (info.relative_path, info.offset, info.length) == ("__0_0.distcp", 128, 64)
    assert info.transform_descriptors == []


def test_sharded_tensor_class_has_local_shards() -> None:
    cls = compat.sharded_tensor_class()
    assert cls.__name__ == "ShardedTensor" and callable(cls.local_shards)


@pytest.fixture
def single_process_group():  # noqa: ANN201
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_dtensor_global_offset_of_a_row_shard(single_process_group: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    value = distribute_tensor(torch.arange(12.0).reshape(4, 3), mesh, [Shard(0)])
    assert compat.dtensor_global_offset(value) == (0, 0)


def test_apply_optimizer_in_backward_marks_the_parameter() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    compat.apply_optimizer_in_backward(torch.optim.SGD, [weight], {"lr": 0.5})
    (weight * 2.0).sum().backward()
    assert weight._in_backward_optimizers  # noqa: SLF001 (what the private API attaches)
    assert weight.tolist() == [0.0, 0.0, 0.0]  # updated inside backward: 1 - 0.5 * 2


def test_dmp_world_size_reads_the_model_parallel_env() -> None:
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    assert "self._env" in inspect.getsource(DistributedModelParallel.__init__)
    assert "world_size" in inspect.signature(ShardingEnv.__init__).parameters

    class Planned:
        _env = ShardingEnv(world_size=2, rank=0, pg=None)

    assert compat.dmp_world_size(Planned()) == 2


def test_unwrap_lightning_optimizer() -> None:
    from lightning.pytorch.core.optimizer import LightningOptimizer

    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    assert compat.unwrap_lightning_optimizer(LightningOptimizer(sgd)) is sgd
    assert compat.unwrap_lightning_optimizer(sgd) is sgd


def test_optimizers_to_device_moves_state_tensors() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.sum().backward()
    sgd.step()
    compat.optimizers_to_device([sgd], torch.device("cpu"))
    assert sgd.state[weight]["momentum_buffer"].device.type == "cpu"


def test_tar_group_by_keys_groups_consecutive_members_keeping_case() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in [("a/u1.Meta.json", b"1"), ("a/u1.npy", b"2"), ("a/u2.npy", b"3")]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r") as tar:
        members = [{"fname": m.name, "data": tar.extractfile(m).read(), "__url__": "s.tar"}
                   for m in tar]  # fmt: skip

    def split(name: str) -> tuple[str, str]:
        key, _, suffix = name.partition(".")
        return key, suffix

    from webdataset.handlers import reraise_exception

    samples = list(compat.tar_group_by_keys(iter(members), split, reraise_exception))
    assert [s["__key__"] for s in samples] == ["a/u1", "a/u2"]
    assert samples[0]["Meta.json"] == b"1" and samples[0]["npy"] == b"2"
