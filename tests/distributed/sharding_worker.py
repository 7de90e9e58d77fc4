"""One rank of the sharding test: shard embedding tables on CPU/gloo, look up, take one step.

Run by `tests/distributed/test_sharding.py` as

    torchrun --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT \\
        tests/distributed/sharding_worker.py --out DIR

Writes under DIR (no pickle): `{optimizer}_plan.json` (rank 0), and per rank `r`:
`{optimizer}_rank{r}_lookup_{feature}.npy` (embeddings of `lookup_batch()`),
`{optimizer}_rank{r}_table_{table}.npy` (every row, looked up through the sharded model),
`{optimizer}_rank{r}_shard_{table}_{i}.npy` + offsets in `{optimizer}_rank{r}_shards.json`
(this rank's local shards after the step, from `state_dict()`), and
`{optimizer}_rank{r}_after_table_{table}.npy` / `..._dense_weight.npy` after one step.

The inputs and the model are built by the functions below, which the test imports to compute
the single-process reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lifeseq.features.jagged import Jagged  # noqa: E402
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec, build_embeddings  # noqa: E402

SEED = 7
WORLD_SIZE = 2
LR = 0.1
EPS = 1e-8
TABLES = (
    EmbeddingTableSpec("item", 40, 8, ("item", "target_item")),
    EmbeddingTableSpec("category", 11, 8, ("category",)),
    EmbeddingTableSpec("tag", 13, 16, ("tag",)),
    EmbeddingTableSpec("city", 9, 8, ("city",)),
)
SHARDING_TYPES = {
    "item": "row_wise",
    "category": "table_wise",
    "tag": "column_wise",
    "city": "table_wise",
}
FEATURES = [f for t in TABLES for f in t.feature_names]
TABLE_OF = {f: t for t in TABLES for f in t.feature_names}
TABLE_BY_NAME = {t.name: t for t in TABLES}


@dataclass
class TinyOutput:
    """A dataclass output, as our models return: DDP's static-graph hooks cannot see inside
    one, which once left dense gradients un-averaged over ranks (the step test catches it)."""

    embeddings: dict[str, Jagged]
    score: torch.Tensor


class TinyModel(nn.Module):
    """Embeddings plus one dense layer, applied inside `forward` (where DDP can see it)."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.emb = build_embeddings(list(TABLES), backend=backend, seed=SEED)
        torch.manual_seed(SEED)
        self.dense = nn.Linear(8, 1)

    def forward(self, features: dict[str, Jagged]) -> TinyOutput:
        """Embeddings of `features` and a (1, 1) score of the mean `item` embedding."""
        out = self.emb(features)
        item = out["item"].values  # (N, 8)
        pooled = item.sum(0, keepdim=True) / max(item.shape[0], 1)  # (1, 8)
        return TinyOutput(out, self.dense(pooled))  # score (1, 1)


def _jagged(rng: np.random.Generator, rows: int, max_len: int, vocab: int) -> Jagged:
    lengths = rng.integers(0, max_len + 1, size=rows)
    lengths[0] = 0  # always an empty row
    ids = rng.integers(0, vocab, size=int(lengths.sum()))  # includes padding id 0
    return Jagged(torch.from_numpy(ids).long(), torch.from_numpy(lengths).long())


def rank_batch(rank: int) -> dict[str, Jagged]:
    """This rank's part of the global batch.

    Users B = 2 + rank, targets T = 4 - 2 * rank: the KJT stride max(B, T) is 4 on rank 0 and
    3 on rank 1, and within a rank features have different batch sizes.
    """
    rng = np.random.default_rng(100 + rank)
    users = 2 + rank
    return {
        "item": _jagged(rng, users, 6, 40),
        "target_item": _jagged(rng, 4 - 2 * rank, 3, 40),
        "category": _jagged(rng, users, 4, 11),
        "tag": _jagged(rng, users, 4, 13),
        "city": _jagged(rng, users, 3, 9),
    }


def lookup_batch() -> dict[str, Jagged]:
    """The batch every rank looks up for the lookup comparison."""
    rng = np.random.default_rng(5)
    return {f: _jagged(rng, 4, 5, TABLE_OF[f].num_embeddings) for f in FEATURES}


def coefficients(batch: dict[str, Jagged], rank: int) -> dict[str, torch.Tensor]:
    """Fixed (N_f, D_f) weights of the per-rank loss `sum(emb * coef) + dense(item mean)`."""
    gen = torch.Generator().manual_seed(1000 + rank)
    return {
        f: torch.randn(j.values.shape[0], TABLE_OF[f].embedding_dim, generator=gen)
        for f, j in batch.items()
    }


