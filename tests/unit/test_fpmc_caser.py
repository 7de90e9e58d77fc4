"""FPMC's score against a hand computation, and Caser against a direct per-position loop of the
paper's formulas (window, horizontal and vertical convolutions, the user)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.input_features import ItemOnly
from lifeseq.models.blocks.user_embedding import UserEmbeddingConfig, hashed_rows
from lifeseq.models.interfaces import ModelDims, SequenceRows
from lifeseq.models.sequential import SequenceStep, SequentialRecommender, normalize
from lifeseq.models.zoo.sequence.caser import Caser, CaserConfig, causal_windows
from lifeseq.models.zoo.sequence.fpmc import Fpmc, FpmcConfig

pytestmark = pytest.mark.unit

ITEMS = 30


def rows_of(lengths: list[int], user: torch.Tensor | None = None) -> SequenceRows:
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    ts = torch.arange(int(offsets[-1]))
    return SequenceRows.from_offsets(offsets, ts, ts, user)


# --- FPMC -------------------------------------------------------------------------------------


def test_fpmc_scores_user_and_last_item_against_the_shared_item_table() -> None:
    dims = ModelDims(item_rows=ITEMS, embedding_dim=2, max_len=8)
    model = SequentialRecommender(
        dims, partial(Fpmc, config=FpmcConfig(UserEmbeddingConfig(buckets=4))), ItemOnly
    ).eval()
    with torch.no_grad():  # V_u = (1, 0), e_l = (0, 1), W = [[0, 2], [1, 0]], V_i = (3, 4)
        tables = model.embeddings.table_weights()
        users = torch.tensor([7], dtype=torch.int64)
        tables["user"][hashed_rows(users, 5)] = torch.tensor([1.0, 0.0])
        tables["item"][5] = torch.tensor([0.0, 1.0])
        tables["item"][9] = torch.tensor([3.0, 4.0])
        model.dense.encoder.transition.weight.copy_(torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
        items = Jagged(torch.tensor([5]), torch.tensor([1]))
        out = model(
            SequenceStep(items, torch.zeros(1), torch.zeros(1), torch.tensor([9]), None, users)
        )
    # ⟨V_u, V_i⟩ + ⟨W·e_l, V_i⟩ = 3 + ⟨(2, 0), (3, 4)⟩ = 3 + 6 = 9, with V_u + W·e_l = (3, 0)
    raw = torch.tensor([3.0, 0.0])
    assert float(raw @ torch.tensor([3.0, 4.0])) == 9.0
    assert torch.allclose(out.user[0], normalize(raw))  # the composite scores cosines
    assert torch.allclose(out.user[0] @ out.candidates[0], torch.tensor(9.0 / (3.0 * 5.0)))


def test_fpmc_is_first_order_each_position_reads_its_own_item_and_user() -> None:
    torch.manual_seed(0)
    d = 6
    encoder = Fpmc(ModelDims(item_rows=ITEMS, embedding_dim=d, max_len=8))
    x, user = torch.randn(7, d), torch.randn(2, d)
    out = encoder(x, rows_of([3, 4], user)).detach()
    w = encoder.transition.weight.detach()
    for n, row in enumerate([0, 0, 0, 1, 1, 1, 1]):
        expected = [
            float(user[row, j] + sum(w[j, k] * x[n, k] for k in range(d))) for j in range(d)
        ]
        assert torch.allclose(out[n], torch.tensor(expected), atol=1e-6)


def test_fpmc_needs_the_user_factor_at_the_item_width() -> None:
    with pytest.raises(ValueError, match="FpmcConfig.user.dim"):
        Fpmc(ModelDims(item_rows=ITEMS, embedding_dim=8), FpmcConfig(UserEmbeddingConfig(dim=4)))


# --- Caser ------------------------------------------------------------------------------------


def caser_reference(caser: Caser, x: torch.Tensor, rows: SequenceRows) -> torch.Tensor:
    """The paper's formulas, one position at a time (eval mode: no dropout)."""
    window, d = caser.config.window, x.shape[1]
    outputs = []
    for b in range(rows.batch_size):
        start, end = int(rows.offsets[b]), int(rows.offsets[b + 1])
        for t in range(start, end):
            e = torch.zeros(window, d)  # E_t, oldest first, zeros before the row
            for k in range(min(window, t - start + 1)):
                e[window - 1 - k] = x[t - k]
            o_h = []
            for h, conv in enumerate(caser.horizontal, start=1):
                f = conv.weight  # (n_h, d, h); no bias, as the paper
                c = torch.stack(
                    [
                        torch.stack([(f[k] * e[s : s + h].T).sum() for s in range(window - h + 1)])
                        for k in range(f.shape[0])
                    ]
                )  # (n_h, L − h + 1)
                o_h.append(torch.relu(c).max(dim=1).values)
            fv = caser.vertical.weight  # (n_v, L)
            o_v = torch.stack(
                [
                    torch.stack([(fv[k] * e[:, j]).sum() for k in range(fv.shape[0])])
                    for j in range(d)
                ]
            ).flatten()  # (d·n_v,) filter-minor
            z = torch.relu(caser.hidden(torch.cat([o_v, *o_h])))
            outputs.append(caser.output(torch.cat([z, rows.user[b]])))
    return torch.stack(outputs)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_caser_equals_a_per_position_loop_of_the_formulas(window: int) -> None:
    torch.manual_seed(window)
    d = 6
    config = CaserConfig(window=window, n_h=3, n_v=2, user=UserEmbeddingConfig(dim=4))
    caser = Caser(ModelDims(item_rows=ITEMS, embedding_dim=d, max_len=10), config).eval()
    rows = rows_of([1, 4, 7, 2], torch.randn(4, 4))
    x = torch.randn(14, d)
    with torch.no_grad():
        assert torch.allclose(caser(x, rows), caser_reference(caser, x, rows), atol=1e-5)


def test_caser_windows_stop_at_the_row_start() -> None:
    x = torch.arange(1, 6, dtype=torch.float32).unsqueeze(1)  # events 1..5, d = 1
    windows = causal_windows(x, rows_of([2, 3]), 3)[:, 0]  # (N, L)
    assert windows.tolist() == [[0, 0, 1], [0, 1, 2], [0, 0, 3], [0, 3, 4], [3, 4, 5]]


def test_caser_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="CaserConfig.window"):
        CaserConfig(window=0)
    with pytest.raises(ValueError, match="CaserConfig.dropout"):
        CaserConfig(dropout=1.0)
