"""MIMN (`models.zoo.ctr.mimn`): the forward pass is the state step run event by event, and the
exported incremental-state programs reproduce it.

* the state after N single-event `update_state` calls equals the forward loop's state, and
  scoring it equals the model's logits on the whole history (N ≤ `max_events`);
* a window longer than `max_events` reads only its last `max_events` events;
* a batched update equals each user's update alone;
* `export_programs` writes `update` and `score_state` programs and the initial state; feeding a
  user's events one by one through the exported `update`, then `score_state`, scores like the
  eager model (≤ 1e-5), and the exported request program (a traced `scan`) does too;
* the usage penalty (`utilization_weight`) is 0 for evenly used slots and trains the
  re-balancing as `CtrOutput.aux_loss`;
* config errors name the field.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeseq.features.batch import CtrBatch, collate_ctr
from lifeseq.models.ctr import CtrRecommender
from lifeseq.models.ctr_features import CtrEvents, CtrTargets
from lifeseq.models.interfaces import ModelDims
from lifeseq.models.zoo.ctr.mimn import Mimn, MimnConfig, usage_penalty
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.serving.export import export_programs

pytestmark = pytest.mark.unit

TOL = 1e-5
DIMS = ModelDims(item_rows=50, category_rows=6, behavior_rows=5, embedding_dim=4, seed=3)
CONFIG = MimnConfig(max_events=24, slots=4, memory_dim=8, controller_dim=8, miu_dim=8,
                    miu_top_k=2, tower_hidden=(16,))  # fmt: skip


def make_model(config: MimnConfig = CONFIG) -> CtrRecommender:
    model = CtrRecommender(DIMS, functools.partial(Mimn, config=config)).eval()
    with torch.no_grad():  # tables large enough that candidates score apart
        for param in model.embeddings.parameters():
            param.mul_(30.0)
    return model


def user(events: int, hist_len: list[int], seed: int = 0, candidates: int = 0) -> UserSample:
    """A user with `events` events and targets at `hist_len` (or `candidates` targets after the
    whole history)."""
    rng = np.random.default_rng(seed)
    hist = np.asarray(hist_len or [events] * candidates, dtype=np.int64)
    ts = 1_700_000_000 + np.cumsum(rng.integers(1, 5_000, events)).astype(np.int64)
    history = {
        "item": rng.integers(2, DIMS.item_rows, events),
        "category": rng.integers(2, DIMS.category_rows, events),
        "behavior": rng.integers(2, DIMS.behavior_rows, events),
        "ts": ts,
    }
    t = hist.size
    request_ts = (int(ts[-1]) if events else 1_700_000_000) + 60
    targets = {
        "target_item": rng.integers(2, DIMS.item_rows, t),
        "target_category": rng.integers(2, DIMS.category_rows, t),
        "target_ts": np.full(t, request_ts, dtype=np.int64),
        "target_label": np.zeros(t, dtype=np.float32),
        "target_hist_len": hist,
    }
    return UserSample("u", "train", history, targets)


def rows(model: CtrRecommender, table: str, ids: torch.Tensor) -> torch.Tensor:
    weight = dict(model.embeddings.named_parameters())[f"collections.d4.embeddings.{table}.weight"]
    return weight[ids] * (ids != 0).unsqueeze(-1)


def event(model: CtrRecommender, sample: UserSample, i: int) -> CtrEvents:
    """Event i of `sample` for one user, looked up in the model's tables."""
    h = {k: torch.from_numpy(v[i : i + 1]) for k, v in sample.history.items()}
    return CtrEvents(
        item=h["item"], category=h["category"], behavior=h["behavior"], ts=h["ts"],
        embedded={"history_item": rows(model, "item", h["item"]),
                  "history_category": rows(model, "category", h["category"])},
    )  # fmt: skip


def targets(model: CtrRecommender, sample: UserSample, which: torch.Tensor) -> CtrTargets:
    """Targets `which` of `sample`, looked up in the model's tables."""
    t = {k: torch.from_numpy(v)[which] for k, v in sample.targets.items()}
    return CtrTargets(
        item=t["target_item"], category=t["target_category"], ts=t["target_ts"],
        embedded={"target_item": rows(model, "item", t["target_item"]),
                  "target_category": rows(model, "category", t["target_category"])},
    )  # fmt: skip


