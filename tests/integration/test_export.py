"""`lifeseq export` → `serving.Scorer` round trips, for every model family.

* TWIN is trained for a few steps under `torchrun` with 2 ranks (TorchRec, row-wise sharded
  item table); the same weights are re-saved from one process; both checkpoints export to the
  same table rows, item-key cache and scores, the 2-rank one shard by shard (two item files).
* Every other model (the smoke model, DIN, SIM hard / soft, ETA, full attention, HSTU, SASRec
  and the masked-item SASRec) is a checkpoint of its configured model (the family's base YAML
  merged with the model's, as LightningCLI does) with seeded random weights (tables scaled up
  so scores spread), written by the platform's own `save_checkpoint`.
* The reference is the model rebuilt from the checkpoint with every tensor loaded by DCP, in
  eval mode, on the batch the data loader would build (`collate_ctr` / `collate_generative`),
  queried as its task evaluates it: the scorer's numbers must match it within 1e-5.
* Damaged exports (a flipped byte, a truncated or missing file, no manifest) and malformed
  requests must raise `ExportError` / `RequestError` naming the problem.

Data: `write_out_dir` shards (120-event histories) plus hand-written vocabularies: item id k has
raw id `i{k}` and category 2 + k % 4, category k is `c{k}`, behavior k is `b{k}`.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lifeseq.features.batch import collate_ctr, collate_generative
from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.embeddings import torchrec_available
from lifeseq.models.blocks.retrieval import top_k_items
from lifeseq.models.interfaces import SparseDenseModel
from lifeseq.models.sequential import SequenceStep
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.serving.artifacts import ExportError, read_manifest, sha256_file
from lifeseq.serving.compiled import compiler_missing
from lifeseq.serving.export import (
    data_module,
    export_checkpoint,
    instantiate_module,
    load_trained_model,
)
from lifeseq.serving.scorer import CtrRequest, NextItemRequest, RequestError, RequestLimits, Scorer
from lifeseq.trainers.checkpoint import read_checkpoint_tree, save_checkpoint
from lifeseq.trainers.cold_items import CHECKPOINT_KEY, OOV_ID, TrainedRows
from lifeseq.trainers.tasks.masked_item import masked_query_rows
from lifeseq.trainers.tasks.next_item import target_queries
from lifeseq.trainers.tasks.sequential import ranked_targets
from tests.distributed.test_train_job import REPO_ROOT, torchrun
from tests.unit.test_dataset import VOCAB, write_out_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.distributed,
    pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable"),
]

SIZES = {"train": [12, 9, 14, 7, 10, 8, 11, 9], "valid": [10, 6], "test": [8]}
MAX_HISTORY = 64
MAX_LEN = 48
TOL = 1e-5
#: Lifelong CTR overrides: the frame's config, and the long-term unit's (keys its config has).
CTR_FRAME = {"short_term_len": 16}
LONG_TERM = {"top_k": 8, "chunk": 32}
#: Config files (under configs/, merged in order) of every exported model.
CONFIGS = {
    "smoke": ("smoke.yaml",),
    **{name: ("ctr/base.yaml", f"ctr/{name}.yaml")
       for name in ("din", "sim_hard", "sim_soft", "eta", "twin", "full")},
    **{name: ("sequential/base.yaml", f"sequential/{name}.yaml")
       for name in ("hstu", "sasrec", "cloze")},
}  # fmt: skip
#: Sequential encoder config overrides.
ENCODER = {
    "hstu": {"attention_dim": 8, "linear_dim": 8, "blocks": 2, "heads": 2},
    "sasrec": {"ffn_dim": 16, "blocks": 2, "heads": 2},
    "cloze": {"ffn_dim": 16, "blocks": 2, "heads": 2},
}
#: The export's model name (`manifest["model"]["name"]`, `Scorer.name`): the zoo class's name,
#: the long-term unit's for a lifelong CTR model.
NAMES = {
    "smoke": "SmokeCtr", "din": "LifelongCtr", "sim_hard": "SimHard", "sim_soft": "SimSoft",
    "eta": "Eta", "twin": "Twin", "twin_one_rank": "Twin", "full": "FullAttention",
    "hstu": "Hstu", "sasrec": "SasRec", "cloze": "SasRec",
}  # fmt: skip
TABLE_SCALE = 50.0  # random-init tables are ~1e-2; scaled so candidates score differently


def item_category(item: np.ndarray) -> np.ndarray:
    """The category id the test vocabulary gives item ids (>= 2)."""
    return 2 + item % 4


def write_vocabs(out: Path) -> None:
    """`OUT/vocab/{item,category,behavior}/part-00000.parquet`, as `lifeseq build` writes."""
    for name, raw_prefix in (("item", "i"), ("category", "c"), ("behavior", "b")):
        ids = np.arange(2, VOCAB[name], dtype=np.int64)
        columns = {
            "raw_id": pa.array([f"{raw_prefix}{i}" for i in ids]),
            "id": pa.array(ids),
            "count": pa.array(np.full(ids.size, 7, dtype=np.int64)),
        }
        if name == "item":
            columns["category_id"] = pa.array(item_category(ids))
        directory = out / "vocab" / name
        directory.mkdir(parents=True)
        pq.write_table(pa.table(columns), directory / "part-00000.parquet")


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export") / "out"
    write_out_dir(root, SIZES, history_len=120)
    write_vocabs(root)
    return root


# --- checkpoints ------------------------------------------------------------------------------


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into `base` as repeated `--config` files merge: nested mappings key by
    key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def model_overrides(name: str, init: dict[str, Any]) -> dict[str, Any]:
    """The small-model overrides of model `name` (its `model.init_args` is `init`) as a
    `model.init_args` fragment: CTR_FRAME and the LONG_TERM keys its unit's config has for a
    lifelong CTR model, ENCODER for a sequential one, none for the smoke model."""
    if name in ENCODER:
        return {"encoder": {"init_args": {"config": ENCODER[name]}}}
    if name == "smoke":
        return {}
    long_term = init["model"]["init_args"].get("long_term")
    frame: dict[str, Any] = {"config": CTR_FRAME}
    if long_term is not None:
        unit = long_term["init_args"]["config"]
        frame["long_term"] = {"init_args": {"config": {
            k: v for k, v in LONG_TERM.items() if k in unit
        }}}  # fmt: skip
    return {"model": {"init_args": frame}}


def config_hparams(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model hyper_parameters as LightningCLI saves them, data hyper_parameters) of model
    `name`'s merged config files, small-model overrides applied, torch embedding backend."""
    config: dict[str, Any] = {}
    for path in CONFIGS[name]:
        config = merge(config, yaml.safe_load((REPO_ROOT / "configs" / path).read_text()))
    init = merge(config["model"]["init_args"], model_overrides(name, config["model"]["init_args"]))
    init["embedding"] = {"backend": "torch"}
    return {"_class_path": config["model"]["class_path"], **init}, dict(config["data"])


