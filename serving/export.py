"""`lifeseq export`: a trained checkpoint → the files a serving stack loads (layout:
`serving.artifacts`).

    lifeseq export --ckpt RUN/checkpoints/last.ckpt --out EXPORT [--data OUT]

* The model is rebuilt from the checkpoint's hyper-parameters (`_class_path` + init args, as
  LightningCLI saved them; a checkpoint from before the model zoo is translated by
  `trainers.legacy`) and the data's feature schema, on the `meta` device: no embedding table
  is ever allocated whole. Dense weights are loaded from the checkpoint.
* Nothing here knows a model: every model is a `models.interfaces.SparseDenseModel` — the
  tables it declares (`embeddings`) and its dense part (`dense`) — and says how it is served
  (`serving_spec`: the request program, its inputs and where serving gets each). A model
  that cannot be served (submodules outside the two parts, no request program, a program
  `torch.export` cannot trace) is refused here with its name and the reason.
* Embedding tables are copied chunk by chunk from the sharded checkpoint: each chunk DCP wrote
  (one rank's row-wise shard) is read alone (`torch.load(weights_only=True)` of its byte
  range) and written as one `.npy` of rows [start, end), so a process holds one shard at a
  time. Column-wise shards of a row range are joined first. Row 0 (padding) is written as
  zeros: the models embed id 0 to zeros whatever the row holds.
* Item caches the model declares (`item_caches`: TWIN's ESU keys, the sequential models'
  L2-normalized item index) are written per item shard (an item's category comes from the
  item vocabulary; the category table is read whole — it is small).
* The request program is traced by `torch.export` with dynamic sizes into `dense/*.pt2` (one
  file per `ProgramVariant`, e.g. CTR's `model` and `model_no_history`); the manifest's
  `request` section lists its inputs and their sources, which is all the scorer reads.
* A model may declare further programs (`ServingSpec.programs`: an incremental-state model's
  `update` and `score_state`), traced the same way into `dense/{name}.pt2` and listed with
  their inputs in the manifest's `programs` section, and an initial per-user state
  (`ServingSpec.state`), written as `state/{name}.npy` (manifest `state`).
* Vocabularies are read from the pipeline output (`OUT/vocab/`) into one Parquet file each.
* `manifest.json` lists versions, the model (class paths and configs), shapes, dtypes and
  every file's sha256.

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
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from lifeseq.features.schema import FeatureSchema
from lifeseq.models.interfaces import ExportUnsupported, RequestInput, SparseDenseModel, class_path
from lifeseq.pipeline.progress import step_progress
from lifeseq.serving.artifacts import EXPORT_FORMAT_VERSION, MANIFEST_FILE, ExportError, file_entry
from lifeseq.serving.compiled import COMPILED_DIR, compile_program, compiler_missing
from lifeseq.serving.scorer import Vocab
from lifeseq.trainers.checkpoint import JsonFileSystemReader, load_tensors, read_checkpoint_tree
from lifeseq.trainers.cold_items import OOV_ID, TrainedRows
from lifeseq.trainers.data import LifeseqDataModule
from lifeseq.trainers.legacy import checkpoint_names, migrate_hparams
from lifeseq.trainers.platform_module import PlatformModule, module_from_hparams

logger = logging.getLogger(__name__)

STATE_PREFIX = "/state_dict/model."
VOCABS = ("item", "category", "behavior")


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
    """The LightningModule of the checkpoint (migrated when from before the model zoo), with
    the plain-torch embedding backend (export reads tables from the checkpoint itself).

    Raises:
        ExportError: the hyper-parameters have no `_class_path`.
    """
    if not hparams.get("_class_path"):
        raise ExportError("checkpoint hyper_parameters have no _class_path (not a LightningCLI "
                          "run?); train with lifeseq train")  # fmt: skip
    return module_from_hparams(migrate_hparams(hparams), backend="torch")


def data_module(tree: dict[str, Any], data_root: str | None) -> LifeseqDataModule:
    """The run's data module (its `root` replaced by `data_root` when given), set up."""
    hparams = {k: v for k, v in tree["datamodule_hyper_parameters"].items()
               if not k.startswith("_")}  # fmt: skip
    if data_root is not None:
        hparams["root"] = data_root
    data = LifeseqDataModule(**hparams)
    data.setup("predict")
    return data