def stepped(model: CtrRecommender, sample: UserSample, events: int) -> dict[str, torch.Tensor]:
    """The state after `update_state` on the first `events` events, one at a time."""
    state = model.dense.initial_state(1)
    for i in range(events):
        state = model.dense.update_state(state, event(model, sample, i))
    return state


def test_single_event_updates_equal_the_forward_loop_and_its_scores() -> None:
    model = make_model()
    sample = user(20, [5, 13, 20, 20])
    batch = collate_ctr([sample], max_history=100)
    with torch.no_grad():
        states, owner = model.dense.window_states(model.features(batch))
        logits = model(batch).logits
        assert owner.tolist() == [0, 1, 2, 2]  # the last two targets share one run
        for run, hist_len in enumerate([5, 13, 20]):
            state = stepped(model, sample, hist_len)
            for name, value in state.items():
                assert (value[0] - states[name][run]).abs().max().item() <= 1e-6, name
            mine = (owner == run).nonzero().flatten()
            scored = model.dense.score_from_state(
                {k: v.expand(mine.numel(), *v.shape[1:]) for k, v in state.items()},
                targets(model, sample, mine),
            )
            assert (scored - logits[mine]).abs().max().item() <= TOL


def test_a_window_longer_than_max_events_reads_only_its_last_max_events() -> None:
    model = make_model()
    sample = user(60, [60])
    changed = UserSample("u", "train", {k: v.copy() for k, v in sample.history.items()},
                         sample.targets)  # fmt: skip
    cut = 60 - CONFIG.max_events
    changed.history["item"][:cut] = (changed.history["item"][:cut] + 5) % 40 + 2
    changed.history["category"][:cut] = 2
    with torch.no_grad():
        before = model(collate_ctr([sample], max_history=100)).logits
        after = model(collate_ctr([changed], max_history=100)).logits
        changed.history["item"][cut] = (changed.history["item"][cut] + 5) % 40 + 2
        inside = model(collate_ctr([changed], max_history=100)).logits
    assert torch.equal(before, after)
    assert not torch.equal(before, inside)


def test_a_batched_update_equals_each_user_alone() -> None:
    model = make_model()
    samples = [user(3, [3], seed=s) for s in range(3)]
    with torch.no_grad():
        alone = [stepped(model, s, 3) for s in samples]
        state = model.dense.initial_state(3)
        for i in range(3):
            events = [event(model, s, i) for s in samples]
            joined = CtrEvents(
                *(torch.cat([getattr(e, f) for e in events]) for f in
                  ("item", "category", "behavior", "ts")),
                embedded={k: torch.cat([e.embedded[k] for e in events])
                          for k in events[0].embedded},
            )  # fmt: skip
            state = model.dense.update_state(state, joined)
    for name, value in state.items():
        expected = torch.cat([a[name] for a in alone])
        assert (value - expected).abs().max().item() <= 1e-6, name


def request_inputs(model: CtrRecommender, sample: UserSample) -> dict[str, torch.Tensor]:
    h = {k: torch.from_numpy(v) for k, v in sample.history.items()}
    t = {k: torch.from_numpy(v) for k, v in sample.targets.items()}
    return {
        "event_item": h["item"], "event_category": h["category"], "event_behavior": h["behavior"],
        "event_ts": h["ts"], "history_item_rows": rows(model, "item", h["item"]),
        "history_category_rows": rows(model, "category", h["category"]),
        "target_item": t["target_item"], "target_category": t["target_category"],
        "request_ts": t["target_ts"][:1],
        "target_item_rows": rows(model, "item", t["target_item"]),
        "target_category_rows": rows(model, "category", t["target_category"]),
    }  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[CtrRecommender, Path, dict]:
    model = make_model()
    root = tmp_path_factory.mktemp("mimn")
    with torch.no_grad():
        sections = export_programs(root, model)
    return model, root, sections