def save_model(
    ckpt: Path, model: torch.nn.Module, tree: dict[str, Any], rows: TrainedRows | None = None
) -> None:
    """A one-process checkpoint of `model` with the hyper-parameters of `tree` (and the trained
    rows `rows`, as training saves them)."""
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": tree["hyper_parameters"],
        "datamodule_hyper_parameters": tree["datamodule_hyper_parameters"],
        "global_step": tree.get("global_step", 0),
        "epoch": tree.get("epoch", 0),
    }
    if rows is not None:
        checkpoint["lifeseq"] = {CHECKPOINT_KEY: rows.state()}
    save_checkpoint(checkpoint, ckpt)


def random_checkpoint(ckpt: Path, out: Path, name: str) -> Path:
    """A checkpoint of model `name` (`config_hparams`) with seeded random weights."""
    hparams, data = config_hparams(name)
    data |= {"root": str(out), "num_workers": 0, "max_history": MAX_HISTORY, "max_len": MAX_LEN,
             "embedding_dim": 16}  # fmt: skip
    tree = {"hyper_parameters": hparams, "datamodule_hyper_parameters": data}
    model = instantiate_module(hparams).build_model(data_module(tree, None).schema)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.startswith("embeddings."):
                param.mul_(TABLE_SCALE)
    save_model(ckpt, model, tree)
    return ckpt


