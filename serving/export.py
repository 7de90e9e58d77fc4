"""`lifeseq export`: a trained checkpoint → the files a serving stack loads (layout:
`serving.artifacts`).

    lifeseq export --ckpt RUN/checkpoints/last.ckpt --out EXPORT [--data OUT]

* The model is rebuilt from the checkpoint's hyper-parameters (`_class_path` + init args, as
  LightningCLI saved them) and the data's feature schema, on the `meta` device: no embedding
  table is ever allocated whole. Dense weights are loaded from the checkpoint.
* Embedding tables are copied chunk by chunk from the sharded checkpoint: each chunk DCP wrote
  (one rank's row-wise shard) is read alone (`torch.load(weights_only=True)` of its byte
  range) and written as one `.npy` of rows [start, end), so a process holds one shard at a
  time. Column-wise shards of a row range are joined first. Row 0 (padding) is written as
  zeros: the models embed id 0 to zeros whatever the row holds.
* Derived per-item files are written per item shard: TWIN's ESU keys (its serving cache; the
  category table is read whole — it is small) and the generative models' L2-normalized item
  embeddings (their retrieval index).
* The dense request model (`models.ctr_request` / `models.generative_request`) is traced by
  `torch.export` with dynamic history and candidate counts into `dense/model.pt2`.
* Vocabularies are read from the pipeline output (`OUT/vocab/`) into one Parquet file each.
* `manifest.json` lists versions, the model config, shapes, dtypes and every file's sha256.

The export is written to `EXPORT.tmp-*` and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from features.schema import FeatureSchema
from models.ctr_request import CtrRequestModel
from models.generative import L2_EPS, GenerativeModel
from models.generative_request import GenerativeRequestModel
from models.lifelong_ctr import LifelongCtrModel
from serving.artifacts import EXPORT_FORMAT_VERSION, MANIFEST_FILE, ExportError, file_entry
from serving.scorer import Vocab
from trainers.checkpoint import JsonFileSystemReader, load_tensors, read_checkpoint_tree
from trainers.data import LifeseqDataModule
from trainers.platform_module import PlatformModule

logger = logging.getLogger(__name__)

STATE_PREFIX = "/state_dict/model."
VOCABS = ("item", "category", "behavior")
#: Largest history and candidate counts the exported CTR program accepts.
MAX_EVENTS = 1 << 22
MAX_CANDIDATES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One stored chunk of a checkpoint tensor: rows/cols offsets and sizes, and its bytes."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    byte_offset: int
    length: int


def tensor_chunks(ckpt: Path, metadata: Metadata, fqn: str) -> list[Chunk]:
    """The stored chunks of checkpoint tensor `fqn`, in row order (`metadata`: the checkpoint's
    DCP index, `JsonFileSystemReader.read_metadata`).

    Raises:
        ExportError: `fqn` is not in the checkpoint, or a chunk is stored with a transform.
    """
    entry = metadata.state_dict_metadata.get(fqn)
    if not isinstance(entry, TensorStorageMetadata):
        raise ExportError(f"{ckpt}: no tensor {fqn!r}; is this the checkpoint of this model?")
    sizes = {tuple(c.offsets): tuple(c.sizes) for c in entry.chunks}
    chunks = []
    for index, info in (metadata.storage_data or {}).items():
        if index.fqn != fqn:
            continue
        if info.transform_descriptors:
            raise ExportError(f"{ckpt}: {fqn} is stored with transforms; unsupported")
        offsets = tuple(index.offset)
        chunks.append(Chunk(offsets, sizes[offsets], info.relative_path, info.offset, info.length))
    return sorted(chunks, key=lambda c: c.offsets)


def read_chunk(ckpt: Path, chunk: Chunk) -> torch.Tensor:
    """One stored chunk as a tensor (its byte range only, `weights_only=True`)."""
    with open(ckpt / chunk.file, "rb") as f:
        f.seek(chunk.byte_offset)
        data = f.read(chunk.length)
    if len(data) != chunk.length:
        raise ExportError(f"{ckpt / chunk.file}: truncated ({len(data)} of {chunk.length} bytes)")
    tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return tensor.narrow(0, 0, chunk.sizes[0]) if tensor.shape[0] != chunk.sizes[0] else tensor


def row_shards(ckpt: Path, metadata: Metadata, fqn: str) -> list[tuple[int, int, list[Chunk]]]:
    """`(start, end, chunks)` per row range of a 2-D table; several chunks = column shards."""
    ranges: dict[tuple[int, int], list[Chunk]] = defaultdict(list)
    for chunk in tensor_chunks(ckpt, metadata, fqn):
        start = chunk.offsets[0]
        ranges[(start, start + chunk.sizes[0])].append(chunk)
    return [(s, e, sorted(c, key=lambda c: c.offsets[1])) for (s, e), c in sorted(ranges.items())]


def read_rows(ckpt: Path, chunks: list[Chunk]) -> torch.Tensor:
    """The rows of one row range, column shards joined."""
    return torch.cat([read_chunk(ckpt, c) for c in chunks], dim=1)


# --- model ------------------------------------------------------------------------------------


def instantiate_module(hparams: dict[str, Any]) -> PlatformModule:
    """The LightningModule of the checkpoint, as LightningCLI built it, with the plain-torch
    embedding backend (export reads tables from the checkpoint itself)."""
    from jsonargparse import ArgumentParser

    class_path = hparams.get("_class_path")
    if not class_path:
        raise ExportError("checkpoint hyper_parameters have no _class_path (not a LightningCLI "
                          "run?); train with lifeseq train")  # fmt: skip
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    init_args["embedding"] = {**(init_args.get("embedding") or {}), "backend": "torch"}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(PlatformModule, "model")
    config = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    module = parser.instantiate_classes(config).model
    assert isinstance(module, PlatformModule)
    return module


def data_module(tree: dict[str, Any], data_root: str | None) -> LifeseqDataModule:
    """The run's data module (its `root` replaced by `data_root` when given), set up."""
    hparams = {k: v for k, v in tree["datamodule_hyper_parameters"].items()
               if not k.startswith("_")}  # fmt: skip
    if data_root is not None:
        hparams["root"] = data_root
    data = LifeseqDataModule(**hparams)
    data.setup("predict")
    return data


