"""The serving request programs (`serving_spec().program` of `models.ctr.CtrRecommender` and
`models.sequential.SequentialRecommender`) against the trained models: one user's request must
score exactly like the model's batch forward, eagerly and as a `torch.export` program with
dynamic history / candidate counts."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import torch

from lifeseq.features.batch import collate_ctr, collate_generative
from lifeseq.models.blocks.input_features import ItemAndPosition
from lifeseq.models.blocks.two_stage import KEY_CACHE
from lifeseq.models.ctr import CtrRecommender
from lifeseq.models.interfaces import ModelDims, SequenceEncoder
from lifeseq.models.sequential import SequenceStep, SequentialRecommender
from lifeseq.models.zoo.sequence.hstu import Hstu, HstuConfig
from lifeseq.models.zoo.sequence.sasrec import SasRec, SasRecConfig
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.tasks.next_item import target_queries
from tests.unit.test_lifelong_models import ITEM_ROWS, LONG_TERM_UNITS, make_model, table_weight

pytestmark = pytest.mark.unit

TOL = 1e-5
#: Request inputs of every CTR model: ids and times, and the shared tables' looked-up rows.
BASE_INPUTS = {
    "event_item", "event_category", "event_behavior", "event_ts", "target_item",
    "target_category", "request_ts", "history_item_rows", "history_category_rows",
    "target_item_rows", "target_category_rows",
}  # fmt: skip
#: SIM soft's GSU tables' rows.
GSU_INPUTS = {
    "gsu_history_item_rows", "gsu_history_category_rows", "gsu_target_item_rows",
    "gsu_target_category_rows",
}  # fmt: skip


def ctr_user(history: int, candidates: int, seed: int) -> tuple[UserSample, int]:
    """One user whose candidates are all requested after the whole history; items repeat (ties
    in SIM soft's search), categories 1..3."""
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000 + np.cumsum(rng.integers(1, 5000, history)).astype(np.int64)
    request_ts = int(ts[-1]) + 100 if history else 1_700_000_000
    events = {
        "item": rng.integers(2, 60, history),
        "category": rng.integers(1, 4, history),
        "behavior": rng.integers(1, 5, history),
        "ts": ts,
    }
    targets = {
        "target_item": rng.integers(2, ITEM_ROWS, candidates),
        "target_category": rng.integers(1, 5, candidates),
        "target_ts": np.full(candidates, request_ts, dtype=np.int64),
        "target_label": np.zeros(candidates, dtype=np.float32),
        "target_hist_len": np.full(candidates, history, dtype=np.int64),
    }
    history_arrays = {k: np.asarray(v, dtype=np.int64) for k, v in events.items()}
    return UserSample("u", "test", history_arrays, targets), request_ts


def ctr_request(
    model: CtrRecommender, sample: UserSample, request_ts: int
) -> dict[str, torch.Tensor]:
    """The request dict of `sample`, looked up in the model's own tables (and, for TWIN, its
    ESU key cache gathered at the history's items)."""

    def look(table: str, ids: torch.Tensor) -> torch.Tensor:
        return table_weight(model, table)[ids] * (ids != 0).unsqueeze(1)

    h = {k: torch.from_numpy(v) for k, v in sample.history.items()}
    t = {k: torch.from_numpy(v) for k, v in sample.targets.items()}
    request = {
        "event_item": h["item"], "event_category": h["category"], "event_behavior": h["behavior"],
        "event_ts": h["ts"], "history_item_rows": look("item", h["item"]),
        "history_category_rows": look("category", h["category"]), "target_item": t["target_item"],
        "target_category": t["target_category"], "target_item_rows": look("item", t["target_item"]),
        "target_category_rows": look("category", t["target_category"]),
        "request_ts": torch.tensor([request_ts]),
    }  # fmt: skip
    caches = model.item_caches()
    if KEY_CACHE in caches:
        rows = look("item", h["item"]), look("category", h["category"])
        request[KEY_CACHE] = caches[KEY_CACHE].compute(*rows)
    if "gsu_history_item" in model.dense.feature_ids():
        request |= {
            "gsu_history_item_rows": look("gsu_item", h["item"]),
            "gsu_history_category_rows": look("gsu_category", h["category"]),
            "gsu_target_item_rows": look("gsu_item", t["target_item"]),
            "gsu_target_category_rows": look("gsu_category", t["target_category"]),
        }
    return request


def ctr_dynamic_shapes(model: CtrRecommender) -> dict[str, object]:
    """Each input's first axis dynamic, as the serving spec names it (`events`, `candidates`);
    `request_ts` static."""
    dims = {
        "events": torch.export.Dim("events", min=1, max=1 << 20),
        "candidates": torch.export.Dim("candidates", min=1, max=1 << 16),
    }
    return {
        spec.name: {0: dims[spec.shape[0]]} if isinstance(spec.shape[0], str) else None
        for spec in model.serving_spec().inputs
    }


@pytest.mark.parametrize("long_term", LONG_TERM_UNITS)
def test_ctr_request_equals_the_batch_forward_eagerly_and_exported(long_term: str) -> None:
    model = make_model(long_term, chunk=7)  # a chunk far below the history: many scan steps
    spec = model.serving_spec()
    scorer = spec.program.eval()
    sample, ts = ctr_user(40, 6, seed=0)
    with torch.no_grad():
        example = ctr_request(model, sample, ts)
        assert set(example) == {i.name for i in spec.inputs}
        program = torch.export.export(
            scorer, (example,), dynamic_shapes=(ctr_dynamic_shapes(model),)
        )
        for history, candidates in [(40, 6), (1, 1), (3, 9), (300, 25)]:
            sample, ts = ctr_user(history, candidates, seed=history)
            expected = model(collate_ctr([sample], max_history=1000)).logits
            request = ctr_request(model, sample, ts)
            eager, exported = scorer(request), program.module()(request)
            assert expected.shape == (candidates,)
            assert torch.allclose(eager, expected, rtol=0, atol=TOL)
            assert torch.allclose(exported, expected, rtol=0, atol=TOL)
            assert candidates == 1 or expected.std() > 0.01  # the candidates do score differently


def test_sim_soft_ties_pick_the_most_recent_event_for_any_chunk() -> None:
    sample, _ = ctr_user(200, 5, seed=3)
    batch = collate_ctr([sample], max_history=1000)
    logits = [make_model("sim_soft", chunk=c)(batch).logits for c in (3, 16, 1000)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[1], logits[2])


@pytest.mark.parametrize("long_term", LONG_TERM_UNITS)
def test_request_inputs_name_the_model_features_and_only_twin_reads_the_key_cache(
    long_term: str,
) -> None:
    model = make_model(long_term)
    spec = model.serving_spec()
    inputs = {i.name: i for i in spec.inputs}
    expected = BASE_INPUTS | (GSU_INPUTS if long_term == "sim_soft" else set())
    expected |= {KEY_CACHE} if long_term == "twin" else set()
    assert set(inputs) == expected
    assert inputs["history_item_rows"].source == "table:history_item@event_item"
    assert inputs["target_category_rows"].shape == ("candidates", 8)
    if long_term != "twin":
        return
    cache = inputs[KEY_CACHE]
    assert (cache.source, cache.shape) == (f"cache:{KEY_CACHE}@event_item", ("events", 2, 4))
    # The program reads the cache instead of projecting the events' keys: other keys, other
    # logits.
    sample, ts = ctr_user(40, 6, seed=0)
    request = ctr_request(model, sample, ts)
    with torch.no_grad():
        logits = spec.program(request)
        shuffled = spec.program(request | {KEY_CACHE: request[KEY_CACHE].flip(0)})
    assert (logits - shuffled).abs().max() > 1e-4


# --- sequential -------------------------------------------------------------------------------

SEQUENCE_ITEMS, MAX_LEN = 60, 40


def sequence_sample(user: int, length: int) -> UserSample:
    """`length` random history events and one positive target right after them."""
    rng = np.random.default_rng([0, user])
    items = rng.integers(2, SEQUENCE_ITEMS, length + 1)
    ts = np.cumsum(rng.integers(1, 5000, length + 1))
    history = {"item": items[:length], "category": np.full(length, 2),
               "behavior": np.full(length, 2), "ts": ts[:length]}  # fmt: skip
    targets = {
        "target_item": items[length:],
        "target_category": np.full(1, 2),
        "target_ts": ts[length:],
        "target_label": np.ones(1, dtype=np.float32),
        "target_hist_len": np.array([length]),
    }
    return UserSample(f"u{user}", "valid", history, targets)


def sequence_model(encoder: str) -> SequentialRecommender:
    """A small next-item model (item · √d + position features) in eval mode."""
    encoders: dict[str, Callable[[ModelDims], SequenceEncoder]] = {
        "hstu": partial(Hstu, config=HstuConfig(length_bucket=8)),
        "sasrec": partial(SasRec, config=SasRecConfig(length_bucket=8)),
    }
    dims = ModelDims(item_rows=SEQUENCE_ITEMS, embedding_dim=16, max_len=MAX_LEN, seed=3)
    return SequentialRecommender(dims, encoders[encoder], ItemAndPosition).eval()


@pytest.mark.parametrize("encoder", ["hstu", "sasrec"])
def test_sequential_request_equals_the_models_query(encoder: str) -> None:
    model = sequence_model(encoder)
    spec = model.serving_spec()
    scorer = spec.program.eval()
    table = dict(model.named_parameters())["embeddings.collections.d16.embeddings.item.weight"]

    def request(sample: UserSample) -> dict[str, torch.Tensor]:
        items = torch.from_numpy(sample.history["item"][-MAX_LEN:]).long()
        ts = torch.from_numpy(sample.history["ts"][-MAX_LEN:]).long()
        target_ts = torch.from_numpy(sample.targets["target_ts"][:1]).long()
        query_ts = torch.cat([ts[1:], target_ts])
        return {"sequence_item_rows": table[items], "key_ts": ts, "query_ts": query_ts}

    with torch.no_grad():
        example = request(sequence_sample(0, 17))
        assert set(example) == {i.name for i in spec.inputs}
        length = torch.export.Dim("length", min=1, max=MAX_LEN)
        program = torch.export.export(
            scorer, (example,), dynamic_shapes=({k: {0: length} for k in example},)
        )
        for n in (1, 2, 17, 40, 70):
            batch = collate_generative([sequence_sample(n, n)], max_len=MAX_LEN)
            items = batch.sequence["item"]
            step = SequenceStep(
                items, batch.sequence["ts"].values, batch.query_ts().values,
                candidates=torch.zeros(0, dtype=torch.int64),
            )  # fmt: skip
            expected = target_queries(model(step), batch)[0]
            got = request(sequence_sample(n, n))
            assert expected.norm() > 0.99  # a real (L2-normalized) query, not the zero fallback
            assert torch.allclose(scorer(got), expected, rtol=0, atol=TOL)
            assert torch.allclose(program.module()(got), expected, rtol=0, atol=TOL)
