"""The serving request paths (`models.ctr_request`, `models.generative_request`) against the
trained models: one user's request must score exactly like the model's batch forward, eagerly
and as a `torch.export` program with dynamic history / candidate counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.batch import collate_ctr, collate_generative
from models.ctr_request import CtrRequestModel
from models.generative_request import GenerativeRequestModel
from models.lifelong_ctr import LifelongCtrModel
from pipeline.sample_codec import UserSample
from tests.unit import test_generative_models as gen
from tests.unit.test_lifelong_models import ITEM_ROWS, make_model, table_weight

pytestmark = pytest.mark.unit

LONG_TERM = ("none", "sim_hard", "sim_soft", "eta", "twin", "full")
TOL = 1e-5


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
    model: LifelongCtrModel, sample: UserSample, request_ts: int, cached: bool
) -> dict[str, torch.Tensor]:
    """The request dict of `sample`, looked up in the model's own tables."""

    def look(table: str, ids: torch.Tensor) -> torch.Tensor:
        return table_weight(model, table)[ids] * (ids != 0).unsqueeze(1)

    h = {k: torch.from_numpy(v) for k, v in sample.history.items()}
    t = {k: torch.from_numpy(v) for k, v in sample.targets.items()}
    request = {
        "event_item": h["item"], "event_category": h["category"], "event_behavior": h["behavior"],
        "event_ts": h["ts"], "event_item_emb": look("item", h["item"]),
        "event_category_emb": look("category", h["category"]), "target_item": t["target_item"],
        "target_category": t["target_category"], "target_item_emb": look("item", t["target_item"]),
        "target_category_emb": look("category", t["target_category"]),
        "request_ts": torch.tensor([request_ts]),
    }  # fmt: skip
    if cached:
        request["event_keys"] = model.item_key_cache(h["item"], h["category"])
    if model.config.arch.long_term == "sim_soft":
        request |= {
            "gsu_event_item_emb": look("gsu_item", h["item"]),
            "gsu_event_category_emb": look("gsu_category", h["category"]),
            "gsu_target_item_emb": look("gsu_item", t["target_item"]),
            "gsu_target_category_emb": look("gsu_category", t["target_category"]),
        }
    return request


def ctr_dynamic_shapes(request: dict[str, torch.Tensor]) -> dict[str, object]:
    events = torch.export.Dim("events", min=1, max=1 << 20)
    candidates = torch.export.Dim("candidates", min=1, max=1 << 16)
    return {
        k: None if k == "request_ts" else {0: candidates if "target" in k else events}
        for k in request
    }


@pytest.mark.parametrize("long_term", LONG_TERM)
def test_ctr_request_equals_the_batch_forward_eagerly_and_exported(long_term: str) -> None:
    model = make_model(long_term, chunk=7)  # a chunk far below the history: many scan steps
    cached = long_term == "twin"
    scorer = CtrRequestModel(model, cached_keys=cached).eval()
    sample, ts = ctr_user(40, 6, seed=0)
    with torch.no_grad():
        example = ctr_request(model, sample, ts, cached)
        program = torch.export.export(
            scorer, (example,), dynamic_shapes=(ctr_dynamic_shapes(example),)
        )
        for history, candidates in [(40, 6), (1, 1), (3, 9), (300, 25)]:
            sample, ts = ctr_user(history, candidates, seed=history)
            expected = model(collate_ctr([sample], max_history=1000)).logits
            request = ctr_request(model, sample, ts, cached)
            eager, exported = scorer(request), program.module()(request)
            assert expected.shape == (candidates,)
            assert torch.allclose(eager, expected, rtol=0, atol=TOL)
            assert torch.allclose(exported, expected, rtol=0, atol=TOL)
            assert expected.std() > 0.01 or candidates == 1  # the candidates do score differently


def test_sim_soft_ties_pick_the_most_recent_event_for_any_chunk() -> None:
    sample, _ = ctr_user(200, 5, seed=3)
    batch = collate_ctr([sample], max_history=1000)
    logits = [make_model("sim_soft", chunk=c)(batch).logits for c in (3, 16, 1000)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[1], logits[2])


def test_cached_keys_need_an_attention_unit() -> None:
    with pytest.raises(ValueError, match="cached_keys"):
        CtrRequestModel(make_model("none"), cached_keys=True)


@pytest.mark.parametrize("encoder", ["hstu", "sasrec"])
def test_generative_request_equals_the_models_query(encoder: str) -> None:
    model = gen.make_model(encoder)  # max_len 40
    scorer = GenerativeRequestModel(model).eval()
    table = table_weight_generative(model)

    def request(sample: UserSample) -> dict[str, torch.Tensor]:
        items = torch.from_numpy(sample.history["item"][-40:]).long()
        ts = torch.from_numpy(sample.history["ts"][-40:]).long()
        target_ts = torch.from_numpy(sample.targets["target_ts"][:1]).long()
        return {"item_emb": table[items], "key_ts": ts, "query_ts": torch.cat([ts[1:], target_ts])}

    with torch.no_grad():
        example = request(gen.make_sample(0, 17))
        length = torch.export.Dim("length", min=1, max=40)
        program = torch.export.export(
            scorer, (example,), dynamic_shapes=({k: {0: length} for k in example},)
        )
        for n in (1, 2, 17, 40, 70):
            sample = gen.make_sample(n, n)
            batch = collate_generative([sample], max_len=40)
            expected = model.target_queries(model(batch), batch)[0]
            assert torch.allclose(scorer(request(sample)), expected, rtol=0, atol=TOL)
            assert torch.allclose(program.module()(request(sample)), expected, rtol=0, atol=TOL)


def table_weight_generative(model: torch.nn.Module) -> torch.Tensor:
    return dict(model.named_parameters())["embeddings.collections.d16.embeddings.item.weight"]
