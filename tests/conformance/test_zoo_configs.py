"""Conformance, training and serving: every model config (`configs/FAMILY/NAME.yaml` on its
family's base, `configs/smoke.yaml`), parsed as `lifeseq train` parses it, must

* learn a planted rule in a short run with its own task, optimizer and hyper-parameters (only
  the data's widths are the suite's): next-item and masked-item models HR@10 > 0.9 on a
  successor rule; CTR models with a long-term unit AUC > 0.9 on a signal that lies only beyond
  the most recent 100 events (`planted.far_history_sample`; DIN-100 and the smoke model cannot
  see it by construction, so they are not asked to);
* export (`lifeseq export`'s code path, from a DCP checkpoint) to a program whose scores equal
  the eager model's (≤ 1e-5), unknown ids included, both as `torch.export` programs and (slow)
  as the AOTInductor packages `--compiled` serves; an incremental-state model (MIMN) also
  scores so from a state updated event by event through its exported `update` program.

And every zoo class must be named by at least one config (a model is its file and its config).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lifeseq.features.batch import collate_ctr, collate_generative
from lifeseq.features.jagged import Jagged
from lifeseq.models.blocks.retrieval import top_k_items
from lifeseq.models.interfaces import CtrModel, LongTermUnit, SequenceEncoder
from lifeseq.models.sequential import SequenceStep
from lifeseq.models.zoo import choices
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.serving.compiled import compiler_missing
from lifeseq.serving.export import export_checkpoint, load_trained_model
from lifeseq.serving.scorer import (
    CtrRequest,
    NextItemRequest,
    RequestError,
    Scorer,
    load_state,
    save_state,
)
from lifeseq.trainers.checkpoint import save_checkpoint
from lifeseq.trainers.tasks.next_item import target_queries
from tests.conformance import planted
from tests.conformance.cases import ZooCase, config_cases
from tests.unit.test_dataset import write_out_dir

pytestmark = pytest.mark.integration

CASES = config_cases()
TOL = 1e-5
#: Training steps of the learning check, per task (cloze trains 20% of the positions a step).
STEPS = {"ctr": 200, "next_item": 200, "masked_item": 1500}
#: Configs that need more steps than their task's, with the measured reason.
CASE_STEPS = {
    # RecBole's dropout 0.5: HR@10 0.62 after 200 steps, 0.90 after 300, 1.0 after 400.
    "config:sequential/sasrec": 400,
    # SDIM scores nothing after its hash (no top-K, no attention): the tower must read "the
    # target's category is in the sampled sums" while the hash codes of the learned rows flip
    # as they move. AUC over model seeds 0..3: 0.95, 0.83, 0.71, 0.84 after 200 steps (seed 0
    # passes by luck), 0.996, 0.915, 0.923, 0.994 after 600.
    "config:ctr/sdim": 600,
    # MIMN writes its memory event by event (256 GRU steps a batch, ~2 s a step on 2 cores) and
    # is a known non-learner (AUC 0.46-0.49 over 100-400 steps; 50 steps are where DIN-100
    # reaches 1.0 on the easier variant below): 50 steps still tell.
    "config:ctr/mimn": 50,
}
#: Models that do not learn the planted rule, with the measured reason (strict: the test
#: fails once they do, so the entry must then go).
KNOWN_NOT_LEARNING = {
    "config:ctr/sim_soft": "SIM soft's GSU is trained only by its auxiliary task, which stays at "
    "AUC ≈ 0.45 on this signal; the ESU sees the far events only when the untrained top-64 of "
    "240 picks them: test AUC 0.74-0.84 over 100-600 steps (also at DIN-100's level on bench ctr)",
    "config:ctr/mimn": "MIMN's memory reads the whole window but is target-independent by "
    "design (kept per user, updated per event), so it has no (target, behavior) same-category "
    "feature, which is how every long-term unit finds the planted events: test AUC 0.49 after "
    "200 steps (0.46-0.49 over 100-400 steps; with the target categories moved into the last 6 "
    "events still 0.49-0.51 over 50-200 steps, where DIN-100 reaches 1.0 in 50)",
    "config:sequential/pop": "Pop ranks by popularity and reads no history, so a successor rule "
    "over a uniformly visited cycle is out of its reach by design: HR@10 0.125 after 200 steps "
    "(chance: 10 of ~83 unseen items, 0.12)",
}


def _ids(cases: list[ZooCase]) -> list[str]:
    return [c.name for c in cases]


def test_every_zoo_class_is_named_by_a_config() -> None:
    named = {path for case in CASES for path in case.zoo}
    zoo = {p for i in (SequenceEncoder, LongTermUnit, CtrModel) for p in choices(i)}
    assert zoo - named == set(), "zoo models without a config under configs/"


# --- learning ---------------------------------------------------------------------------------


def _task(case: ZooCase) -> str:
    return "ctr" if case.family == "ctr" else "masked_item" if case.masked else "next_item"


LEARNING = [
    pytest.param(
        case,
        id=case.name,
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN_NOT_LEARNING[case.name])]
        if case.name in KNOWN_NOT_LEARNING
        else [],
    )
    for case in CASES
]


@pytest.mark.parametrize("case", LEARNING)
def test_a_short_run_learns_the_planted_rule(case: ZooCase) -> None:
    if case.family == "ctr" and not case.long_term:
        pytest.skip("no long-term unit: the far-history signal is out of its sight by design")
    torch.manual_seed(0)
    module = case.build().train()
    if case.family == "ctr":
        train, test = planted.ctr_batches(0, 400, 8), planted.ctr_batches(10_000, 128, 64)
    else:
        train = planted.rule_batches(0, 512, 32, train=True)
        test = planted.rule_batches(10_000, 128, 64, train=False)
    optimizer = module.configure_optimizers()
    for step in range(CASE_STEPS.get(case.name, STEPS[_task(case)])):
        loss = module.training_loss(train[step % len(train)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    metrics = module.evaluate(test)
    if case.family == "ctr":
        assert metrics["auc"] > 0.9, metrics
    else:
        assert metrics["hr@10"] > 0.9, metrics


# --- export == eager --------------------------------------------------------------------------


def item_category(items: np.ndarray, categories: int = planted.CTR_VOCAB["category"]) -> np.ndarray:
    """The category the suite's vocabulary gives item ids (>= 2), of `categories` rows."""
    return 2 + items % (categories - 2)


