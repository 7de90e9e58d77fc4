"""Sharded (2 CPU ranks, gloo) vs unsharded embeddings: placement, lookups, one training step.

One `torchrun --nproc-per-node 2` run of `sharding_worker.py` (module fixture, ~8 s on 2 cores)
shards four tables — `item` row_wise (serving `item` and `target_item`), `category` and `city`
table_wise, `tag` column_wise (dim 16 in two 8-column shards) — twice: with fused SGD and with
fused row-wise Adagrad; then tries data_parallel (refused on CPU: skipped with the reason),
bad configs (their error messages) and an unconstrained plan. The tests compare its files with
a single-process reference built from the same functions on the plain-torch backend.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeseq.models.blocks.embeddings import torchrec_available
from tests.distributed import sharding_worker as w

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
OPTIMIZERS = ("sgd", "row_wise_adagrad")
TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the 2-rank worker once; returns its output directory."""
    out = tmp_path_factory.mktemp("sharding")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(w.WORLD_SIZE),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        str(REPO_ROOT / "tests" / "distributed" / "sharding_worker.py"),
        "--out",
        str(out),
        "--optimizers",
        ",".join(OPTIMIZERS),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{(err.stderr or '')[-4000:]}")
    if proc.returncode != 0 or not (out / "done.json").exists():
        pytest.fail(
            f"torchrun exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
        )
    (out / "elapsed.json").write_text(json.dumps({"seconds": time.monotonic() - start}))
    return out


def _plan(results: Path, optimizer: str) -> dict:
    return json.loads((results / f"{optimizer}_plan.json").read_text())


def _reference_model() -> w.TinyModel:
    return w.TinyModel("torch")


