"""Conformance, structure: every zoo class (found by `models.zoo.discover`, default config)
passes the checks its kind calls for. A new model gets them by existing.

Sequence encoders (inside `SequentialRecommender`, next-item or masked-item task):
* causality — a causal encoder's earlier positions never change when later items do; a
  bidirectional one's do (its `causal` flag tells the truth);
* a jagged batch equals each row run alone; rows do not change when the batch gains a longer
  row (other padding and length buckets);

CTR models (a `CtrModel`, or `LifelongCtr` around a `LongTermUnit`):
* a target's logit never changes when events at or after its window's end change;
* a jagged batch equals each user run alone;

Both:
* a padding batch (no users) gives a finite zero loss and a gradient for every parameter (DDP
  needs every parameter in every step); a real batch's gradients reach every parameter and
  the embedding tables;
* a DCP checkpoint round trip (`trainers.checkpoint`) reproduces the outputs exactly;
* a bf16 autocast forward (the precision of `bench ctr --device cuda` and of bf16-mixed
  training), here on the CPU, runs and stays close to the float32 outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeseq.features.batch import CtrBatch, GenerativeBatch, collate_ctr, collate_generative
from lifeseq.features.jagged import Jagged
from lifeseq.models.sequential import SequenceStep
from lifeseq.pipeline.sample_codec import UserSample
from lifeseq.trainers.checkpoint import load_tensors, save_checkpoint
from lifeseq.trainers.platform_module import PlatformModule
from tests.conformance import planted
from tests.conformance.cases import ZooCase, class_cases

pytestmark = pytest.mark.unit

CASES = class_cases()
SEQUENTIAL = [c for c in CASES if c.family == "sequential"]
CTR = [c for c in CASES if c.family == "ctr"]
TOL = 1e-5


def _ids(cases: list[ZooCase]) -> list[str]:
    return [c.name for c in cases]


# --- helpers ----------------------------------------------------------------------------------


def rule_rows(users: list[int]) -> GenerativeBatch:
    """`planted.rule_sample` users as one batch."""
    return collate_generative([planted.rule_sample(u) for u in users], planted.SEQ_MAX_LEN)


def encode(module: PlatformModule, batch: GenerativeBatch) -> torch.Tensor:
    """(N, d) encoder outputs of `batch`'s rows."""
    items = batch.sequence["item"]
    step = SequenceStep(
        items, batch.sequence["ts"].values, batch.query_ts().values, items.values.new_zeros(0),
        users=batch.user_ids,
    )  # fmt: skip
    return module(step).user


def ctr_users(users: list[int]) -> list[UserSample]:
    return [planted.prefix_sample(u) for u in users]


def logits(module: PlatformModule, samples: list[UserSample]) -> torch.Tensor:
    return module(collate_ctr(samples, max_history=planted.HISTORY)).logits


def outputs(module: PlatformModule, case: ZooCase) -> torch.Tensor:
    """The model's outputs on a fixed batch of its family."""
    if case.family == "ctr":
        return logits(module, ctr_users([1, 2, 3]))
    return encode(module, rule_rows([1, 2, 3]))


def real_batch(case: ZooCase) -> CtrBatch | GenerativeBatch:
    if case.family == "ctr":
        return collate_ctr(ctr_users([4, 5, 6]), max_history=planted.HISTORY)
    return rule_rows([4, 5, 6, 7])


def empty_batch(case: ZooCase) -> CtrBatch | GenerativeBatch:
    return CtrBatch.empty() if case.family == "ctr" else GenerativeBatch.empty()


# --- sequence encoders ------------------------------------------------------------------------


@pytest.mark.parametrize("case", SEQUENTIAL, ids=_ids(SEQUENTIAL))
def test_encoder_causality_matches_its_flag(case: ZooCase) -> None:
    module = case.build().eval()
    batch = rule_rows([10, 11])
    length = int(batch.sequence["item"].lengths[0])
    cut = length // 2
    changed = batch.sequence["item"].values.clone()
    changed[cut + 1 : length] = (changed[cut + 1 : length] + 7) % (planted.ITEMS - 2) + 2
    items = Jagged(changed, batch.sequence["item"].lengths)
    altered = dataclasses.replace(batch, sequence={**batch.sequence, "item": items})
    with torch.no_grad():
        before, after = encode(module, batch), encode(module, altered)
    assert torch.equal(before[length:], after[length:]), "another row changed"
    early = (before[: cut + 1] - after[: cut + 1]).abs().max().item()
    if module.sequential.causal:
        assert early <= 1e-6, f"a later item changed an earlier position by {early}"
    else:
        assert early > 1e-6, "a bidirectional encoder ignored later items"