def write_vocabs(out: Path, vocab: dict[str, int]) -> None:
    """`OUT/vocab/{item,category,behavior}/` as `lifeseq build` writes them: raw id `i{k}`,
    `c{k}`, `b{k}` for id k; items carry `category_id`."""
    for name, prefix in (("item", "i"), ("category", "c"), ("behavior", "b")):
        ids = np.arange(2, vocab[name], dtype=np.int64)
        columns = {
            "raw_id": pa.array([f"{prefix}{i}" for i in ids]),
            "id": pa.array(ids),
            "count": pa.array(np.ones(ids.size, dtype=np.int64)),
        }
        if name == "item":
            columns["category_id"] = pa.array(item_category(ids, vocab["category"]))
        (out / "vocab" / name).mkdir(parents=True)
        pq.write_table(pa.table(columns), out / "vocab" / name / "part-0.parquet")


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny build per family: shards, manifest and vocabularies."""
    out = {}
    for family, sample, vocab in (
        ("ctr", planted.prefix_sample, planted.CTR_VOCAB),
        ("sequential", planted.rule_sample, planted.SEQ_VOCAB),
    ):
        root = tmp_path_factory.mktemp(family) / "out"
        write_out_dir(
            root, {"train": [4], "valid": [2], "test": [2]},
            sample_fn=lambda user, split, f=sample: f(user), vocab=vocab,
        )  # fmt: skip
        write_vocabs(root, vocab)
        out[family] = root
    return out


def data_hparams(case: ZooCase, root: Path) -> dict[str, Any]:
    """The data module's hyper-parameters matching `case.schema()`."""
    if case.family == "ctr":
        return {"root": str(root), "view": "ctr", "embedding_dim": 8,
                "max_history": planted.HISTORY, "num_workers": 0}  # fmt: skip
    return {"root": str(root), "view": "generative", "embedding_dim": 16,
            "max_len": planted.SEQ_MAX_LEN, "num_workers": 0}  # fmt: skip