def test_export_writes_the_state_programs_and_the_initial_state(exported) -> None:
    model, root, sections = exported
    assert set(sections["dense"]) == {"model", "model_no_history"}
    assert set(sections["programs"]) == {"update", "score_state"}
    update = {i["name"]: i for i in sections["programs"]["update"]["inputs"]}
    assert update["memory"]["source"] == "state:memory"
    assert list(update["memory"]["shape"]) == ["users", CONFIG.slots, CONFIG.memory_dim]
    assert update["history_item_rows"]["source"] == "table:history_item@event_item"
    assert "target_item" not in update
    score = {i["name"]: i for i in sections["programs"]["score_state"]["inputs"]}
    assert list(score["memory"]["shape"]) == [1, CONFIG.slots, CONFIG.memory_dim]
    assert "event_item" not in score and "target_item_rows" in score
    initial = model.dense.initial_state(1)
    for name, spec in sections["state"].items():
        array = np.load(root / spec["file"], allow_pickle=False)
        assert np.array_equal(array, initial[name][0].detach().numpy()), name


@pytest.mark.parametrize("events", [0, 1, 17, 24])
def test_exported_updates_then_score_state_equal_the_eager_model(exported, events: int) -> None:
    model, root, _ = exported
    update = torch.export.load(root / "dense" / "update.pt2").module()
    score = torch.export.load(root / "dense" / "score_state.pt2").module()
    sample = user(events, [], seed=events, candidates=5)
    request = request_inputs(model, sample)
    with torch.no_grad():
        eager = model(collate_ctr([sample], max_history=100)).logits
        state = {k: v.detach() for k, v in model.dense.initial_state(1).items()}
        for i in range(events):
            one = {k: request[k][i : i + 1] for k in (
                "event_item", "event_category", "event_behavior", "event_ts",
                "history_item_rows", "history_category_rows")}  # fmt: skip
            state = update({**one, **state})
        expected_state = stepped(model, sample, events)
        for name, value in state.items():
            assert (value - expected_state[name]).abs().max().item() <= TOL, name
        targets_only = {k: request[k] for k in (
            "target_item", "target_category", "request_ts", "target_item_rows",
            "target_category_rows")}  # fmt: skip
        logits = score({**targets_only, **state})
        request_program = torch.export.load(
            root / "dense" / ("model.pt2" if events else "model_no_history.pt2")
        ).module()
        whole = request_program(request)
    assert (logits - eager).abs().max().item() <= TOL, (logits, eager)
    assert (whole - eager).abs().max().item() <= TOL, (whole, eager)


def test_the_usage_penalty_measures_uneven_slots() -> None:
    usage = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert usage_penalty(usage[:1]).item() == 0.0
    assert usage_penalty(usage[1:2]).item() == pytest.approx(0.75)  # (1 - 1/4)² + 3 / 16
    assert usage_penalty(usage[2:]).item() == 0.0  # wrote nothing
    assert usage_penalty(usage).item() == pytest.approx(0.25)  # mean over the three runs
    assert usage_penalty(usage[:0]).item() == 0.0


def test_the_usage_penalty_is_the_aux_loss_and_trains_the_rebalancing() -> None:
    config = dataclasses.replace(CONFIG, utilization_weight=0.5)
    model = make_model(config).train()
    assert make_model().train()(collate_ctr([user(20, [20])], 100)).aux_loss is None
    out = model(collate_ctr([user(20, [7, 20]), user(9, [9], seed=1)], max_history=100))
    assert out.aux_loss is not None and 0 < out.aux_loss.item() < 0.5
    out.aux_loss.backward()
    assert model.dense.usage_gate.weight.grad.abs().sum() > 0
    empty = model(CtrBatch.empty())
    assert empty.aux_loss is not None and empty.aux_loss.item() == 0.0


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"MimnConfig\.miu_top_k: expected at most slots \(4\)"):
        MimnConfig(slots=4, miu_top_k=5)
    with pytest.raises(ValueError, match=r"MimnConfig\.max_events: expected a positive int"):
        MimnConfig(max_events=0)
    with pytest.raises(ValueError, match=r"MimnConfig\.utilization: expected a bool"):
        MimnConfig(utilization="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"MimnConfig\.utilization_weight: expected a float >= 0"):
        MimnConfig(utilization_weight=-1.0)