def load_model(ckpt: Path, schema: FeatureSchema, hparams: dict[str, Any]) -> torch.nn.Module:
    """The trained model, dense weights loaded, embedding tables left on `meta`.

    Raises:
        ExportError: a model family export does not support, or dense weights missing.
    """
    module = instantiate_module(hparams)
    with torch.device("meta"):
        model = module.build_model(schema)
    if not isinstance(model, LifelongCtrModel | GenerativeModel):
        raise ExportError(f"export supports LifelongCtrModule and GenerativeModule checkpoints, "
                          f"not {type(module).__name__}")  # fmt: skip
    dense = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()
             if not k.startswith("embeddings.")}  # fmt: skip
    load_tensors(ckpt, {STATE_PREFIX + k: v for k, v in dense.items()})
    model.load_state_dict(dense, strict=False, assign=True)
    return model.eval()


def load_trained_model(
    ckpt: str | Path, data_root: str | None = None
) -> tuple[torch.nn.Module, LifeseqDataModule]:
    """The checkpoint's whole model (plain-torch tables, every tensor loaded by DCP), in eval
    mode, and its data module: the reference the export must match, and what offline analyses
    (e.g. `lifeseq demo`'s per-target scores) run. Holds every table in memory."""
    ckpt = Path(ckpt)
    tree, _ = read_checkpoint_tree(ckpt)
    data = data_module(tree, data_root)
    model = instantiate_module(tree["hyper_parameters"]).build_model(data.schema)
    state = model.state_dict()
    load_tensors(ckpt, {STATE_PREFIX + k: v for k, v in state.items()})
    model.load_state_dict(state)
    return model.eval(), data


