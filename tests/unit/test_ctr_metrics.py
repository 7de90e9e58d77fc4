"""Tests of the CTR evaluation metrics (`trainers.metrics`): GAUC and log loss.

Values are hand-computed (worked out in the comments) or checked against a brute-force
pairwise-count reference written here: for each group, AUC = (#positive-above-negative pairs
+ 0.5 * #tied pairs) / (#positives * #negatives).
"""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from lifeseq.trainers.metrics import GroupedAUC, LogLoss, per_group_auc

pytestmark = pytest.mark.unit


def tensors(
    preds: list[float], target: list[int], groups: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T,) float32 preds, int64 target and int64 groups from lists."""
    return (
        torch.tensor(preds, dtype=torch.float32),
        torch.tensor(target, dtype=torch.int64),
        torch.tensor(groups, dtype=torch.int64),
    )


def empty_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padding batch: T = 0."""
    return tensors([], [], [])


def reference_gauc(
    preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor
) -> dict[str, float]:
    """Brute-force GAUC: loop over groups and over every positive/negative pair."""
    weighted, weight, counted, skipped = 0.0, 0, 0, 0
    for g in torch.unique(groups).tolist():
        mask = groups == g
        p, y = preds[mask].tolist(), target[mask].tolist()
        pos = [s for s, label in zip(p, y, strict=True) if label == 1]
        neg = [s for s, label in zip(p, y, strict=True) if label == 0]
        if not pos or not neg:
            skipped += 1
            continue
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
        weighted += len(p) * wins / (len(pos) * len(neg))
        weight += len(p)
        counted += 1
    gauc = weighted / weight if weight else math.nan
    return {"gauc": gauc, "groups": counted, "skipped_groups": skipped, "weight": weight}


