"""Embedding backends: torchrec and plain torch agree, padding, gradients, error messages."""

from __future__ import annotations

import pytest
import torch

from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.embeddings import (
    PADDING_ID,
    EmbeddingTableSpec,
    TorchEmbeddingCollection,
    build_embeddings,
    copy_weights,
    torchrec_available,
)

pytestmark = pytest.mark.unit

needs_torchrec = pytest.mark.skipif(not torchrec_available(), reason="torchrec not importable")

TABLES = [
    EmbeddingTableSpec("item", 30, 8, ("item", "target_item")),
    EmbeddingTableSpec("category", 7, 4, ("category",)),
    EmbeddingTableSpec("behavior", 5, 8, ("behavior",)),
]


def _batch() -> dict[str, Jagged]:
    """Users B=3 (one empty), targets T=4 (two empty), padding ids included."""
    return {
        "item": Jagged(torch.tensor([3, 0, 29, 7, 7, 1]), torch.tensor([2, 0, 4])),
        "target_item": Jagged(torch.tensor([5, 0]), torch.tensor([1, 0, 1, 0])),
        "category": Jagged(torch.tensor([1, 6, 0, 2, 2, 3]), torch.tensor([2, 0, 4])),
        "behavior": Jagged(torch.tensor([4, 1, 1, 2, 0, 3]), torch.tensor([2, 0, 4])),
    }


def _random_weights(module: TorchEmbeddingCollection) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        t.name: torch.randn(t.num_embeddings, t.embedding_dim, generator=gen) for t in module.tables
    }


def test_torch_backend_shapes_and_lengths() -> None:
    emb = build_embeddings(TABLES, backend="torch", seed=0)
    batch = _batch()

    out = emb(batch)

    assert list(out) == list(batch)
    for feature, jagged in batch.items():
        dim = emb.embedding_dim(feature)
        assert out[feature].values.shape == (jagged.values.shape[0], dim)
        assert torch.equal(out[feature].lengths, jagged.lengths)


def test_shared_table_gives_same_vector_for_same_id_in_both_features() -> None:
    emb = build_embeddings(TABLES, backend="torch", seed=0)

    out = emb(
        {
            "item": Jagged(torch.tensor([5]), torch.tensor([1])),
            "target_item": Jagged(torch.tensor([5]), torch.tensor([1])),
        }
    )

    assert torch.equal(out["item"].values, out["target_item"].values)
    assert torch.equal(out["item"].values[0], emb.table_weights()["item"][5])


@pytest.mark.parametrize("backend", ["torch", pytest.param("torchrec", marks=needs_torchrec)])
def test_padding_id_embeds_to_zero_and_gets_no_gradient(backend: str) -> None:
    emb = build_embeddings(TABLES, backend=backend, seed=0)
    with torch.no_grad():  # make row 0 non-zero: the mask, not the weights, must zero it
        for weight in emb.table_weights().values():
            weight[PADDING_ID].fill_(1.0)
    ids = torch.tensor([PADDING_ID, 4, PADDING_ID])

    out = emb({"item": Jagged(ids, torch.tensor([3]))})["item"].values
    out.sum().backward()

    assert torch.equal(out[0], torch.zeros(8)) and torch.equal(out[2], torch.zeros(8))
    assert out[1].abs().sum() > 0
    if backend == "torch":
        grad = emb.collections["d8"].embeddings["item"].weight.grad
        assert torch.equal(grad[PADDING_ID], torch.zeros(8))
        assert torch.equal(grad[4], torch.ones(8))


def test_seeded_initialisation_is_deterministic_with_zero_padding_row() -> None:
    a = build_embeddings(TABLES, backend="torch", seed=11).table_weights()
    b = build_embeddings(TABLES, backend="torch", seed=11).table_weights()
    c = build_embeddings(TABLES, backend="torch", seed=12).table_weights()

    assert all(torch.equal(a[t], b[t]) for t in a)
    assert not torch.equal(a["item"], c["item"])
    assert all(torch.equal(a[t][PADDING_ID], torch.zeros_like(a[t][PADDING_ID])) for t in a)


def test_gradients_reach_every_table() -> None:
    emb = build_embeddings(TABLES, backend="torch", seed=0)

    out = emb(_batch())
    sum(j.values.sum() for j in out.values()).backward()

    grads = {name: p.grad for name, p in emb.named_parameters()}
    assert set(grads) == {
        "collections.d8.embeddings.item.weight",
        "collections.d8.embeddings.behavior.weight",
        "collections.d4.embeddings.category.weight",
    }
    item_grad = grads["collections.d8.embeddings.item.weight"]
    # ids 3, 29, 1, 5 once each and 7 twice (item + target_item share the table)
    assert torch.equal(item_grad[7], torch.full((8,), 2.0))
    assert torch.equal(item_grad[5], torch.ones(8))
    assert torch.equal(item_grad[2], torch.zeros(8))