def random_checkpoint(case: ZooCase, root: Path, ckpt: Path) -> None:
    """A checkpoint of the case's model with seeded random weights, its tables scaled up so
    that candidates score apart."""
    module = case.build(seed=3)
    with torch.no_grad():
        for name, param in module.core.named_parameters():
            if name.startswith("embeddings."):
                param.mul_(50.0)
    save_checkpoint(
        {
            "state_dict": {f"model.{k}": v for k, v in module.core.state_dict().items()},
            "hyper_parameters": copy.deepcopy(case.hparams),
            "datamodule_hyper_parameters": data_hparams(case, root),
            "global_step": 0,
            "epoch": 0,
        },
        ckpt,
    )


def ctr_sample(items: np.ndarray, behaviors: np.ndarray, ts: np.ndarray, candidates: np.ndarray,
               request_ts: int) -> UserSample:  # fmt: skip
    """The one-user batch the scorer's request stands for (unknown ids → 1)."""
    categories = np.where(items > 1, item_category(items), 1)
    target_categories = np.where(candidates > 1, item_category(candidates), 1)
    history = {"item": items, "category": categories, "behavior": behaviors, "ts": ts}
    targets = {
        "target_item": candidates,
        "target_category": target_categories,
        "target_ts": np.full(candidates.size, request_ts, dtype=np.int64),
        "target_label": np.zeros(candidates.size, dtype=np.float32),
        "target_hist_len": np.full(candidates.size, items.size, dtype=np.int64),
    }
    return UserSample("request", "test", history, targets)