def random_users(num_users: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Users with 1..12 targets each, random click rates and preds rounded to 0.1 (many ties).

    Returns (T,) preds, target and groups, rows of a user contiguous, user ids shuffled.
    """
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 13, (num_users,), generator=gen)  # (U,)
    user_ids = torch.randperm(10 * num_users, generator=gen)[:num_users] + 1000  # (U,)
    groups = torch.repeat_interleave(user_ids, sizes)  # (T,)
    rate = torch.rand(num_users, generator=gen).repeat_interleave(sizes)  # (T,)
    target = (torch.rand(groups.numel(), generator=gen) < rate).long()  # (T,)
    preds = torch.round(torch.rand(groups.numel(), generator=gen) * 10) / 10  # (T,)
    return preds, target, groups


def assert_details(metric: GroupedAUC, expected: dict[str, float]) -> None:
    """`metric.compute_details()` equals `expected` (GAUC to float32 precision)."""
    got = metric.compute_details()
    assert got["gauc"].item() == pytest.approx(expected["gauc"], abs=1e-6, nan_ok=True)
    assert got["groups"].item() == expected["groups"]
    assert got["skipped_groups"].item() == expected["skipped_groups"]
    assert got["weight"].item() == expected["weight"]


# User A (id 7): preds [0.9, 0.2, 0.6], labels [1, 0, 0]: the positive beats both negatives
#   -> AUC 2/2 = 1.0, weight 3.
# User B (id 3): preds [0.3, 0.8], labels [1, 0]: the positive loses its only pair
#   -> AUC 0/1 = 0.0, weight 2.
# User C (id 5): labels [1, 1], all positive -> skipped.
# GAUC = (3 * 1.0 + 2 * 0.0) / (3 + 2) = 0.6. Rows are interleaved on purpose.
HAND_PREDS = [0.9, 0.3, 0.5, 0.2, 0.8, 0.6, 0.4]
HAND_TARGET = [1, 1, 1, 0, 0, 0, 1]
HAND_GROUPS = [7, 3, 5, 7, 3, 7, 5]
HAND_EXPECTED = {"gauc": 0.6, "groups": 2, "skipped_groups": 1, "weight": 5}


def test_gauc_hand_computed_two_users_one_skipped() -> None:
    metric = GroupedAUC()
    metric.update(*tensors(HAND_PREDS, HAND_TARGET, HAND_GROUPS))
    assert metric.compute().item() == pytest.approx(0.6, abs=1e-7)
    assert metric.compute().dtype == torch.float32
    assert_details(metric, HAND_EXPECTED)


def test_gauc_same_for_logits_and_probabilities() -> None:
    probs, target, groups = tensors(HAND_PREDS, HAND_TARGET, HAND_GROUPS)
    metric = GroupedAUC()
    metric.update(torch.logit(probs), target, groups)  # sigmoid is monotone: same ranks
    assert_details(metric, HAND_EXPECTED)


def test_per_group_auc_values_in_group_id_order() -> None:
    # Group 3 (B): 0.0; group 5 (C): single class -> NaN; group 7 (A): 1.0.
    # Group 9: preds [0.1, 0.4, 0.35, 0.8], labels [0, 0, 1, 1]: 0.35 beats 0.1, loses to 0.4;
    #   0.8 beats both -> 3/4.
    preds, target, groups = tensors(
        HAND_PREDS + [0.1, 0.4, 0.35, 0.8], HAND_TARGET + [0, 0, 1, 1], HAND_GROUPS + [9] * 4
    )
    auc, n = per_group_auc(preds, target, groups)
    assert n.tolist() == [2, 2, 3, 4]
    assert auc[0].item() == 0.0
    assert math.isnan(auc[1].item())
    assert auc[2].item() == 1.0
    assert auc[3].item() == 0.75


def test_gauc_tied_pair_counts_half() -> None:
    # One positive and one negative with the same score: the pair counts 0.5.
    metric = GroupedAUC()
    metric.update(*tensors([0.5, 0.5], [1, 0], [1, 1]))
    assert metric.compute().item() == 0.5


def test_gauc_tie_runs_get_average_ranks() -> None:
    # Preds [0.3, 0.3, 0.3, 0.7], labels [1, 0, 0, 1]: positive 0.3 ties both negatives
    # (0.5 + 0.5), positive 0.7 beats both (1 + 1) -> 3 / (2 * 2) = 0.75. Ranks: the 0.3 run
    # holds ranks 1..3 -> average 2; positives' rank sum 2 + 4 = 6; U = 6 - 2*3/2 = 3.
    # A second user with the same scores but no tie across labels must not share the run.
    metric = GroupedAUC()
    metric.update(*tensors([0.3, 0.3, 0.3, 0.7, 0.3, 0.7], [1, 0, 0, 1, 0, 1], [4] * 4 + [2] * 2))
    # User 2: negative 0.3, positive 0.7 -> 1.0 with weight 2. GAUC = (4*0.75 + 2*1) / 6 = 5/6.
    assert_details(metric, {"gauc": 5 / 6, "groups": 2, "skipped_groups": 0, "weight": 6})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_brute_force_pairwise_reference(seed: int) -> None:
    preds, target, groups = random_users(num_users=400, seed=seed)
    expected = reference_gauc(preds, target, groups)
    assert expected["skipped_groups"] > 0 and expected["groups"] > 100  # both paths exercised
    metric = GroupedAUC()
    metric.update(preds, target, groups)
    assert_details(metric, expected)


def test_gauc_invariant_to_row_order_within_a_batch() -> None:
    preds, target, groups = random_users(num_users=200, seed=3)
    perm = torch.randperm(preds.numel(), generator=torch.Generator().manual_seed(0))
    whole, shuffled = GroupedAUC(), GroupedAUC()
    whole.update(preds, target, groups)
    shuffled.update(preds[perm], target[perm], groups[perm])
    assert_details(shuffled, reference_gauc(preds, target, groups))
    assert shuffled.compute().item() == pytest.approx(whole.compute().item(), abs=1e-6)


def test_gauc_two_updates_in_different_group_orders_give_same_result() -> None:
    preds, target, groups = random_users(num_users=300, seed=4)
    expected = reference_gauc(preds, target, groups)
    users = torch.unique(groups)
    for order_seed in (0, 1):
        order = users[
            torch.randperm(users.numel(), generator=torch.Generator().manual_seed(order_seed))
        ]
        first, second = order[: users.numel() // 3], order[users.numel() // 3 :]
        metric = GroupedAUC()
        for part in (second, first) if order_seed else (first, second):
            mask = torch.isin(groups, part)  # whole users only
            metric.update(preds[mask], target[mask], groups[mask])
        assert_details(metric, expected)


def test_gauc_padding_update_changes_nothing() -> None:
    metric = GroupedAUC()
    metric.update(*empty_batch())  # a padding batch first: states stay zero
    assert metric.compute_details()["weight"].item() == 0
    assert math.isnan(metric.compute().item())
    metric.update(*tensors(HAND_PREDS, HAND_TARGET, HAND_GROUPS))
    metric.update(*empty_batch())
    assert_details(metric, HAND_EXPECTED)


def test_gauc_nan_when_every_group_single_class() -> None:
    metric = GroupedAUC()
    # User 1 all positive, user 2 all negative, user 3 a single target.
    metric.update(*tensors([0.1, 0.9, 0.4, 0.6, 0.5], [1, 1, 0, 0, 1], [1, 1, 2, 2, 3]))
    assert math.isnan(metric.compute().item())
    assert_details(metric, {"gauc": math.nan, "groups": 0, "skipped_groups": 3, "weight": 0})


def test_gauc_forward_returns_batch_value_and_accumulates() -> None:
    metric = GroupedAUC()
    # Batch 1: users A, B, C of the hand case -> 0.6. Batch 2: one user, AUC 1, weight 2.
    batch_value = metric(*tensors(HAND_PREDS, HAND_TARGET, HAND_GROUPS))
    assert batch_value.item() == pytest.approx(0.6, abs=1e-7)
    assert metric(*tensors([0.1, 0.9], [0, 1], [42, 42])).item() == 1.0
    # Total: (3*1 + 2*0 + 2*1) / 7 = 5/7.
    assert_details(metric, {"gauc": 5 / 7, "groups": 3, "skipped_groups": 1, "weight": 7})


def test_gauc_two_ranks_merged_equal_one_instance() -> None:
    preds, target, groups = random_users(num_users=300, seed=5)
    users = torch.unique(groups)
    rank_mask = torch.isin(groups, users[::2])  # rank 0 gets every other user, rank 1 the rest
    rank0, rank1, single, manual = GroupedAUC(), GroupedAUC(), GroupedAUC(), GroupedAUC()
    rank0.update(preds[rank_mask], target[rank_mask], groups[rank_mask])
    rank1.update(preds[~rank_mask], target[~rank_mask], groups[~rank_mask])
    single.update(preds, target, groups)
    # What a DDP sum all-reduce does to the states, by hand.
    for name in ("sum_weighted_auc", "sum_weight", "groups", "skipped"):
        setattr(manual, name, getattr(rank0, name) + getattr(rank1, name))
    rank0.merge_state(rank1)
    expected = reference_gauc(preds, target, groups)
    for metric in (rank0, manual, single):
        assert_details(metric, expected)
    assert rank0.compute().item() == pytest.approx(single.compute().item(), abs=1e-7)


@pytest.mark.parametrize(
    ("preds", "target", "groups", "match"),
    [
        ([0.1, 0.2], [1, 0], [1], "same length"),
        ([0.1, 0.2], [1, 2], [1, 1], "0/1"),
        ([0.1, math.nan], [1, 0], [1, 1], "NaN"),
    ],
)
def test_gauc_rejects_bad_input(
    preds: list[float], target: list[int], groups: list[int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        GroupedAUC().update(*tensors(preds, target, groups))


def test_gauc_rejects_bad_shapes_and_dtypes() -> None:
    preds, target, groups = tensors([0.1, 0.9], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="preds must be 1-D"):
        GroupedAUC().update(preds[None], target, groups)
    with pytest.raises(ValueError, match="groups must hold integer"):
        GroupedAUC().update(preds, target, groups.float())
    with pytest.raises(ValueError, match="preds must be floating point"):
        GroupedAUC().update(target, target, groups)


def test_global_auc_binary_auroc_hand_computed() -> None:
    # Positives [0.9, 0.6, 0.3], negatives [0.7, 0.2]; count positive-above-negative pairs:
    # 0.9 beats both (2), 0.6 beats 0.2 (1), 0.3 beats 0.2 (1) -> 4 of 3*2 = 6 pairs = 2/3.
    preds = torch.tensor([0.9, 0.7, 0.6, 0.3, 0.2])
    target = torch.tensor([1, 0, 1, 1, 0])
    auroc = BinaryAUROC()
    auroc.update(preds, target)
    assert auroc.compute().item() == pytest.approx(2 / 3, abs=1e-6)
    # One group holding everything: GAUC is the global AUC.
    gauc = GroupedAUC()
    gauc.update(preds, target, torch.zeros(5, dtype=torch.int64))
    assert gauc.compute().item() == pytest.approx(2 / 3, abs=1e-7)


def test_logloss_hand_computed() -> None:
    # logit 0, label 1: -ln(sigmoid(0)) = ln 2. logit ln 3, label 0: sigmoid = 3/4,
    # -ln(1 - 3/4) = ln 4. Mean = (ln 2 + ln 4) / 2 = 1.5 ln 2.
    metric = LogLoss()
    metric.update(torch.tensor([0.0, math.log(3.0)]), torch.tensor([1, 0]))
    assert metric.compute().item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_logloss_extreme_logits_stay_finite() -> None:
    # Right and confident: loss ln(1 + e^-100) ~ 4e-44; wrong and confident: ~100.
    # Mean of [~0, ~0, 100, 100] = 50.
    metric = LogLoss()
    metric.update(torch.tensor([100.0, -100.0, 100.0, -100.0]), torch.tensor([1, 0, 0, 1]))
    value = metric.compute()
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(50.0, rel=1e-7)


def test_logloss_accumulates_padding_and_merges_like_one_instance() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(100, generator=gen) * 3  # (T,)
    target = torch.randint(0, 2, (100,), generator=gen)  # (T,)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double(), target.double()
    ).item()
    rank0, rank1 = LogLoss(), LogLoss()
    rank0.update(logits[:30], target[:30])
    rank0.update(logits[:0], target[:0])  # padding batch
    rank1.update(logits[30:], target[30:])
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(expected, rel=1e-6)
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' warning
        assert math.isnan(LogLoss().compute().item())  # no target seen: 0 / 0


def test_logloss_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="0/1"):
        LogLoss().update(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 1.0]))