@pytest.fixture(scope="module")
def twin_two_rank(out: Path) -> Path:
    run = out.parent / "twin2"
    args = [
        str(REPO_ROOT / "jobs" / "train.py"), "fit",
        "--config", str(REPO_ROOT / "configs" / "ctr" / "base.yaml"),
        "--config", str(REPO_ROOT / "configs" / "ctr" / "twin.yaml"),
        "--data.root", str(out), "--trainer.default_root_dir", str(run),
        "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
        "--data.max_history", str(MAX_HISTORY), "--data.batch_size", "4",
        "--trainer.max_steps", "8", "--trainer.val_check_interval", "8",
        *[a for k, v in CTR_FRAME.items()
          for a in (f"--model.init_args.model.init_args.config.{k}", str(v))],
        *[a for k, v in LONG_TERM.items()
          for a in (f"--model.init_args.model.init_args.long_term.init_args.config.{k}", str(v))],
    ]  # fmt: skip
    torchrun(2, args, "twin 2-rank fit")
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def twin_one_rank(out: Path, twin_two_rank: Path) -> Path:
    model, _ = load_trained_model(twin_two_rank)
    tree, _ = read_checkpoint_tree(twin_two_rank)
    ckpt = out.parent / "twin1.ckpt"
    save_model(ckpt, model, tree, TrainedRows.from_checkpoint(twin_two_rank))
    return ckpt


@pytest.fixture(scope="module")
def exports(out: Path, twin_two_rank: Path, twin_one_rank: Path) -> dict[str, tuple[Path, Path]]:
    """family → (checkpoint, export directory) for every family."""
    root = out.parent
    result = {}
    ckpts = {"twin": twin_two_rank, "twin_one_rank": twin_one_rank}
    for name in CONFIGS:
        if name != "twin":
            ckpts[name] = random_checkpoint(root / f"{name}.ckpt", out, name)
    for name, ckpt in ckpts.items():
        export_checkpoint(ckpt, root / f"export_{name}", compiled=False)
        result[name] = (ckpt, root / f"export_{name}")
    return result


# --- requests ---------------------------------------------------------------------------------


def ctr_case(seed: int, history: int, candidates: int) -> tuple[CtrRequest, UserSample]:
    """A request with raw ids (a few unknown) and the sample the data pipeline would build."""
    rng = np.random.default_rng(seed)
    items = rng.integers(2, 80, history)  # repeats: ties in SIM soft's search
    behaviors = rng.integers(2, VOCAB["behavior"], history)
    ts = 1_700_000_000 + np.cumsum(rng.integers(0, 4000, history)).astype(np.int64)
    request_ts = int(ts[-1]) + 60 if history else 1_700_000_000
    targets = rng.integers(2, VOCAB["item"], candidates)
    raw_items = [f"i{i}" for i in items]
    raw_targets = [f"i{i}" for i in targets]
    if history > 3:
        raw_items[-2], items[-2] = "unknown-item", 1
    if candidates > 2:
        raw_targets[-1], targets[-1] = "unknown-candidate", 1
    request = CtrRequest(raw_items, [f"b{b}" for b in behaviors], ts.tolist(), raw_targets,
                         request_ts)  # fmt: skip

    def category(ids: np.ndarray) -> np.ndarray:
        return np.where(ids == 1, 1, item_category(ids))

    sample = UserSample(
        "u", "test",
        {"item": items, "category": category(items), "behavior": behaviors, "ts": ts},
        {"target_item": targets, "target_category": category(targets),
         "target_ts": np.full(candidates, request_ts), "target_label": np.zeros(candidates, np.float32),
         "target_hist_len": np.full(candidates, history)},
    )  # fmt: skip
    return request, sample


def ctr_expected(
    model: torch.nn.Module, sample: UserSample, ckpt: Path | None = None
) -> np.ndarray:
    """The model's logits of `sample`, as its evaluation computes them: ids the checkpoint
    `ckpt` never trained scored as OOV (`trainers.cold_items`), as its export serves them."""
    batch = collate_ctr([sample], max_history=MAX_HISTORY)
    rows = TrainedRows.for_scoring(ckpt) if ckpt is not None else None
    if rows is not None:
        batch = rows.remap(batch)
    with torch.no_grad():
        return model(batch).logits.numpy()