def check_ctr_export(scorer: Scorer, model: torch.nn.Module, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for events in (50, 0):
        items = rng.integers(2, planted.CTR_VOCAB["item"], events)
        items[: min(events, 3)] = 1  # unknown raw ids below
        behaviors = rng.integers(2, planted.CTR_VOCAB["behavior"], events)
        ts = 1_700_000_000 + np.cumsum(rng.integers(1, 5_000, events)).astype(np.int64)
        candidates = np.array([5, 77, 1, planted.CTR_VOCAB["item"] - 1], dtype=np.int64)
        raw = [f"i{i}" if i > 1 else "unknown-item" for i in items]
        request_ts = int(ts[-1]) + 7 if events else 1_700_000_000
        request = CtrRequest(
            raw, [f"b{b}" for b in behaviors], ts.tolist(),
            [f"i{c}" if c > 1 else "new-item" for c in candidates], request_ts,
        )  # fmt: skip
        scores = scorer.score(request)
        assert scores.oov["history_items"] == min(events, 3) and scores.oov["candidates"] == 1
        batch = collate_ctr(
            [ctr_sample(items, behaviors, ts, candidates, request_ts)], max_history=planted.HISTORY
        )
        with torch.no_grad():
            eager = model(batch).logits.numpy()
        assert np.abs(scores.logits - eager).max() <= TOL, (events, scores.logits, eager)
        if "update" in scorer.extra_programs:
            check_incremental_state(scorer, request, eager, tmp_path)
        else:
            with pytest.raises(RequestError, match="keeps no incremental user state"):
                scorer.initial_state()


def check_incremental_state(
    scorer: Scorer, request: CtrRequest, eager: np.ndarray, tmp_path: Path
) -> None:
    """An incremental-state export: the request's events fed one by one through the exported
    `update` program, then `score_state`, score like the eager model on the whole history (the
    history fits the model's memory window); the state survives a save/load round trip."""
    state = scorer.initial_state()
    for item, behavior, ts in zip(
        request.history_items, request.history_behaviors, request.history_ts, strict=True
    ):
        state = scorer.update_state(state, item, behavior, ts)
    save_state(tmp_path / "state.npz", state)
    state = load_state(tmp_path / "state.npz")
    scores = scorer.score_state(state, request.candidates, request.request_ts)
    assert np.abs(scores.logits - eager).max() <= TOL, (scores.logits, eager)
    assert scores.oov["candidates"] == 1
    name = next(iter(state))
    with pytest.raises(RequestError, match=rf"state\[{name!r}\]: shape"):
        scorer.score_state({**state, name: state[name][..., :1]}, request.candidates, 0)


def check_sequential_export(scorer: Scorer, model: torch.nn.Module, case: ZooCase) -> None:
    sample = planted.rule_sample(77)
    items = sample.history["item"].copy()
    items[0] = 1
    sample.history["item"] = items
    raw = [f"i{i}" if i > 1 else "unknown-item" for i in items]
    ts = sample.history["ts"]
    request_ts = int(sample.targets["target_ts"][0])
    request = NextItemRequest(raw, ts.tolist(), request_ts, user_id=sample.user)
    user, _, oov = scorer.user_embedding(request)
    assert oov == 1
    batch = collate_generative([sample], planted.SEQ_MAX_LEN)
    with torch.no_grad():
        if case.masked:
            module = case.build()
            module.model = model  # the task's evaluation rows, through the loaded model
            eager = module.step(batch, train=False)[1][0]
        else:
            seq = batch.sequence
            step = SequenceStep(
                seq["item"], seq["ts"].values, batch.query_ts().values, seq["item"].values[:0],
                users=batch.user_ids,
            )  # fmt: skip
            eager = target_queries(model(step), batch)[0]
    assert (user - eager).abs().max().item() <= TOL
    top = scorer.recommend(NextItemRequest(raw, ts.tolist(), request_ts, k=10, user_id=sample.user))
    exclude = torch.from_numpy(np.unique(items[items > 1]))
    _, ids = top_k_items(
        eager.unsqueeze(0).double(), model.item_table().double(), 10,
        Jagged(exclude, torch.tensor([exclude.numel()])),
    )  # fmt: skip
    assert top.ids.tolist() == ids[0].tolist()


#: The `torch.export` programs, and (slow: one C++ compile per program, ~10 s each) the
#: AOTInductor packages `lifeseq export` compiles from them (`Scorer.load(compiled=True)`).
PROGRAMS = [
    pytest.param(False, id="exported"),
    pytest.param(
        True, id="compiled",
        marks=[pytest.mark.slow,
               pytest.mark.skipif(compiler_missing() is not None, reason="no C++ compiler")],
    ),
]  # fmt: skip


#: Configs whose AOTInductor packages are compiled in every run: an item cache (TWIN), a
#: recurrent and an attention sequential encoder (GRU4Rec, HSTU). Every config's `torch.export`
#: programs are checked in every run; the compile step of the others (the same programs through
#: the same compiler; MIMN's incremental state: 48 s in CI) with `pytest --compile-all`.
COMPILED_EVERY_RUN = ("config:ctr/twin", "config:sequential/gru4rec",
                      "config:sequential/hstu")  # fmt: skip


@pytest.mark.parametrize("compiled", PROGRAMS)
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_export_scores_like_the_eager_model(
    case: ZooCase, compiled: bool, builds: dict[str, Path], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    if compiled and case.name not in COMPILED_EVERY_RUN:
        if not request.config.getoption("--compile-all"):
            pytest.skip("compiled only with --compile-all (representatives: COMPILED_EVERY_RUN)")
    root = builds[case.family]
    ckpt = tmp_path / "model.ckpt"
    random_checkpoint(case, root, ckpt)
    manifest = export_checkpoint(ckpt, tmp_path / "export", str(root), compiled=compiled)
    assert manifest["model"]["family"] == case.family
    if compiled:
        assert set(manifest["compiled"]["programs"]) == set(manifest["dense"])
    scorer = Scorer.load(tmp_path / "export", compiled=compiled)
    model, _ = load_trained_model(ckpt, str(root))
    if case.family == "ctr":
        check_ctr_export(scorer, model, tmp_path)
    else:
        check_sequential_export(scorer, model, case)