def rank_loss(
    out: dict[str, Jagged], score: torch.Tensor, coef: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Per-rank loss; the 1-process reference averages it over ranks."""
    return sum((out[f].values * coef[f]).sum() for f in out) + score.sum()


def all_ids_batch() -> dict[str, Jagged]:
    """One row per table holding every id 1..n-1 (id 0 embeds to zeros by design)."""
    out = {}
    for table in TABLES:
        ids = torch.arange(1, table.num_embeddings)
        out[table.feature_names[0]] = Jagged(ids, torch.tensor([ids.numel()]))
    return out


def _table_rows(model: nn.Module) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(all_ids_batch()).embeddings
    return {t.name: out[t.feature_names[0]].values.numpy() for t in TABLES}


def run(out_dir: Path, optimizer: str) -> None:
    import torch.distributed as dist

    from lifeseq.trainers.sharding import (
        ShardingConfig,
        combined_optimizer,
        local_shards,
        plan_summary,
        shard_model,
    )

    rank = dist.get_rank()
    prefix = out_dir / f"{optimizer}_rank{rank}"
    cfg = ShardingConfig(
        sharding_types=dict(SHARDING_TYPES),
        optimizer=optimizer,
        lr=LR,
        eps=EPS,
        min_partition=8,
    )
    dmp = shard_model(TinyModel("torchrec"), cfg, torch.device("cpu"))
    if rank == 0:
        (out_dir / f"{optimizer}_plan.json").write_text(json.dumps(plan_summary(dmp), indent=1))

    with torch.no_grad():
        looked_up = dmp(lookup_batch()).embeddings
    for feature, jagged in looked_up.items():
        np.save(f"{prefix}_lookup_{feature}.npy", jagged.values.numpy())
    for table, rows in _table_rows(dmp).items():
        np.save(f"{prefix}_table_{table}.npy", rows)

    # One step: fused embedding optimizer inside backward, dense SGD through the combined one.
    opt = combined_optimizer(dmp, lambda params: torch.optim.SGD(params, lr=LR))
    batch = rank_batch(rank)
    output = dmp(batch)
    out, score = output.embeddings, output.score
    for feature, jagged in out.items():
        np.save(f"{prefix}_train_{feature}.npy", jagged.values.detach().numpy())
    dense = dmp.module.dense
    loss = rank_loss(out, score, coefficients(batch, rank))
    loss.backward()
    opt.step()
    opt.zero_grad()

    for table, rows in _table_rows(dmp).items():
        np.save(f"{prefix}_after_table_{table}.npy", rows)
    np.save(f"{prefix}_dense_weight.npy", dense.weight.detach().numpy())
    shards_meta: dict[str, list[list[int]]] = {}
    for key, pieces in local_shards(dmp.state_dict()).items():
        if ".embeddings." not in key:
            continue
        table = key.split(".embeddings.")[1].split(".")[0]
        shards_meta[table] = []
        for i, (offsets, tensor) in enumerate(pieces):
            if tensor.numel() == 0:
                continue
            np.save(f"{prefix}_shard_{table}_{i}.npy", tensor.detach().numpy())
            shards_meta[table].append([i, *offsets])
    Path(f"{prefix}_shards.json").write_text(json.dumps(shards_meta))
    dist.barrier()


def probe_data_parallel(out_dir: Path) -> None:
    """Try a data_parallel table; record the refusal, or lookups to compare if it is allowed."""
    import torch.distributed as dist

    from lifeseq.trainers.sharding import ShardingConfig, shard_model

    rank = dist.get_rank()
    cfg = ShardingConfig(sharding_types={t.name: "data_parallel" for t in TABLES}, optimizer="sgd")
    try:
        dmp = shard_model(TinyModel("torchrec"), cfg, torch.device("cpu"))
    except ValueError as err:
        result = {"error": str(err)}
    else:
        with torch.no_grad():
            looked_up = dmp(lookup_batch()).embeddings
        for feature, jagged in looked_up.items():
            np.save(out_dir / f"dp_rank{rank}_lookup_{feature}.npy", jagged.values.numpy())
        result = {"error": None}
    if rank == 0:
        (out_dir / "dp.json").write_text(json.dumps(result))
    dist.barrier()


def check_config_errors_and_free_plan(out_dir: Path) -> None:
    """Record `shard_model`'s errors for bad configs, and the plan it picks with no constraints."""
    import torch.distributed as dist

    from lifeseq.trainers.sharding import ShardingConfig, plan_summary, shard_model

    cases = {
        "unknown_table": (TinyModel("torchrec"), {"sharding_types": {"price": "row_wise"}}),
        "adam_on_cpu": (TinyModel("torchrec"), {"optimizer": "adam"}),
        "uvm_on_cpu": (TinyModel("torchrec"), {"compute_kernel": "fused_uvm"}),
        "torch_backend": (TinyModel("torch"), {}),
    }
    errors = {}
    for name, (model, kwargs) in cases.items():
        try:
            shard_model(model, ShardingConfig(**kwargs), torch.device("cpu"))
        except ValueError as err:
            errors[name] = str(err)
        else:
            errors[name] = None
    dmp = shard_model(TinyModel("torchrec"), ShardingConfig(optimizer="sgd"), torch.device("cpu"))
    if dist.get_rank() == 0:
        (out_dir / "errors.json").write_text(json.dumps(errors, indent=1))
        (out_dir / "free_plan.json").write_text(json.dumps(plan_summary(dmp), indent=1))
    dist.barrier()


def main() -> None:
    import torch.distributed as dist

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--optimizers", default="sgd,row_wise_adagrad")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        for optimizer in args.optimizers.split(","):
            run(args.out, optimizer)
        probe_data_parallel(args.out)
        check_config_errors_and_free_plan(args.out)
        if dist.get_rank() == 0:
            (args.out / "done.json").write_text(
                json.dumps({"world_size": dist.get_world_size(), "pid": os.getpid()})
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