def next_item_case(seed: int, history: int) -> tuple[NextItemRequest, UserSample]:
    rng = np.random.default_rng(seed)
    items = rng.integers(2, 400, history)
    ts = 1_700_000_000 + np.cumsum(rng.integers(0, 4000, history)).astype(np.int64)
    request_ts = int(ts[-1]) + 30
    request = NextItemRequest([f"i{i}" for i in items], ts.tolist(), request_ts, k=20)
    sample = UserSample(
        "u", "test",
        {"item": items, "category": item_category(items), "behavior": np.full(history, 2), "ts": ts},
        {"target_item": np.array([2]), "target_category": np.array([2]),
         "target_ts": np.array([request_ts]), "target_label": np.ones(1, np.float32),
         "target_hist_len": np.array([history])},
    )  # fmt: skip
    return request, sample


def next_item_expected(model: SparseDenseModel, sample: UserSample, k: int) -> tuple:
    """Top-k (scores, ids) of the user query the model's task evaluates: the position after the
    last event (next-item), or a mask appended at the request time (masked-item)."""
    with torch.no_grad():
        batch = collate_generative([sample], max_len=MAX_LEN)
        no_candidates = torch.zeros(0, dtype=torch.int64)
        if model.dense.mask is None:
            items, ts = batch.sequence["item"], batch.sequence["ts"].values
            output = model(SequenceStep(items, ts, batch.query_ts().values, no_candidates))
            query = target_queries(output, batch)
        else:
            items, ts, mask = masked_query_rows(batch, ranked_targets(batch))
            query = model(SequenceStep(items, ts, ts, no_candidates, mask)).user[mask]
        history = torch.from_numpy(np.unique(sample.history["item"]))
        scores, ids = top_k_items(query, model.item_table(), k,
                                  Jagged(history, torch.tensor([history.numel()])))  # fmt: skip
    return scores[0].numpy(), ids[0].numpy()


# --- round trips ------------------------------------------------------------------------------

CTR_FAMILIES = ("smoke", "din", "sim_hard", "sim_soft", "eta", "twin", "full")
SEQUENTIAL_FAMILIES = ("hstu", "sasrec", "cloze")
CASES = [(0, 120, 30), (1, 1, 1), (2, 5, 7), (3, 0, 4), (4, 300, 100)]


@pytest.mark.parametrize("family", CTR_FAMILIES)
def test_ctr_export_scores_like_the_trained_model(exports, family: str) -> None:
    ckpt, root = exports[family]
    model, _ = load_trained_model(ckpt)
    scorer = Scorer.load(root)
    assert scorer.family == "ctr" and scorer.name == NAMES[family]
    rows = TrainedRows.for_scoring(ckpt)  # the trained TWIN's only
    known = rows.masks["item"].numpy() if rows is not None else np.ones(VOCAB["item"], bool)
    for seed, history, candidates in CASES:
        request, sample = ctr_case(seed, history, candidates)
        scores = scorer.score(request)
        expected = ctr_expected(model, sample, ckpt)
        assert scores.logits.shape == (candidates,)
        np.testing.assert_allclose(scores.logits, expected, rtol=0, atol=TOL)
        np.testing.assert_allclose(scores.probabilities, 1 / (1 + np.exp(-expected)), atol=TOL)
        # unknown raw ids, and ids the model never trained (left out of its export's vocab)
        unknown = ~known[sample.targets["target_item"]] | (sample.targets["target_item"] == 1)
        assert scores.oov["candidates"] == int(unknown.sum()) >= (1 if candidates > 2 else 0)
        if (~unknown).sum() > 2:
            assert np.std(scores.logits) > 1e-3  # known candidates really score differently
        window = sample.history["item"][-MAX_HISTORY:]  # the events the scorer reads
        unknown_events = ~known[window] | (window == 1)
        assert scores.oov["history_items"] == int(unknown_events.sum())