def load_model(ckpt: Path, schema: FeatureSchema, hparams: dict[str, Any]) -> SparseDenseModel:
    """The trained model, dense weights loaded, embedding tables left on `meta`.

    Raises:
        ExportError: a model export cannot split into tables and a dense part, or dense
            weights missing.
    """
    module = instantiate_module(hparams)
    with torch.device("meta"):
        model = module.build_model(schema)
    check_exportable(model)
    dense = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()
             if not k.startswith("embeddings.")}  # fmt: skip
    names = checkpoint_names(hparams, list(dense))
    load_tensors(ckpt, {STATE_PREFIX + names[k]: v for k, v in dense.items()})
    model.load_state_dict(dense, strict=False, assign=True)
    return model.eval()


def check_exportable(model: torch.nn.Module) -> None:
    """Raise `ExportError` naming the model and the reason when it cannot be served: not a
    `SparseDenseModel`, or submodules outside its `embeddings` and `dense` parts."""
    if not isinstance(model, SparseDenseModel):
        raise ExportError(f"{class_path(model)}: export needs a model split into embedding "
                          "tables and a dense part (models.interfaces.SparseDenseModel)")  # fmt: skip
    try:
        model.check_split()
    except ExportUnsupported as err:
        raise ExportError(str(err)) from None


def load_trained_model(
    ckpt: str | Path, data_root: str | None = None
) -> tuple[SparseDenseModel, LifeseqDataModule]:
    """The checkpoint's whole model (plain-torch tables, every tensor loaded by DCP), in eval
    mode, and its data module: the reference the export must match, and what offline analyses
    (e.g. `lifeseq demo`'s per-target scores) run. Holds every table in memory."""
    ckpt = Path(ckpt)
    tree, _ = read_checkpoint_tree(ckpt)
    data = data_module(tree, data_root)
    hparams = tree["hyper_parameters"]
    model = instantiate_module(hparams).build_model(data.schema)
    state = model.state_dict()
    names = checkpoint_names(hparams, list(state))
    load_tensors(ckpt, {STATE_PREFIX + names[k]: v for k, v in state.items()})
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


def export_tables(ckpt: Path, root: Path, model: SparseDenseModel) -> dict[str, Any]:
    """Write every embedding-collection table shard by shard; returns the manifest section."""
    tables = {}
    metadata = JsonFileSystemReader(str(ckpt)).read_metadata()
    for spec in model.embeddings.tables:
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
    root: Path, model: SparseDenseModel, tables: dict[str, Any]
) -> dict[str, Any]:
    """Every item cache the model declares (`SparseDenseModel.item_caches`: TWIN's ESU keys,
    the sequential models' L2-normalized item index), per item shard. An item's category rows
    come from the item vocabulary's `category_id` and the exported category table."""
    item = tables["item"]
    caches: dict[str, Any] = {}
    declared = model.item_caches()
    if not declared:
        return caches
    category_rows: torch.Tensor | None = None
    categories: np.ndarray | None = None
    if "category" in tables:
        categories = _item_categories(root / "vocab", item["rows"])
        category_rows = torch.from_numpy(
            np.concatenate([np.load(root / s["file"]) for s in tables["category"]["shards"]])
        )
    for name, cache in declared.items():
        shards = []
        with torch.no_grad():
            for shard in item["shards"]:
                rows = torch.from_numpy(np.load(root / shard["file"]))
                if category_rows is not None and categories is not None:
                    ids = torch.from_numpy(categories[shard["start"] : shard["end"]])
                    their_categories = category_rows[ids]
                else:
                    their_categories = rows.new_zeros(rows.shape[0], 0)
                values = cache.compute(rows, their_categories).reshape(rows.shape[0], -1)
                file = _range_name(f"cache/{name}", shard["start"], shard["end"])
                shards.append({**shard, "file": _save_npy(root, file, values.numpy())})
        caches[name] = {
            "rows": item["rows"], "width": int(np.prod(cache.row_shape)),
            "row_shape": list(cache.row_shape), "feeds_request": cache.feeds_request,
            "shards": shards,
        }  # fmt: skip
    return caches