@needs_torchrec
def test_torchrec_and_torch_backends_agree_for_the_same_weights() -> None:
    ref = build_embeddings(TABLES, backend="torch", seed=0)
    rec = build_embeddings(TABLES, backend="torchrec", seed=1)
    ref.load_table_weights(_random_weights(ref))
    copy_weights(ref, rec)
    batch = _batch()

    out_ref, out_rec = ref(batch), rec(batch)

    assert list(out_rec) == list(batch)
    for feature in batch:
        torch.testing.assert_close(out_rec[feature].values, out_ref[feature].values)
        assert torch.equal(out_rec[feature].lengths, out_ref[feature].lengths)


@needs_torchrec
def test_torchrec_and_torch_gradients_agree() -> None:
    ref = build_embeddings(TABLES, backend="torch", seed=0)
    rec = build_embeddings(TABLES, backend="torchrec", seed=0)
    batch = _batch()
    coef = {
        f: torch.randn(j.values.shape[0], ref.embedding_dim(f), generator=torch.Generator())
        for f, j in batch.items()
    }

    for module in (ref, rec):
        out = module(batch)
        sum((out[f].values * coef[f]).sum() for f in out).backward()

    grads_ref = {n: p.grad for n, p in ref.named_parameters()}
    grads_rec = {n: p.grad for n, p in rec.named_parameters()}
    assert grads_ref.keys() == grads_rec.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads_rec[name], grads_ref[name], msg=name)


@needs_torchrec
def test_same_seed_gives_same_weights_and_state_dict_keys_on_both_backends() -> None:
    ref = build_embeddings(TABLES, backend="torch", seed=5)
    rec = build_embeddings(TABLES, backend="torchrec", seed=5)

    sd_ref, sd_rec = ref.state_dict(), rec.state_dict()

    assert list(sd_ref) == list(sd_rec)
    assert all(torch.equal(sd_ref[k], sd_rec[k]) for k in sd_ref)
    rec.load_state_dict(ref.state_dict())  # a full state dict moves between backends


@needs_torchrec
def test_torchrec_backend_subset_of_features_and_empty_batch() -> None:
    rec = build_embeddings(TABLES, backend="torchrec", seed=0)
    ref = build_embeddings(TABLES, backend="torch", seed=0)
    only_targets = {"target_item": _batch()["target_item"]}
    empty = {
        "category": Jagged(torch.empty(0, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    }

    out = rec(only_targets)
    out_empty = rec(empty)

    assert list(out) == ["target_item"]
    torch.testing.assert_close(out["target_item"].values, ref(only_targets)["target_item"].values)
    assert out_empty["category"].values.shape == (0, 4)
    assert rec({}) == {}


def test_unknown_backend_error_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"embedding.backend: expected one of .*'torch'.*got 'tf'"):
        build_embeddings(TABLES, backend="tf")


def test_missing_torchrec_error_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "torchrec" or name.startswith("torchrec."):
            raise ImportError("No module named 'torchrec'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)

    with pytest.raises(ImportError, match=r"install torchrec .* `embedding.backend: torch`"):
        build_embeddings(TABLES, backend="torchrec")


@pytest.mark.parametrize("backend", ["torch", pytest.param("torchrec", marks=needs_torchrec)])
def test_feature_without_table_error_names_feature_and_tables(backend: str) -> None:
    emb = build_embeddings(TABLES, backend=backend, seed=0)

    with pytest.raises(ValueError, match=r"feature 'price' has no embedding table; .*'item'"):
        emb({"price": Jagged(torch.tensor([1]), torch.tensor([1]))})


def test_non_integer_ids_are_rejected_with_feature_name() -> None:
    emb = build_embeddings(TABLES, backend="torch", seed=0)

    with pytest.raises(ValueError, match=r"feature 'item': expected 1-D integer ids"):
        emb({"item": Jagged(torch.tensor([1.0]), torch.tensor([1]))})


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([], r"at least one EmbeddingTableSpec"),
        (
            [EmbeddingTableSpec("a", 3, 4, ("x",)), EmbeddingTableSpec("a", 3, 4, ("y",))],
            r"duplicate table name 'a'",
        ),
        (
            [EmbeddingTableSpec("a", 3, 4, ("x",)), EmbeddingTableSpec("b", 3, 4, ("x",))],
            r"feature 'x' is served by two tables: 'a' and 'b'",
        ),
    ],
)
def test_inconsistent_tables_are_rejected(tables: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_embeddings(tables, backend="torch")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_embeddings": 0}, r"table 'item': num_embeddings must be a positive int, got 0"),
        ({"embedding_dim": -1}, r"table 'item': embedding_dim must be a positive int"),
        ({"feature_names": ()}, r"table 'item': feature_names is empty"),
        ({"feature_names": "item"}, r"table 'item': feature_names must be a sequence"),
        ({"name": "a.b"}, r"EmbeddingTableSpec.name"),
    ],
)
def test_table_spec_validation_names_table_and_field(kwargs: dict, message: str) -> None:
    args = {"name": "item", "num_embeddings": 5, "embedding_dim": 4, "feature_names": ("item",)}
    args.update(kwargs)

    with pytest.raises(ValueError, match=message):
        EmbeddingTableSpec(**args)