@pytest.mark.parametrize("family", SEQUENTIAL_FAMILIES)
def test_sequential_export_recommends_like_the_trained_model(exports, family: str) -> None:
    ckpt, root = exports[family]
    model, _ = load_trained_model(ckpt)
    scorer = Scorer.load(root)
    assert scorer.family == "sequential" and scorer.name == NAMES[family]
    assert (model.dense.mask is not None) == (family == "cloze")
    for seed, history in ((0, 1), (1, 7), (2, MAX_LEN), (3, 150)):
        request, sample = next_item_case(seed, history)
        recs = scorer.recommend(request)
        scores, ids = next_item_expected(model, sample, request.k)
        np.testing.assert_allclose(recs.scores, scores, rtol=0, atol=TOL)
        np.testing.assert_array_equal(recs.ids, ids)
        assert recs.items == [f"i{i}" for i in ids]
        assert not set(recs.ids) & set(sample.history["item"].tolist())
        assert np.all(np.diff(recs.scores) <= 0)


def test_manifest_lists_versions_shapes_and_every_files_checksum(exports) -> None:
    _, root = exports["twin"]
    manifest = read_manifest(root)
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert sorted([*manifest["files"], "manifest.json"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(root / name)
        assert entry["bytes"] == (root / name).stat().st_size
    assert manifest["format_version"] == 2
    assert manifest["versions"]["torch"] == torch.__version__
    assert (manifest["model"]["family"], manifest["model"]["name"]) == ("ctr", "Twin")
    item = manifest["tables"]["item"]
    assert (item["rows"], item["dim"], item["dtype"]) == (VOCAB["item"], 16, "float32")
    keys = manifest["caches"]["twin_item_keys"]
    assert keys["row_shape"] == [4, 16]  # the ESU's heads x head_dim of configs/ctr/twin.yaml
    assert keys["width"] == 4 * 16 and keys["feeds_request"]
    assert manifest["model"]["max_history"] == MAX_HISTORY
    inputs = manifest["dense"]["model"]["inputs"]
    assert inputs["twin_item_keys"]["shape"] == ["events", *keys["row_shape"]]
    assert inputs["target_item"] == {"dtype": "int64", "shape": ["candidates"]}
    assert inputs["history_item_rows"] == {"dtype": "float32", "shape": ["events", 16]}
    assert manifest["dense"]["model_no_history"]["inputs"]["event_item"]["shape"] == [0]
    request = manifest["request"]
    assert request["family"] == "ctr"
    assert [i["name"] for i in request["inputs"]] == list(inputs)  # the program's inputs
    sources = {i["name"]: i["source"] for i in request["inputs"]}
    assert sources["event_item"] == "ids:event_item"
    assert sources["target_category_rows"] == "table:target_category@target_category"
    assert sources["twin_item_keys"] == "cache:twin_item_keys@event_item"
    trained = TrainedRows.from_checkpoint(exports["twin"][0]).masks["item"]  # 8 steps' items
    assert manifest["vocab"]["item"]["entries"] == int(trained[2:].sum()) < VOCAB["item"] - 2
    assert manifest["vocab"]["item"]["untrained_left_out"] == VOCAB["item"] - 2 - int(
        trained[2:].sum()
    )
    assert (
        read_manifest(exports["twin_one_rank"][1])["vocab"]["item"]["entries"]
        == (manifest["vocab"]["item"]["entries"])
    )


def test_sequential_manifest_lists_its_program_inputs(exports) -> None:
    manifest = read_manifest(exports["hstu"][1])
    assert manifest["format_version"] == 2
    assert manifest["model"]["family"] == manifest["request"]["family"] == "sequential"
    assert manifest["model"]["max_len"] == MAX_LEN
    assert {i["name"]: i["source"] for i in manifest["request"]["inputs"]} == {
        "sequence_item_rows": "table:sequence_item@sequence_item",
        "key_ts": "ids:key_ts",
        "query_ts": "ids:query_ts",
    }
    assert manifest["dense"]["model"]["inputs"]["sequence_item_rows"]["shape"] == ["length", 16]
    assert manifest["caches"]["item_index"]["row_shape"] == [16]


def _rows(root: Path, entries: list[dict[str, Any]]) -> np.ndarray:
    return np.concatenate([np.load(root / e["file"]) for e in entries])


def test_two_rank_export_equals_one_rank_export(exports) -> None:
    (_, two), (_, one) = exports["twin"], exports["twin_one_rank"]
    m2, m1 = read_manifest(two), read_manifest(one)
    assert len(m2["tables"]["item"]["shards"]) == 2  # row-wise: one file per rank's shard
    assert [(s["start"], s["end"]) for s in m1["tables"]["item"]["shards"]] == [(0, VOCAB["item"])]
    for name in m1["tables"]:
        np.testing.assert_array_equal(_rows(two, m2["tables"][name]["shards"]),
                                      _rows(one, m1["tables"][name]["shards"]))  # fmt: skip
    np.testing.assert_allclose(_rows(two, m2["caches"]["twin_item_keys"]["shards"]),
                               _rows(one, m1["caches"]["twin_item_keys"]["shards"]), atol=1e-6)  # fmt: skip
    scorer2, scorer1 = Scorer.load(two), Scorer.load(one)
    for seed in range(3):
        request, _ = ctr_case(seed, 80, 20)
        np.testing.assert_allclose(scorer2.score(request).logits, scorer1.score(request).logits,
                                   rtol=0, atol=TOL)  # fmt: skip


def test_trained_twin_item_cache_equals_the_models_keys(exports) -> None:
    ckpt, root = exports["twin"]
    model, _ = load_trained_model(ckpt)
    items = torch.arange(2, VOCAB["item"])
    categories = torch.from_numpy(item_category(items.numpy()))
    # As exported: an untrained item is unknown (its category the OOV one), and a trained item
    # of an untrained category gets the OOV category (trainers.cold_items).
    rows = TrainedRows.from_checkpoint(ckpt).masks
    known = rows["item"][items] & rows["category"][categories]
    categories = torch.where(known, categories, OOV_ID)
    ones = torch.ones_like(items)
    with torch.no_grad():
        rows = model.embeddings(
            {"target_item": Jagged(items, ones), "target_category": Jagged(categories, ones)}
        )
        item_rows, category_rows = rows["target_item"].values, rows["target_category"].values
        expected = model.dense.long_term.item_keys(item_rows, category_rows)
        declared = model.item_caches()["twin_item_keys"].compute(item_rows, category_rows)
    np.testing.assert_array_equal(declared.numpy(), expected.numpy())
    cache = _rows(root, read_manifest(root)["caches"]["twin_item_keys"]["shards"])[2:]
    np.testing.assert_allclose(cache, expected.flatten(1).numpy(), rtol=0, atol=TOL)


# --- damaged exports --------------------------------------------------------------------------


@pytest.fixture
def damaged(exports, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the TWIN export and its first item-table shard."""
    root = tmp_path / "copy"
    shutil.copytree(exports["twin"][1], root)
    shard = read_manifest(root)["tables"]["item"]["shards"][0]["file"]
    return root, root / shard


def test_a_flipped_byte_is_caught_by_its_checksum(damaged) -> None:
    root, shard = damaged
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"item/.*sha256 does not match.*corrupted"):
        Scorer.load(root)
    Scorer.load(root, checksums=False)  # same size: only the checksum can tell


def test_a_truncated_file_is_reported_as_partial(damaged) -> None:
    root, shard = damaged
    shard.write_bytes(shard.read_bytes()[:1000])
    for checksums in (True, False):
        with pytest.raises(ExportError, match=r"1000 bytes, the manifest says .*partial"):
            Scorer.load(root, checksums=checksums)


def test_a_missing_file_or_manifest_is_named(damaged) -> None:
    root, shard = damaged
    (root / "dense" / "model.pt2").unlink()
    with pytest.raises(ExportError, match=r"dense/model.pt2: listed in manifest.json but missing"):
        Scorer.load(root)
    (root / "manifest.json").unlink()
    with pytest.raises(ExportError, match="not a lifeseq export"):
        Scorer.load(root)


# --- malformed requests -----------------------------------------------------------------------


def _ctr(**changes: Any) -> CtrRequest:
    base = {"history_items": ["i2", "i3"], "history_behaviors": ["b2", "b2"],
            "history_ts": [100, 200], "candidates": ["i5"], "request_ts": 300}  # fmt: skip
    return CtrRequest(**(base | changes))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_ctr(history_items="i2 i3"), "history_items: expected a list, got str"),
        (_ctr(candidates=[]), "candidates: empty"),
        (_ctr(candidates=[1.5]), r"candidates\[0\]: expected a string or integer id"),
        (_ctr(history_ts=[200, 100]), "history_ts: timestamps out of order at position 1"),
        (_ctr(history_ts=[100, "200"]), r"history_ts\[1\]: expected integer epoch seconds"),
        (_ctr(request_ts=150), "request_ts 150 is before the last event"),
        (_ctr(request_ts=None), "request_ts: expected integer epoch seconds"),
        (_ctr(history_ts=[100, 2**70]), "history_ts: a timestamp is outside int64"),
        (_ctr(request_ts=2**64), "request_ts: 18446744073709551616 is outside int64"),
        (_ctr(history_behaviors=["b2"]), "history fields differ in length"),
        (NextItemRequest(["i2"], [1], 2), "expected a CtrRequest"),
    ],
)
def test_malformed_ctr_requests_are_rejected_naming_the_field(exports, request_, message) -> None:
    scorer = Scorer.load(exports["din"][1], checksums=False)
    with pytest.raises(RequestError, match=message):
        scorer.score(request_)


def test_malformed_next_item_requests_are_rejected(exports) -> None:
    scorer = Scorer.load(exports["hstu"][1], checksums=False)
    with pytest.raises(RequestError, match="history_items: empty"):
        scorer.recommend(NextItemRequest([], [], 5))
    with pytest.raises(RequestError, match="k: expected a positive integer"):
        scorer.recommend(NextItemRequest(["i2"], [1], 5, k=0))
    with pytest.raises(RequestError, match="only 2997 candidate items remain"):
        scorer.recommend(NextItemRequest(["i2"], [1], 5, k=5000))
    with pytest.raises(RequestError, match="use recommend"):
        scorer.score(_ctr())
    with pytest.raises(RequestError, match="use score"):
        Scorer.load(exports["din"][1], checksums=False).recommend(NextItemRequest(["i2"], [1], 5))
    recs = scorer.recommend(NextItemRequest(["nope", "i2"], [1, 2], 5, k=3))
    assert recs.oov == {"history_items": 1} and len(recs.items) == 3


def test_oversized_requests_are_refused_naming_the_limit(exports) -> None:
    """10^6 history events or 10^5 candidates: refused by the configured limits, not scored."""
    din = Scorer.load(exports["din"][1], checksums=False)
    million = ["i2"] * 1_000_000
    with pytest.raises(RequestError, match="history_items: 1,000,000 entries exceed the limit "
                                           "max_history_events=100,000"):  # fmt: skip
        din.score(_ctr(history_items=million, history_behaviors=million, history_ts=million))
    with pytest.raises(RequestError, match="candidates: 100,000 entries exceed the limit "
                                           "max_candidates=10,000"):  # fmt: skip
        din.score(_ctr(candidates=["i5"] * 100_000))
    small = Scorer.load(exports["din"][1], checksums=False,
                        limits=RequestLimits(max_history_events=1, max_candidates=1))  # fmt: skip
    with pytest.raises(RequestError, match="max_history_events=1;"):
        small.score(_ctr())
    at_limit = small.score(_ctr(history_items=["i2"], history_behaviors=["b2"], history_ts=[1]))
    assert at_limit.probabilities.shape == (1,)
    hstu = Scorer.load(exports["hstu"][1], checksums=False)
    with pytest.raises(RequestError, match="history_items: 1,000,000 entries exceed"):
        hstu.recommend(NextItemRequest(million, list(range(1_000_000)), 2_000_000))
    with pytest.raises(RequestError, match="k: 100,000 exceeds the limit max_candidates=10,000"):
        hstu.recommend(NextItemRequest(["i2"], [1], 5, k=100_000))
    with pytest.raises(ValueError, match="RequestLimits.max_candidates: expected >= 1"):
        RequestLimits(max_candidates=0)


# --- command line -----------------------------------------------------------------------------


def _export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "jobs" / "export.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)  # fmt: skip


def test_export_command_line(exports, tmp_path: Path) -> None:
    ckpt, _ = exports["din"]
    target = tmp_path / "cli"
    done = _export_cli("--ckpt", str(ckpt), "--out", str(target), "--no-compile")
    assert done.returncode == 0, done.stderr
    assert "exported ctr model LifelongCtr" in done.stdout and (target / "manifest.json").is_file()
    assert not (target / "compiled").exists()
    again = _export_cli("--ckpt", str(ckpt), "--out", str(target))
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    missing = _export_cli("--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "not a lifeseq sharded checkpoint" in missing.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing() is not None, reason="no C++ compiler")
@pytest.mark.parametrize("family", ["twin", "hstu"])
def test_compiled_packages_score_like_the_eager_program(exports, family, tmp_path) -> None:
    """`lifeseq export` writes an AOTInductor package per request program; `--compiled`
    scores equal the `torch.export` program's and the trained model's."""
    ckpt, eager_root = exports[family]
    target = tmp_path / family
    done = _export_cli("--ckpt", str(ckpt), "--out", str(target))
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(target)
    packages = manifest["compiled"]["programs"]
    assert set(packages) == set(manifest["dense"]) and "AOTInductor package" in done.stdout
    for spec in packages.values():
        assert spec["file"] in manifest["files"] and (target / spec["file"]).stat().st_size > 0
    compiled, eager = Scorer.load(target, compiled=True), Scorer.load(eager_root)
    model, _ = load_trained_model(ckpt)
    if family == "twin":
        for seed, history, candidates in CASES:
            request, sample = ctr_case(seed, history, candidates)
            got = compiled.score(request).logits
            np.testing.assert_allclose(got, eager.score(request).logits, rtol=0, atol=TOL)
            np.testing.assert_allclose(got, ctr_expected(model, sample, ckpt), rtol=0, atol=TOL)
    else:
        for seed, history in ((0, 30), (1, 1), (2, MAX_LEN + 20)):
            request, _ = next_item_case(seed, history)
            got, want = compiled.recommend(request), eager.recommend(request)
            assert got.items == want.items
            np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=TOL)


def test_without_a_compiler_export_skips_the_packages_and_says_why(
    exports, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    ckpt, _ = exports["din"]
    manifest = export_checkpoint(ckpt, tmp_path / "din", compiled=True)
    assert manifest["compiled"]["skipped"].startswith("no C++ compiler (no-such-compiler) on PATH")
    assert not (tmp_path / "din" / "compiled").exists()
    with pytest.raises(ExportError, match=r"no compiled package of \['model', 'model_no_history'\]"
                                          r" \(no C\+\+ compiler"):  # fmt: skip
        Scorer.load(tmp_path / "din", compiled=True)
    assert Scorer.load(tmp_path / "din").score(_ctr()).logits.shape == (1,)


def test_serving_benchmark_times_every_cell(exports) -> None:
    from lifeseq.jobs import bench_serving

    payload = bench_serving.run(
        [exports["twin"][1], exports["hstu"][1]], [10, 100], [3], requests=4, warmup=1
    )
    ctr, generative = payload["results"]
    assert [(c["history"], c["events_used"], c["candidates"]) for c in ctr["cells"]] == [
        (10, 10, 3), (100, MAX_HISTORY, 3)
    ]  # fmt: skip
    assert [(c["history"], c["events_used"]) for c in generative["cells"]] == [
        (10, 10),
        (100, MAX_LEN),
    ]
    for cell in ctr["cells"] + generative["cells"]:
        assert 0 < cell["p50_ms"] <= cell["p99_ms"] and cell["requests"] == 4
    assert "| Twin | 100 (64) | 3 |" in bench_serving.markdown(payload["results"])


def test_loading_and_scoring_an_export_never_unpickles(exports, monkeypatch) -> None:
    import pickle

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while reading an export")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    ctr = Scorer.load(exports["twin"][1]).score(ctr_case(0, 50, 5)[0])
    recs = Scorer.load(exports["hstu"][1]).recommend(next_item_case(0, 10)[0])
    assert ctr.logits.shape == (5,) and len(recs.items) == 20