def export_vocabs(
    data_root: Path, root: Path, trained: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """`OUT/vocab/{name}/` (Spark Parquet) → `vocab/{name}.parquet`, sorted by id.

    With `trained` (table → (rows,) bool, `trainers.cold_items.TrainedRows`), ids the model
    never trained are left out, so serving looks them up as unknown (the OOV row), as the
    model's own evaluation does; an item's untrained category becomes the OOV category.

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
        entry: dict[str, Any] = {"file": f"vocab/{name}.parquet"}
        if trained is not None and name in trained:
            keep = trained[name][table.column("id").to_numpy()]
            entry["untrained_left_out"] = int((~keep).sum())
            table = table.filter(pa.array(keep))
        if trained is not None and name == "item" and "category" in trained:
            categories = table.column("category_id").to_numpy()
            known = trained["category"][categories] | (categories == 0)
            table = table.set_column(
                table.schema.get_field_index("category_id"), "category_id",
                pa.array(np.where(known, categories, OOV_ID), type=pa.int64()),
            )  # fmt: skip
        target = root / "vocab" / f"{name}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
        section[name] = {**entry, "entries": table.num_rows}
    return section


def _check_no_pickle(path: Path) -> None:
    """Refuse a `.pt2` whose weights or constants are stored pickled."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith("_config.json") and b'"use_pickle": true' in archive.read(name):
                raise ExportError(f"{path}: {name} stores pickled tensors; export refuses them")


def _dynamic_shapes(
    inputs: list[RequestInput], dims: dict[str, tuple[int, int]], static: tuple[str, ...]
) -> dict[str, Any]:
    """`torch.export` dynamic shapes of a program's inputs: named dims dynamic within `dims`
    unless `static`, integer dims static."""
    dynamic = {name: torch.export.Dim(name, min=low, max=high)
               for name, (low, high) in dims.items()}  # fmt: skip
    return {
        i.name: {
            axis: torch.export.Dim.STATIC if (not isinstance(n, str) or n in static) else dynamic[n]
            for axis, n in enumerate(i.shape)
        }
        for i in inputs
    }


def _export_program(
    path: Path, module: torch.nn.Module, example: dict[str, torch.Tensor], shapes: dict[str, Any],
    what: str, name: str,
) -> None:  # fmt: skip
    """`torch.export` `module` on `example` into `path` (no pickled tensors).

    Raises:
        ExportError: tracing failed, naming the model (`name`) and the program (`what`).
    """
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=(shapes,))
    except Exception as err:  # noqa: BLE001 (any tracing failure is the model's)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"{name}: torch.export of its {what} failed ({first}); the dense part must trace "
            "with dynamic sizes (see models.interfaces.ServingSpec)"
        ) from err
    torch.export.save(program, path)
    _check_no_pickle(path)


