"""User embeddings by the hashing trick: `features.batch.user_hash`, the batch's per-row
`user_ids`, `models.blocks.user_embedding`, the user rows `SequentialRecommender` hands its
features and encoder, the masked-item evaluation rows' users, and the serving request's
`user_rows` (eager and `torch.export` equal the model)."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest
import torch

from lifeseq.features.batch import GenerativeBatch, collate_generative, user_hash, user_hashes
from lifeseq.models.blocks.embeddings import EmbeddingTableSpec
from lifeseq.models.blocks.input_features import ItemAndPosition, ItemOnly
from lifeseq.models.blocks.user_embedding import USER_FEATURE, UserEmbeddingConfig, hashed_rows
from lifeseq.models.interfaces import ModelDims, SequenceEncoder, SequenceRows
from lifeseq.models.sequential import SequenceStep, SequentialRecommender, normalize
from lifeseq.models.zoo.sequence.sasrec import SasRec, SasRecConfig
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.tasks.masked_item import masked_query_rows, masked_query_users
from lifeseq.trainers.tasks.next_item import target_queries
from tests.unit.test_request_models import SEQUENCE_ITEMS, sequence_sample

pytestmark = pytest.mark.unit

ITEMS, MAX_LEN, D = SEQUENCE_ITEMS, 12, 8


def sample(user: str, length: int, seed: int) -> UserSample:
    """`sequence_sample` (random events, one positive target after them) of user `user`."""
    return dataclasses.replace(sequence_sample(seed, length), user=user)


class Identity(SequenceEncoder):
    """The input features, unchanged (what the features computed is the output)."""

    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        return x


def table(model: SequentialRecommender, name: str) -> torch.Tensor:
    return model.embeddings.table_weights()[name]


def step(batch: GenerativeBatch, users: torch.Tensor | None) -> SequenceStep:
    items = batch.sequence["item"]
    return SequenceStep(items, batch.sequence["ts"].values, batch.query_ts().values,
                        items.values[:0], users=users)  # fmt: skip


# --- the hash and the batch -------------------------------------------------------------------


def test_user_hash_is_a_stable_63_bit_blake2b() -> None:
    # constants: a change here silently remaps every trained user row
    assert user_hash("") == 3797230976420062948
    assert user_hash("1") == 8518482412311870710
    assert user_hash("user00001") == 7754684285758689393
    assert user_hash("Ü-42") == 4378788525655343235
    assert all(0 <= user_hash(f"u{i}") < 2**63 for i in range(1000))
    assert user_hashes(["1", "user00001"]).tolist() == [8518482412311870710, 7754684285758689393]
    assert user_hashes(["1"]).dtype == torch.int64


def test_collate_gives_each_row_its_users_hash() -> None:
    users = ["alice", "bob", "alice2"]
    batch = collate_generative([sample(u, 3 + i, i) for i, u in enumerate(users)], MAX_LEN)
    assert batch.user_ids.tolist() == [user_hash(u) for u in users]
    assert batch.to("cpu").user_ids.tolist() == batch.user_ids.tolist()
    assert GenerativeBatch.empty().user_ids.shape == (0,)


def test_hashed_rows_are_buckets_1_to_k_for_tensors_and_arrays() -> None:
    hashes = user_hashes([f"u{i}" for i in range(500)])
    rows = hashed_rows(hashes, 11)  # 10 buckets
    assert rows.min() >= 1 and rows.max() <= 10
    assert torch.equal(rows, hashes % 10 + 1)
    assert np.array_equal(hashed_rows(hashes.numpy(), 11), rows.numpy())
    assert set(rows.tolist()) == set(range(1, 11))


def test_user_embedding_config_checks_and_table() -> None:
    spec = UserEmbeddingConfig(buckets=7).table(16)
    assert spec == EmbeddingTableSpec("user", 8, 16, ("user",))
    assert UserEmbeddingConfig(buckets=7, dim=4).table(16).embedding_dim == 4
    with pytest.raises(ValueError, match="UserEmbeddingConfig.buckets"):
        UserEmbeddingConfig(buckets=0)
    with pytest.raises(ValueError, match="UserEmbeddingConfig.dim"):
        UserEmbeddingConfig(dim=-1)
    dims = ModelDims(item_rows=ITEMS, embedding_dim=D, max_len=MAX_LEN)
    with pytest.raises(ValueError, match="ItemAndPosition.user.dim"):
        ItemAndPosition(dims, user=UserEmbeddingConfig(dim=D + 1))


# --- the model --------------------------------------------------------------------------------


def user_model(buckets: int = 5) -> SequentialRecommender:
    dims = ModelDims(item_rows=ITEMS, embedding_dim=D, max_len=MAX_LEN, seed=1)
    features = partial(ItemAndPosition, dropout=0.0, user=UserEmbeddingConfig(buckets=buckets))
    return SequentialRecommender(dims, Identity, features).eval()


def test_every_position_gets_its_rows_user_embedding() -> None:
    model = user_model()
    users = ["u1", "u2", "u3"]
    batch = collate_generative(
        [sample(u, n, n) for u, n in zip(users, (4, 1, 6), strict=True)], MAX_LEN
    )
    with torch.no_grad():
        got = model(step(batch, batch.user_ids)).user
    items = batch.sequence["item"]
    rows = SequenceRows.from_offsets(items.offsets, items.values, items.values)
    user_rows = table(model, "user")[[user_hash(u) % 5 + 1 for u in users]]  # (3, d)
    by_hand = (
        table(model, "item")[items.values] * D**0.5
        + model.dense.features.position.weight[rows.positions]
        + user_rows.repeat_interleave(items.lengths, dim=0)
    )
    assert torch.allclose(got, normalize(by_hand), atol=1e-6)
    assert table(model, "user").shape == (6, D)  # 5 buckets + the padding row


def test_a_model_with_a_user_table_needs_one_user_per_row() -> None:
    model = user_model()
    batch = collate_generative([sample("a", 3, 0), sample("b", 2, 1)], MAX_LEN)
    with pytest.raises(ValueError, match="SequenceStep.users"):
        model(step(batch, None))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        model(step(batch, batch.user_ids[:1]))


def test_no_user_table_unless_declared() -> None:
    dims = ModelDims(item_rows=ITEMS, embedding_dim=D, max_len=MAX_LEN, seed=1)
    plain = SequentialRecommender(dims, Identity, ItemAndPosition).eval()
    assert [t.name for t in plain.embeddings.tables] == ["item"] and plain.user_width is None
    with_user = user_model()
    assert torch.equal(table(plain, "item"), table(with_user, "item"))  # same item rows
    batch = collate_generative([sample("a", 3, 0)], MAX_LEN)
    with torch.no_grad():  # users are ignored without a user table
        assert torch.equal(plain(step(batch, None)).user, plain(step(batch, batch.user_ids)).user)


class UserEncoder(SequenceEncoder):
    """Declares a user table of its own; adds the user to the input."""

    def __init__(self, dims: ModelDims, user: UserEmbeddingConfig) -> None:
        super().__init__()
        self.spec = user.table(dims.embedding_dim)

    def tables(self) -> list[EmbeddingTableSpec]:
        return [self.spec]

    def forward(self, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
        return x + rows.user_per_event()


def test_features_and_encoder_share_one_user_table() -> None:
    dims = ModelDims(item_rows=ITEMS, embedding_dim=D, max_len=MAX_LEN)
    user = UserEmbeddingConfig(buckets=5)
    shared = SequentialRecommender(
        dims, partial(UserEncoder, user=user), partial(ItemAndPosition, user=user)
    )
    assert [t.name for t in shared.embeddings.tables] == ["item", USER_FEATURE]
    with pytest.raises(ValueError, match="two different embedding tables named 'user'"):
        SequentialRecommender(
            dims,
            partial(UserEncoder, user=UserEmbeddingConfig(buckets=6)),
            partial(ItemAndPosition, user=user),
        )
    alone = SequentialRecommender(dims, partial(UserEncoder, user=user), ItemOnly)
    assert alone.user_width == D


def test_masked_query_rows_keep_each_targets_user() -> None:
    batch = collate_generative([sample(u, 3, i) for i, u in enumerate("abc")], MAX_LEN)
    ranked = torch.tensor([True, False, True])
    items, _, _ = masked_query_rows(batch, ranked)
    users = masked_query_users(batch, ranked)
    assert items.batch_size == users.shape[0] == 2
    assert users.tolist() == [user_hash("a"), user_hash("c")]


# --- serving ----------------------------------------------------------------------------------


def test_the_request_program_reads_the_users_row_like_the_model() -> None:
    dims = ModelDims(item_rows=ITEMS, embedding_dim=D, max_len=MAX_LEN, seed=2)
    features = partial(ItemAndPosition, user=UserEmbeddingConfig(buckets=50))
    encoder = partial(SasRec, config=SasRecConfig(length_bucket=4, ffn_dim=8))
    model = SequentialRecommender(dims, encoder, features).eval()
    spec = model.serving_spec()
    user_input = next(i for i in spec.inputs if i.name == "user_rows")
    assert (user_input.shape, user_input.source) == ((1, D), "hashed:user@user_hash")
    items_table, users_table = table(model, "item"), table(model, "user")
    length = torch.export.Dim("length", min=1, max=MAX_LEN)
    dynamic = {i.name: ({0: length} if i.shape[0] == "length" else {}) for i in spec.inputs}
    with torch.no_grad():
        program = torch.export.export(spec.program, (spec.example({"length": 5}),),
                                      dynamic_shapes=(dynamic,)).module()  # fmt: skip
        for n, user in ((1, "x"), (7, "y"), (12, "never-seen")):
            s = sample(user, n, n)
            batch = collate_generative([s], MAX_LEN)
            expected = target_queries(model(step(batch, batch.user_ids)), batch)[0]
            ts = torch.from_numpy(s.history["ts"]).long()
            request = {
                "sequence_item_rows": items_table[torch.from_numpy(s.history["item"]).long()],
                "key_ts": ts,
                "query_ts": torch.cat([ts[1:], torch.from_numpy(s.targets["target_ts"]).long()]),
                "user_rows": users_table[hashed_rows(batch.user_ids, 51)],
            }
            assert torch.allclose(spec.program(request), expected, atol=1e-6)
            assert torch.allclose(program(request), expected, atol=1e-5)
            other = request | {"user_rows": users_table[hashed_rows(batch.user_ids + 1, 51)]}
            assert (spec.program(other) - expected).abs().max() > 1e-4  # the user matters