# --- writing ----------------------------------------------------------------------------------


def _save_npy(root: Path, name: str, array: np.ndarray) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    return name


def _range_name(prefix: str, start: int, end: int) -> str:
    return f"{prefix}/{start:012d}-{end:012d}.npy"


def export_tables(ckpt: Path, root: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Write every embedding-collection table shard by shard; returns the manifest section."""
    tables = {}
    metadata = JsonFileSystemReader(str(ckpt)).read_metadata()
    for spec in model.config.tables():  # type: ignore[union-attr,operator]
        fqn = f"{STATE_PREFIX}embeddings.collections.d{spec.embedding_dim}.embeddings.{spec.name}.weight"
        shards = []
        for start, end, chunks in row_shards(ckpt, metadata, fqn):
            rows = read_rows(ckpt, chunks)
            if start == 0:
                rows[0] = 0.0  # padding id 0 embeds to zeros
            name = _save_npy(root, _range_name(f"tables/{spec.name}", start, end), rows.numpy())
            shards.append({"file": name, "start": start, "end": end})
        tables[spec.name] = {
            "rows": spec.num_embeddings, "dim": spec.embedding_dim, "dtype": "float32",
            "features": list(spec.feature_names), "shards": shards,
        }  # fmt: skip
    return tables


def _item_categories(vocab_dir: Path, rows: int) -> np.ndarray:
    """(rows,) int64 category id of every item id (OOV for ids the vocab lacks; 0 for padding)."""
    categories = Vocab(vocab_dir / "item.parquet").categories(np.arange(rows, dtype=np.int64))
    categories[0] = 0
    return categories


def export_item_caches(
    root: Path, model: torch.nn.Module, tables: dict[str, Any]
) -> dict[str, Any]:
    """TWIN: ESU keys per item; generative: L2-normalized item embeddings (per item shard)."""
    item = tables["item"]
    caches: dict[str, Any] = {}
    if isinstance(model, GenerativeModel):
        shards = []
        for shard in item["shards"]:
            rows = torch.from_numpy(np.load(root / shard["file"]))
            normalized = F.normalize(rows, dim=-1, eps=L2_EPS)
            name = _range_name("cache/item_index", shard["start"], shard["end"])
            shards.append({**shard, "file": _save_npy(root, name, normalized.numpy())})
        caches["item_index"] = {"rows": item["rows"], "width": item["dim"], "shards": shards}
    elif isinstance(model, LifelongCtrModel) and model.config.arch.long_term == "twin":
        assert model.attention is not None
        categories = _item_categories(root / "vocab", item["rows"])
        category_rows = torch.from_numpy(
            np.concatenate([np.load(root / s["file"]) for s in tables["category"]["shards"]])
        )
        shards = []
        with torch.no_grad():
            for shard in item["shards"]:
                rows = torch.from_numpy(np.load(root / shard["file"]))
                ids = torch.from_numpy(categories[shard["start"] : shard["end"]])
                keys = model.item_keys(rows, category_rows[ids]).flatten(1)
                name = _range_name("cache/twin_item_keys", shard["start"], shard["end"])
                shards.append({**shard, "file": _save_npy(root, name, keys.numpy())})
        heads, head_dim = model.attention.heads, model.attention.head_dim
        caches["twin_item_keys"] = {
            "rows": item["rows"], "width": heads * head_dim, "heads": heads,
            "head_dim": head_dim, "category_source": "vocab/item.parquet category_id",
            "shards": shards,
        }  # fmt: skip
    return caches


def export_vocabs(data_root: Path, root: Path) -> dict[str, Any]:
    """`OUT/vocab/{name}/` (Spark Parquet) → `vocab/{name}.parquet`, sorted by id.

    Raises:
        ExportError: a vocabulary is missing (the data root is not a `lifeseq build` output).
    """
    section = {}
    for name in VOCABS:
        source = data_root / "vocab" / name
        if not source.exists():
            raise ExportError(f"{source}: vocabulary missing; pass --data OUT, the lifeseq build "
                              "output the model was trained on")  # fmt: skip
        table = pads.dataset(str(source), format="parquet").to_table()
        table = table.sort_by("id")
        columns = ["raw_id", "id"] + (["category_id"] if name == "item" else [])
        table = table.select(columns).cast(
            pa.schema([pa.field(c, pa.string() if c == "raw_id" else pa.int64()) for c in columns])
        )
        target = root / "vocab" / f"{name}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
        section[name] = {"file": f"vocab/{name}.parquet", "entries": table.num_rows}
    return section


def _example_ctr_request(
    model: LifelongCtrModel, events: int, candidates: int
) -> dict[str, torch.Tensor]:
    d = model.config.embedding_dim
    generator = torch.Generator().manual_seed(0)

    def ids(n: int, high: int) -> torch.Tensor:
        return torch.randint(1, max(high, 2), (n,), generator=generator)

    request = {
        "event_item": ids(events, model.config.item_rows),
        "event_category": ids(events, model.config.category_rows),
        "event_behavior": ids(events, model.config.behavior_rows),
        "event_ts": torch.arange(events, dtype=torch.int64) * 100 + 1_700_000_000,
        "event_item_emb": torch.randn(events, d, generator=generator),
        "event_category_emb": torch.randn(events, d, generator=generator),
        "target_item": ids(candidates, model.config.item_rows),
        "target_category": ids(candidates, model.config.category_rows),
        "target_item_emb": torch.randn(candidates, d, generator=generator),
        "target_category_emb": torch.randn(candidates, d, generator=generator),
        "request_ts": torch.tensor([1_700_000_000 + 100 * events]),
    }
    for name in ("gsu_event_item_emb", "gsu_event_category_emb"):
        request[name] = torch.randn(events, d, generator=generator)
    for name in ("gsu_target_item_emb", "gsu_target_category_emb"):
        request[name] = torch.randn(candidates, d, generator=generator)
    if model.attention is not None:
        request["event_keys"] = torch.randn(
            events, model.attention.heads, model.attention.head_dim, generator=generator
        )
    return request


def _check_no_pickle(path: Path) -> None:
    """Refuse a `.pt2` whose weights or constants are stored pickled."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith("_config.json") and b'"use_pickle": true' in archive.read(name):
                raise ExportError(f"{path}: {name} stores pickled tensors; export refuses them")


def _shape_names(example: torch.Tensor, spec: Any) -> list[int | str]:
    """A tensor's shape with its dynamic dimensions named (`events`, `candidates`, `length`)."""
    name = getattr(spec.get(0), "__name__", None) if isinstance(spec, dict) else None
    return [name if i == 0 and name else n for i, n in enumerate(example.shape)]


def export_dense(root: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Trace the request model with `torch.export`; returns the manifest section."""
    dense_dir = root / "dense"
    dense_dir.mkdir(parents=True, exist_ok=True)
    programs: dict[str, Any] = {}
    with torch.no_grad():
        if isinstance(model, GenerativeModel):
            scorer: torch.nn.Module = GenerativeRequestModel(model).eval()
            n = min(8, model.config.max_len)
            example = {
                "item_emb": torch.randn(n, model.config.embedding_dim),
                "key_ts": torch.arange(n, dtype=torch.int64),
                "query_ts": torch.arange(1, n + 1, dtype=torch.int64),
            }
            length = torch.export.Dim("length", min=1, max=model.config.max_len)
            shapes = {k: {0: length} for k in example}
            variants = {"model": (example, shapes)}
        else:
            assert isinstance(model, LifelongCtrModel)
            cached = model.config.arch.long_term == "twin"
            scorer = CtrRequestModel(model, cached_keys=cached).eval()
            events = torch.export.Dim("events", min=1, max=MAX_EVENTS)
            candidates = torch.export.Dim("candidates", min=1, max=MAX_CANDIDATES)
            variants = {}
            for name, n in (("model", 8), ("model_no_history", 0)):
                full = _example_ctr_request(model, n, 4)
                example = {k: full[k] for k in scorer.input_names}
                shapes = {
                    k: {0: torch.export.Dim.STATIC} if k == "request_ts" else
                    {0: candidates if "target" in k else (events if n else torch.export.Dim.STATIC)}
                    for k in example
                }  # fmt: skip
                variants[name] = (example, shapes)
        for name, (example, shapes) in variants.items():
            program = torch.export.export(scorer, (example,), dynamic_shapes=(shapes,))
            path = dense_dir / f"{name}.pt2"
            torch.export.save(program, path)
            _check_no_pickle(path)
            programs[name] = {
                "file": f"dense/{name}.pt2",
                "inputs": {
                    k: {
                        "dtype": str(v.dtype).removeprefix("torch."),
                        "shape": _shape_names(v, shapes[k]),
                    }
                    for k, v in example.items()
                },  # fmt: skip
            }
    return programs


def _model_section(model: torch.nn.Module, data: LifeseqDataModule) -> dict[str, Any]:
    config = dataclasses.asdict(model.config)  # type: ignore[call-overload]
    if isinstance(model, GenerativeModel):
        return {"family": "generative", "name": model.config.arch.encoder, "config": config,
                "max_len": model.config.max_len}  # fmt: skip
    assert isinstance(model, LifelongCtrModel)
    return {"family": "ctr", "name": model.config.arch.long_term, "config": config,
            "max_history": data.feature_config.max_history}  # fmt: skip


def export_checkpoint(
    ckpt: str | Path, out: str | Path, data_root: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Export checkpoint `ckpt` to directory `out` (see the module docstring).

    Args:
        ckpt: a checkpoint directory written by training (`RUN/checkpoints/*.ckpt`).
        out: export directory to create.
        data_root: the `lifeseq build` output (default: the run's `data.root`), for the
            feature schema and vocabularies.
        overwrite: replace an existing `out`.

    Returns:
        The manifest.

    Raises:
        ExportError: `out` exists (without `overwrite`), an unsupported model, or missing inputs.
        FileNotFoundError: `ckpt` is not a checkpoint.
    """
    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: exists; pass --overwrite to replace it")
    started = time.monotonic()
    tree, _ = read_checkpoint_tree(ckpt)
    data = data_module(tree, data_root)
    model = load_model(ckpt, data.schema, tree["hyper_parameters"])
    tmp = out.parent / f"{out.name}.tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vocab = export_vocabs(Path(data.root), tmp)
    tables = export_tables(ckpt, tmp, model)
    caches = export_item_caches(tmp, model, tables)
    dense = export_dense(tmp, model)
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {
        "format_version": EXPORT_FORMAT_VERSION,
        "created_unix": int(time.time()),
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "lifeseq": _lifeseq_version(),
        },  # fmt: skip
        "checkpoint": {
            "path": str(ckpt.resolve()),
            "global_step": tree.get("global_step"),
            "epoch": tree.get("epoch"),
            "schema_hash": data.schema.hash(),
        },  # fmt: skip
        "model": _model_section(model, data),
        "tables": tables,
        "caches": caches,
        "dense": dense,
        "vocab": vocab,
        "files": {str(p.relative_to(tmp)): file_entry(p) for p in files},
    }
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("exported %s to %s in %.1f s", ckpt, out, time.monotonic() - started)
    return manifest


def _lifeseq_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lifeseq")
    except PackageNotFoundError:
        return "unknown"
