"""Sharded checkpoints without pickle: `torch.distributed.checkpoint` tensors + JSON metadata.

A checkpoint is a directory:

    CKPT/
      __0_0.distcp, __1_0.distcp, ...   tensor data, one file per writing rank (DCP)
      .metadata.json                    DCP's index of those tensors (chunks, offsets, dtypes)
      checkpoint.json                   everything else: step, epoch, loop and callback state,
                                        hyper-parameters; tensors appear as {"__tensor__": key}

Stock DCP pickles its `.metadata` index and pickles every non-tensor value; here only tensors
(plain, `ShardedTensor`, `DTensor`) go through DCP, its index is JSON (`JsonFileSystemWriter` /
`JsonFileSystemReader`), and tensor payloads are read back with `torch.load(weights_only=True)`
(DCP's reader). Nothing read back is unpickled.

Sharded tensors are saved as their shards and loaded into whatever sharding the target holds,
so a checkpoint written at world size 2 loads at world size 1 and the other way round.

Usage (every rank):

    save_checkpoint(checkpoint_dict, "RUN/checkpoints/last.ckpt")
    tree, tensor_keys = read_checkpoint_tree("RUN/checkpoints/last.ckpt")
    load_tensors("RUN/checkpoints/last.ckpt", {key: target_tensor, ...})   # in place
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from lifeseq.pipeline.compat import checkpoint_storage_info
from lifeseq.trainers.legacy import namespaced_tree

logger = logging.getLogger(__name__)

#: Name of the JSON tree of a checkpoint directory.
TREE_FILE = "checkpoint.json"
#: Name of DCP's JSON index (replaces DCP's pickled `.metadata`).
METADATA_FILE = ".metadata.json"
#: Format version of `TREE_FILE`.
FORMAT_VERSION = 1
_TENSOR = "__tensor__"


# --- DCP metadata as JSON ---------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{METADATA_FILE}: unknown dtype {name!r}")
    return dtype


def metadata_to_json(metadata: Metadata) -> dict[str, Any]:
    """JSON form of DCP's `Metadata` (tensor entries only: this module writes no bytes items)."""
    entries: dict[str, Any] = {}
    for key, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            entries[key] = {"kind": "bytes"}
            continue
        entries[key] = {
            "kind": "tensor",
            "dtype": _dtype_name(md.properties.dtype),
            "size": list(md.size),
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in md.chunks],
        }
    storage = [
        {
            "fqn": index.fqn,
            "offset": list(index.offset) if index.offset is not None else None,
            "index": index.index,
            "relative_path": info.relative_path,
            "byte_offset": info.offset,
            "length": info.length,
            "transform_descriptors": list(info.transform_descriptors)
            if info.transform_descriptors is not None
            else None,
        }
        for index, info in (metadata.storage_data or {}).items()
    ]
    planner = metadata.planner_data
    return {
        "version": metadata.version,
        "state_dict_metadata": entries,
        "storage_data": storage,
        "planner_data": {k: list(v) for k, v in planner.items()} if planner else None,
    }


def metadata_from_json(data: dict[str, Any]) -> Metadata:
    """Inverse of `metadata_to_json`."""
    entries: dict[str, Any] = {}
    for key, md in data["state_dict_metadata"].items():
        if md["kind"] == "bytes":
            entries[key] = BytesStorageMetadata()
            continue
        entries[key] = TensorStorageMetadata(
            properties=TensorProperties(dtype=_dtype(md["dtype"])),
            size=torch.Size(md["size"]),
            chunks=[
                ChunkStorageMetadata(torch.Size(c["offsets"]), torch.Size(c["sizes"]))
                for c in md["chunks"]
            ],
        )
    storage = {}
    for item in data["storage_data"]:
        index = MetadataIndex(
            fqn=item["fqn"],
            offset=torch.Size(item["offset"]) if item["offset"] is not None else None,
            index=item["index"],
        )
        storage[index] = checkpoint_storage_info(
            item["relative_path"], item["byte_offset"], item["length"],
            item["transform_descriptors"],
        )  # fmt: skip
    planner = data.get("planner_data")
    return Metadata(
        state_dict_metadata=entries,
        planner_data={k: tuple(v) for k, v in planner.items()} if planner else None,
        storage_data=storage,
        version=data.get("version"),
    )


class JsonFileSystemWriter(FileSystemWriter):
    """DCP `FileSystemWriter` that writes its index as JSON (`.metadata.json`), not a pickle."""

    def finish(self, metadata: Metadata, results: list[list[Any]]) -> None:
        storage_md = {}
        for result_list in results:
            storage_md.update({wr.index: wr.storage_data for wr in result_list})
        metadata.storage_data = storage_md
        path = Path(self.path) / METADATA_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metadata_to_json(metadata)))
        os.replace(tmp, path)