def test_table_spec_accepts_a_list_of_features_and_stores_a_tuple() -> None:
    spec = EmbeddingTableSpec("item", 5, 4, ["item", "target_item"])  # type: ignore[arg-type]

    assert spec.feature_names == ("item", "target_item")


def test_load_table_weights_errors_name_the_table() -> None:
    emb = build_embeddings(TABLES, backend="torch", seed=0)
    weights = emb.table_weights()

    with pytest.raises(ValueError, match=r"missing tables \['behavior'\]"):
        emb.load_table_weights({k: v for k, v in weights.items() if k != "behavior"})
    with pytest.raises(ValueError, match=r"table 'item': weight shape \(3, 8\)"):
        emb.load_table_weights({**weights, "item": torch.zeros(3, 8)})


def test_torch_backend_runs_where_torchrec_and_fbgemm_cannot_be_imported() -> None:
    """Our GPU test machine has torch only: models.blocks.embeddings must import and run there."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "sys.modules['torchrec'] = None\n"  # makes `import torchrec` raise ImportError
        "sys.modules['fbgemm_gpu'] = None\n"
        "import torch\n"
        "from lifeseq.features.jagged import Jagged\n"
        "from lifeseq.models.blocks.embeddings import EmbeddingTableSpec, build_embeddings, torchrec_available\n"
        "assert not torchrec_available()\n"
        "t = [EmbeddingTableSpec('item', 5, 4, ('item',))]\n"
        "out = build_embeddings(t, backend='torch', seed=0)("
        "{'item': Jagged(torch.tensor([1, 2]), torch.tensor([2]))})\n"
        "assert out['item'].values.shape == (2, 4)\n"
        "try:\n"
        "    build_embeddings(t, backend='torchrec')\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert "set `embedding.backend: torch`" in result.stdout


# --- trainers.sharding.ShardingConfig: validated without torchrec or processes ------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sharding_types": {"item": "rows"}}, r"sharding.sharding_types\['item'\]: .*got 'rows'"),
        ({"default_sharding_type": "grid"}, r"sharding.default_sharding_type: .*got 'grid'"),
        ({"optimizer": "lamb"}, r"sharding.optimizer: .*got 'lamb'"),
        ({"compute_kernel": "uvm"}, r"sharding.compute_kernel: .*got 'uvm'"),
        ({"lr": 0}, r"sharding.lr: expected a positive number, got 0"),
        ({"eps": -1.0}, r"sharding.eps"),
        ({"weight_decay": -0.1}, r"sharding.weight_decay: expected a number >= 0"),
        (
            {"optimizer": "sgd", "weight_decay": 0.1},
            r"sharding.weight_decay: .*sgd ignores weight decay",
        ),
        ({"optimizer": "adagrad", "weight_decay": 0.1}, r"fused adagrad ignores weight decay"),
        ({"betas": (0.9,)}, r"sharding.betas"),
        ({"min_partition": 0}, r"sharding.min_partition"),
        ({"planner_batch_size": -3}, r"sharding.planner_batch_size"),
    ],
)
def test_sharding_config_errors_name_the_field(kwargs: dict, message: str) -> None:
    from lifeseq.trainers.sharding import ShardingConfig

    with pytest.raises(ValueError, match=message):
        ShardingConfig(**kwargs)


def test_sharding_config_defaults_and_per_table_lookup() -> None:
    from lifeseq.trainers.sharding import ShardingConfig

    cfg = ShardingConfig(sharding_types={"item": "row_wise"}, default_sharding_type="table_wise")

    assert cfg.optimizer == "row_wise_adagrad" and cfg.compute_kernel == "fused"
    assert ShardingConfig(compute_kernel="fused_uvm_caching").compute_kernel == "fused_uvm_caching"
    assert cfg.sharding_type_of("item") == "row_wise"
    assert cfg.sharding_type_of("category") == "table_wise"
    assert ShardingConfig().sharding_type_of("item") is None