def _reference_step(optimizer: str, plan: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One step of the unsharded model on the global batch (all ranks' examples).

    The global loss is the mean of the per-rank losses: TorchRec divides sharded embedding
    gradients by the world size (gradient division, its default) as DDP averages the dense
    ones. Row-wise Adagrad keeps one accumulator per row of each column shard (FBGEMM).
    """
    model = _reference_model()
    loss = torch.zeros(())
    for rank in range(w.WORLD_SIZE):
        batch = w.rank_batch(rank)
        output = model(batch)
        out, score = output.embeddings, output.score
        loss = loss + w.rank_loss(out, score, w.coefficients(batch, rank)) / w.WORLD_SIZE
    loss.backward()
    tables = {}
    for table in w.TABLES:
        param = model.emb.collections[f"d{table.embedding_dim}"].embeddings[table.name].weight
        weight, grad = param.detach().clone(), param.grad.clone()
        if optimizer == "sgd":
            weight -= w.LR * grad
        else:
            column_ranges = sorted(
                {
                    (s["offsets"][1], s["offsets"][1] + s["sizes"][1])
                    for s in plan[table.name]["shards"]
                }
            )
            for lo, hi in column_ranges:
                g = grad[:, lo:hi]
                state = (g * g).mean(dim=1, keepdim=True)  # one accumulator per row (and shard)
                weight[:, lo:hi] -= w.LR * g / (state.sqrt() + w.EPS)
        tables[table.name] = weight[1:].numpy()  # rows 1..n-1, as the worker's all-id lookup
    dense = model.dense.weight.detach() - w.LR * model.dense.weight.grad
    return tables, dense.numpy()


# --- (a) placement follows the plan -----------------------------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_plan_follows_config(results: Path, optimizer: str) -> None:
    plan = _plan(results, optimizer)

    assert {t: plan[t]["sharding_type"] for t in plan} == w.SHARDING_TYPES
    assert plan["item"]["ranks"] == [0, 1]
    assert sorted((s["offsets"], s["sizes"]) for s in plan["item"]["shards"]) == [
        ([0, 0], [20, 8]),
        ([20, 0], [20, 8]),
    ]
    for table in ("category", "city"):
        assert len(plan[table]["ranks"]) == 1
        assert [s["sizes"] for s in plan[table]["shards"]] == [
            [w.TABLE_OF[table].num_embeddings, 8]
        ]
    assert plan["tag"]["ranks"] == [0, 1]
    assert sorted((s["offsets"], s["sizes"]) for s in plan["tag"]["shards"]) == [
        ([0, 0], [13, 8]),
        ([0, 8], [13, 8]),
    ]
    assert {plan[t]["compute_kernel"] for t in plan} == {"fused"}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_rank_holds_exactly_its_planned_shards(results: Path, optimizer: str) -> None:
    plan = _plan(results, optimizer)

    for rank in range(w.WORLD_SIZE):
        held = json.loads((results / f"{optimizer}_rank{rank}_shards.json").read_text())
        for table, entry in plan.items():
            planned = sorted(s["offsets"] for s in entry["shards"] if s["rank"] == rank)
            local = sorted(offsets for _, *offsets in held.get(table, []))
            assert local == planned, (table, rank)
            for index, *offsets in held.get(table, []):
                shard = np.load(results / f"{optimizer}_rank{rank}_shard_{table}_{index}.npy")
                sizes = next(s["sizes"] for s in entry["shards"] if s["offsets"] == offsets)
                assert list(shard.shape) == sizes, (table, rank, offsets)


# --- (b) lookups equal the unsharded module ---------------------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sharded_lookups_equal_unsharded_module(results: Path, optimizer: str) -> None:
    reference = _reference_model()
    with torch.no_grad():
        expected = reference(w.lookup_batch()).embeddings
        weights = reference.emb.table_weights()

    for rank in range(w.WORLD_SIZE):
        prefix = results / f"{optimizer}_rank{rank}"
        for feature, jagged in expected.items():
            got = np.load(f"{prefix}_lookup_{feature}.npy")
            np.testing.assert_allclose(got, jagged.values.numpy(), rtol=0, atol=1e-7)
        for table in w.TABLES:  # every row, so the shards hold the unsharded initial weights
            got = np.load(f"{prefix}_table_{table.name}.npy")
            np.testing.assert_allclose(got, weights[table.name][1:].numpy(), rtol=0, atol=1e-7)


# --- (c) one training step equals a single-process step ----------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_one_step_equals_single_process_step(results: Path, optimizer: str) -> None:
    plan = _plan(results, optimizer)
    before = _reference_model().emb.table_weights()
    expected, expected_dense = _reference_step(optimizer, plan)

    mismatches = []
    for rank in range(w.WORLD_SIZE):
        prefix = results / f"{optimizer}_rank{rank}"
        for table in w.TABLES:
            got = np.load(f"{prefix}_after_table_{table.name}.npy")
            moved = np.abs(expected[table.name] - before[table.name][1:].numpy()).max()
            assert moved > 1e-3, f"{table.name}: the step did not change the table"
            if not np.allclose(got, expected[table.name], rtol=1e-5, atol=1e-6):
                error = np.abs(got - expected[table.name]).max()
                mismatches.append(f"table {table.name} on rank {rank}: max error {error:.3g}")
        dense = np.load(f"{prefix}_dense_weight.npy")
        if not np.allclose(dense, expected_dense, rtol=1e-5, atol=1e-6):
            mismatches.append(
                f"dense on rank {rank}: max error {np.abs(dense - expected_dense).max():.3g}"
            )

    assert not mismatches, mismatches


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_local_shards_after_step_assemble_to_the_reference(results: Path, optimizer: str) -> None:
    """Gathering through `state_dict()` local shards gives the same tables as lookups."""
    plan = _plan(results, optimizer)
    expected, _ = _reference_step(optimizer, plan)

    for table in w.TABLES:
        full = np.full((table.num_embeddings, table.embedding_dim), np.nan, dtype=np.float32)
        for rank in range(w.WORLD_SIZE):
            held = json.loads((results / f"{optimizer}_rank{rank}_shards.json").read_text())
            for index, row, col in held.get(table.name, []):
                shard = np.load(results / f"{optimizer}_rank{rank}_shard_{table.name}_{index}.npy")
                full[row : row + shard.shape[0], col : col + shard.shape[1]] = shard

        assert not np.isnan(full).any(), f"{table.name}: shards do not cover the table"
        np.testing.assert_allclose(full[1:], expected[table.name], rtol=1e-5, atol=1e-6)


def test_row_wise_adagrad_column_shards_keep_separate_accumulators(results: Path) -> None:
    """Documented caveat: column_wise + row-wise Adagrad differs from unsharded row-wise Adagrad."""
    plan = _plan(results, "row_wise_adagrad")
    one_accumulator = {
        **plan,
        "tag": {**plan["tag"], "shards": [{"offsets": [0, 0], "sizes": [13, 16]}]},
    }
    per_shard, _ = _reference_step("row_wise_adagrad", plan)
    whole_row, _ = _reference_step("row_wise_adagrad", one_accumulator)
    got = np.load(results / "row_wise_adagrad_rank0_after_table_tag.npy")

    np.testing.assert_allclose(got, per_shard["tag"], rtol=1e-5, atol=1e-6)
    assert np.abs(got - whole_row["tag"]).max() > 1e-4


def test_data_parallel_sequence_tables(results: Path) -> None:
    outcome = json.loads((results / "dp.json").read_text())
    if outcome["error"] is not None:
        assert "data_parallel" in outcome["error"] and "'city'" in outcome["error"]
        pytest.skip(
            f"data_parallel is not supported for sequence tables on CPU: {outcome['error']}"
        )
    reference = _reference_model()
    with torch.no_grad():
        expected = reference(w.lookup_batch()).embeddings
    for rank in range(w.WORLD_SIZE):
        for feature, jagged in expected.items():
            got = np.load(results / f"dp_rank{rank}_lookup_{feature}.npy")
            np.testing.assert_allclose(got, jagged.values.numpy(), rtol=0, atol=1e-7)


def test_shard_model_errors_name_the_problem(results: Path) -> None:
    errors = json.loads((results / "errors.json").read_text())

    assert "unknown tables ['price']" in errors["unknown_table"]
    assert "the model's tables are ['item', 'category', 'city', 'tag']" in errors["unknown_table"]
    assert "sharding.optimizer: 'adam' has no FBGEMM CPU kernel" in errors["adam_on_cpu"]
    assert "sharding.compute_kernel: 'fused_uvm' needs CUDA" in errors["uvm_on_cpu"]
    assert "no torchrec EmbeddingCollection" in errors["torch_backend"]


def test_planner_without_constraints_places_every_table(results: Path) -> None:
    plan = json.loads((results / "free_plan.json").read_text())

    assert set(plan) == {t.name for t in w.TABLES}
    for table, entry in plan.items():
        assert entry["sharding_type"] in ("table_wise", "row_wise", "column_wise"), table
        covered = sum(s["sizes"][0] * s["sizes"][1] for s in entry["shards"])
        spec = w.TABLE_BY_NAME[table]
        assert covered == spec.num_embeddings * spec.embedding_dim, table


def test_whole_distributed_run_is_fast_enough(results: Path) -> None:
    elapsed = json.loads((results / "elapsed.json").read_text())["seconds"]

    assert elapsed < 90, f"2-rank sharding run took {elapsed:.0f} s"