@pytest.mark.parametrize("case", SEQUENTIAL, ids=_ids(SEQUENTIAL))
def test_a_jagged_batch_equals_each_row_alone(case: ZooCase) -> None:
    module = case.build().eval()
    users = [20, 21, 22, 23, 24]
    with torch.no_grad():
        together = encode(module, rule_rows(users))
        alone = torch.cat([encode(module, rule_rows([u])) for u in users])
    assert together.shape == alone.shape
    assert (together - alone).abs().max().item() <= TOL


@pytest.mark.parametrize("case", SEQUENTIAL, ids=_ids(SEQUENTIAL))
def test_rows_do_not_change_with_other_rows_padding(case: ZooCase) -> None:
    module = case.build().eval()
    short = [30, 31, 32]
    long_row = planted.rule_sample(33)
    long_row.history.update(
        {k: np.resize(v, planted.SEQ_MAX_LEN) for k, v in long_row.history.items()}
    )
    long_row.history["ts"] = 1_700_000_000 + 3_600 * np.arange(planted.SEQ_MAX_LEN, dtype=np.int64)
    long_row.targets["target_hist_len"][:] = planted.SEQ_MAX_LEN
    long_row.targets["target_ts"][:] = long_row.history["ts"][-1] + 3_600
    with torch.no_grad():
        plain = encode(module, rule_rows(short))
        padded = encode(
            module,
            collate_generative([long_row, *map(planted.rule_sample, short)], planted.SEQ_MAX_LEN),
        )
    assert (padded[planted.SEQ_MAX_LEN :] - plain).abs().max().item() <= TOL


# --- CTR models -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CTR, ids=_ids(CTR))
def test_a_target_never_reads_events_at_or_after_its_window_end(case: ZooCase) -> None:
    module = case.build().eval()
    samples = ctr_users([40, 41])
    cut = int(samples[0].targets["target_hist_len"][1])
    changed = UserSample(
        samples[0].user, "train", {k: v.copy() for k, v in samples[0].history.items()},
        samples[0].targets,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for key in ("item", "category", "behavior"):
        changed.history[key][cut:] = rng.integers(2, planted.CTR_VOCAB[key], 60 - cut)
    with torch.no_grad():
        before, after = logits(module, samples), logits(module, [changed, samples[1]])
    seen = samples[0].targets["target_hist_len"] <= cut
    assert torch.equal(before[:4][torch.from_numpy(seen)], after[:4][torch.from_numpy(seen)])
    assert torch.equal(before[4:], after[4:])


@pytest.mark.parametrize("case", CTR, ids=_ids(CTR))
def test_a_jagged_batch_equals_each_user_alone(case: ZooCase) -> None:
    module = case.build().eval()
    samples = ctr_users([50, 51, 52, 53])
    with torch.no_grad():
        together = logits(module, samples)
        alone = torch.cat([logits(module, [s]) for s in samples])
    assert (together - alone).abs().max().item() <= TOL


# --- every model ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_a_padding_batch_gives_zero_loss_and_a_gradient_for_every_parameter(case: ZooCase) -> None:
    module = case.build().train()
    loss = module.training_loss(empty_batch(case))
    assert torch.isfinite(loss) and float(loss) == 0.0
    loss.backward()
    missing = [n for n, p in module.core.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient on a padding batch (DDP would hang): {missing}"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_gradients_reach_every_parameter_and_the_tables(case: ZooCase) -> None:
    module = case.build().train()
    module.training_loss(real_batch(case)).backward()
    params = dict(module.core.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    bad = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    tables = {n: p for n, p in params.items() if n.startswith("embeddings.")}
    assert tables and all(float(p.grad.abs().sum()) > 0 for p in tables.values()), [
        n for n, p in tables.items() if float(p.grad.abs().sum()) == 0
    ]
    assert any(float(p.grad.abs().sum()) > 0 for n, p in params.items() if n.startswith("dense."))


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_a_checkpoint_round_trip_reproduces_the_outputs(case: ZooCase, tmp_path: Path) -> None:
    saved = case.build(seed=0).eval()
    other = case.build(seed=1).eval()
    with torch.no_grad():
        expected = outputs(saved, case)
        assert not torch.equal(outputs(other, case), expected), "seeds give the same model"
    path = tmp_path / "model.ckpt"
    save_checkpoint({"state_dict": dict(saved.core.state_dict())}, path)
    load_tensors(path, {f"/state_dict/{k}": v for k, v in other.core.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(outputs(other, case), expected)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_a_bf16_autocast_forward_stays_close_to_float32(case: ZooCase) -> None:
    module = case.build().eval()
    with torch.no_grad():
        expected = outputs(module, case)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = outputs(module, case).float()
    assert torch.isfinite(low).all()
    assert torch.allclose(low, expected, rtol=0.05, atol=0.05), (low - expected).abs().max()