def export_dense(root: Path, model: SparseDenseModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trace the model's request program (`serving_spec`) with `torch.export`, one program
    per variant; returns the manifest's `dense` and `request` sections (`export_programs`
    without the spec's further programs and state).

    Raises:
        ExportError: the model has no request program, or tracing it failed (naming the model).
    """
    sections = export_programs(root, model, extras=False)
    return sections["dense"], sections["request"]


def export_programs(root: Path, model: SparseDenseModel, extras: bool = True) -> dict[str, Any]:
    """Trace the model's request program (`serving_spec`) with `torch.export`, one program
    per variant, and (`extras`) the spec's further programs (`ServingSpec.programs`, e.g. an
    incremental-state model's `update` and `score_state`) into `dense/{name}.pt2`, and write
    its initial per-user state (`ServingSpec.state`) as `state/{name}.npy`.

    Returns:
        The manifest's `dense`, `request`, `programs` and `state` sections (the last two
        empty for a model with neither).

    Raises:
        ExportError: the model has no request program, a program name is taken twice, or
            tracing failed (naming the model and the program).
    """
    name = model_label(model)
    try:
        spec = model.serving_spec()
    except (ExportUnsupported, NotImplementedError) as err:
        raise ExportError(f"{name}: cannot be exported: {err}") from None
    dense_dir = root / "dense"
    dense_dir.mkdir(parents=True, exist_ok=True)
    programs: dict[str, Any] = {}
    scorer = spec.program.eval()
    with torch.no_grad():
        for variant in spec.variants:
            example = spec.example(variant.sizes)
            shapes = _dynamic_shapes(spec.inputs, spec.dims, variant.static)
            path = dense_dir / f"{variant.name}.pt2"
            _export_program(path, scorer, example, shapes, "request program", name)
            programs[variant.name] = {
                "file": f"dense/{variant.name}.pt2",
                "static": {dim: variant.sizes[dim] for dim in variant.static},
                "inputs": {
                    i.name: {
                        "dtype": i.dtype,
                        "shape": [variant.sizes[n] if n in variant.static else n for n in i.shape],
                    }
                    for i in spec.inputs
                },  # fmt: skip
            }
    request = {
        "family": spec.family,
        "inputs": [dataclasses.asdict(i) for i in spec.inputs],
        "dims": {k: list(v) for k, v in spec.dims.items()},
    }
    extra: dict[str, Any] = {}
    state: dict[str, Any] = {}
    for program in spec.programs if extras else []:
        if program.name in programs or program.name in extra:
            raise ExportError(f"{name}: two programs named {program.name!r}; names must differ")
        shapes = _dynamic_shapes(program.inputs, program.dims, ())
        with torch.no_grad():
            _export_program(
                dense_dir / f"{program.name}.pt2", program.program.eval(),
                program.example(program.sizes), shapes, f"{program.name!r} program", name,
            )  # fmt: skip
        extra[program.name] = {
            "file": f"dense/{program.name}.pt2",
            "inputs": [dataclasses.asdict(i) for i in program.inputs],
            "dims": {k: list(v) for k, v in program.dims.items()},
        }
    for key, tensor in spec.state.items() if extras else []:
        array = tensor.detach().to(torch.float32).cpu().numpy()
        state[key] = {"file": _save_npy(root, f"state/{key}.npy", array),
                      "shape": list(array.shape), "dtype": "float32"}  # fmt: skip
    return {"dense": programs, "request": request, "programs": extra, "state": state}


def _model_section(
    model: SparseDenseModel, data: LifeseqDataModule, hparams: dict[str, Any]
) -> dict[str, Any]:
    return {
        "family": model.family,
        "name": _model_name(model),
        "task": hparams.get("_class_path"),
        "model": model.describe(),
        "max_len": model.describe().get("max_len"),  # events a request may carry
        "max_history": data.feature_config.max_history,
    }


def model_label(model: SparseDenseModel) -> str:
    """The zoo class paths a model is made of (`LifelongCtr + Twin`, an encoder's path), for
    messages."""
    described = model.describe()
    parts = [described.get("encoder") or described.get("class_path") or class_path(model)]
    if isinstance(described.get("long_term"), dict):
        parts.append(described["long_term"]["class_path"])
    return " + ".join(str(p) for p in parts)


def _model_name(model: SparseDenseModel) -> str:
    """The class name of the model's last zoo part (the long-term unit's for `LifelongCtr`)."""
    return model_label(model).split(" + ")[-1].rsplit(".", 1)[-1]


def compile_dense(root: Path, dense: dict[str, Any]) -> dict[str, Any]:
    """AOTInductor packages of the request programs (`serving.compiled`); the manifest's
    `compiled` section: `{"programs": {name: {file, seconds}}, "torch": version}`, or
    `{"skipped": reason}` when there is no C++ compiler or Inductor fails (export goes on:
    the `torch.export` programs still serve)."""
    reason = compiler_missing()
    programs: dict[str, Any] = {}
    for name, spec in dense.items() if reason is None else ():
        package = root / COMPILED_DIR / f"{name}.pt2"
        try:
            seconds = compile_program(root / spec["file"], package)
        except RuntimeError as err:
            reason = f"{err}; the export serves its torch.export programs"
            shutil.rmtree(root / COMPILED_DIR, ignore_errors=True)
            break
        programs[name] = {"file": f"{COMPILED_DIR}/{name}.pt2", "seconds": round(seconds, 1)}
    if reason is not None:
        logger.warning("compiled packages skipped: %s", reason)
        return {"skipped": reason}
    return {"programs": programs, "torch": torch.__version__}


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    data_root: str | None = None,
    overwrite: bool = False,
    compiled: bool = True,
) -> dict[str, Any]:
    """Export checkpoint `ckpt` to directory `out` (see the module docstring).

    Args:
        ckpt: a checkpoint directory written by training (`RUN/checkpoints/*.ckpt`).
        out: export directory to create.
        data_root: the `lifeseq build` output (default: the run's `data.root`), for the
            feature schema and vocabularies.
        overwrite: replace an existing `out`.
        compiled: also write AOTInductor packages of the request programs (`compiled/`;
            skipped with a warning without a C++ compiler).

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
    rows = TrainedRows.for_scoring(ckpt) if data.view == "ctr" else None
    trained = {t: m.numpy() for t, m in rows.masks.items()} if rows is not None else None
    with step_progress(f"export {out.name}: vocabularies", total=6) as steps:
        vocab = export_vocabs(Path(data.root), tmp, trained)
        steps.advance(f"export {out.name}: embedding tables")
        tables = export_tables(ckpt, tmp, model)
        steps.advance(f"export {out.name}: item caches")
        caches = export_item_caches(tmp, model, tables)
        steps.advance(f"export {out.name}: torch.export programs")
        sections = export_programs(tmp, model)
        steps.advance(f"export {out.name}: AOTInductor packages")
        packages = (
            compile_dense(tmp, sections["dense"])
            if compiled
            else {"skipped": "not asked for (lifeseq export --no-compile)"}
        )
        steps.advance(f"export {out.name}: checksums")
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        entries = {str(p.relative_to(tmp)): file_entry(p) for p in files}
        steps.advance(f"export {out.name}: done")
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
        "model": _model_section(model, data, migrate_hparams(tree["hyper_parameters"])),
        "tables": tables,
        "caches": caches,
        **sections,
        "vocab": vocab,
        "compiled": packages,
        "files": entries,
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