class JsonFileSystemReader(FileSystemReader):
    """DCP `FileSystemReader` that reads the JSON index of `JsonFileSystemWriter`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not a lifeseq sharded checkpoint (no {METADATA_FILE}); checkpoints "
                "are directories written by trainers.checkpoint.save_checkpoint"
            )
        metadata = metadata_from_json(json.loads(path.read_text()))
        metadata.storage_meta = StorageMeta(load_id=self.load_id)
        return metadata


# --- nested checkpoint dict ↔ JSON tree + flat tensors ------------------------------------------


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def split_tensors(obj: Any, path: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace every tensor in a nested structure by `{"__tensor__": key}`.

    Dicts keep their key types (`{"__dict__": [[key, value], ...]}` when a key is not a string),
    tuples are lists, dataclasses their fields; other objects are stored as their `repr` with a
    warning (they come back as strings).

    Returns:
        (JSON-ready tree, `{key: tensor}`), keys are `/`-joined paths.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, where: str) -> Any:
        if _is_tensor(value):
            tensors[where] = value
            return {_TENSOR: where}
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, enum.Enum):
            return walk(value.value, where)
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {k: walk(v, f"{where}/{k}") for k, v in value.items()}
            return {"__dict__": [[k, walk(v, f"{where}/{k}")] for k, v in value.items()]}
        if isinstance(value, list | tuple):
            return [walk(v, f"{where}/{i}") for i, v in enumerate(value)]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return walk(dataclasses.asdict(value), where)
        if isinstance(value, torch.dtype | torch.device | Path):
            return str(value)
        logger.warning("checkpoint: %s (%s) stored as its repr", where, type(value).__name__)
        return repr(value)

    return walk(obj, path), tensors


def join_tensors(tree: Any, tensors: dict[str, Any]) -> Any:
    """Inverse of `split_tensors`: put `tensors[key]` back where `{"__tensor__": key}` stands."""
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        if set(tree) == {"__dict__"}:
            return {k: join_tensors(v, tensors) for k, v in tree["__dict__"]}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


# --- save / load ------------------------------------------------------------------------------


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `checkpoint` (a nested dict with tensors, e.g. Lightning's) as a directory.

    Collective: call on every rank with that rank's state (sharded tensors hold its shards).
    An existing checkpoint at `path` is replaced.
    """
    path = Path(path)
    tree, tensors = split_tensors(checkpoint)
    if _rank() == 0:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    _barrier()
    dcp.save(tensors, storage_writer=JsonFileSystemWriter(str(path)))
    if _rank() == 0:
        tmp = path / f"{TREE_FILE}.tmp"
        tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, "tree": tree}, indent=1))
        os.replace(tmp, path / TREE_FILE)
    _barrier()


def read_checkpoint_tree(path: str | os.PathLike) -> tuple[Any, dict[str, TensorStorageMetadata]]:
    """The JSON tree of a checkpoint and the saved tensors' metadata (size, dtype). Class paths
    in its hyper-parameters are today's (`trainers.legacy.namespaced_tree`).

    Raises:
        FileNotFoundError: `path` is not a checkpoint directory.
        ValueError: an unknown format version.
    """
    path = Path(path)
    tree_path = path / TREE_FILE
    if not tree_path.is_file():
        raise FileNotFoundError(
            f"{path}: not a lifeseq sharded checkpoint (no {TREE_FILE}); expected a directory "
            "written by trainers.checkpoint.save_checkpoint"
        )
    data = json.loads(tree_path.read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{tree_path}: format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    tree = data["tree"]
    if "hyper_parameters" in tree:  # class paths from before the lifeseq namespace load too
        tree["hyper_parameters"] = namespaced_tree(tree["hyper_parameters"])
    metadata = JsonFileSystemReader(str(path)).read_metadata()
    tensors = {
        k: v
        for k, v in metadata.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata)
    }
    return tree, tensors


def load_tensors(path: str | os.PathLike, targets: dict[str, Any]) -> None:
    """Load saved tensors into `targets` in place (collective).

    Targets may be sharded differently from the saved tensors (another world size or plan).

    Raises:
        KeyError: a key of `targets` is not in the checkpoint (DCP's message names it).
    """
    if targets:
        dcp.load(targets, storage_reader=JsonFileSystemReader(str(path)))


def empty_like_saved(md: TensorStorageMetadata) -> torch.Tensor:
    """A CPU tensor with the size and dtype of a saved (unsharded view of a) tensor."""
    return torch.empty(tuple(md.size), dtype=md.properties.dtype)
