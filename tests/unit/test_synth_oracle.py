"""The synthetic oracle (`pipeline.synth_oracle`) against the generator it models: calibrated
on the generator's own events, its AUC equals a Monte-Carlo estimate from fresh draws, and it
ranks real positives above uniform catalog items."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from lifeseq.pipeline.synth import (
    SOURCE_LONG_TERM,
    SynthConfig,
    build_catalog,
    generate_user_events,
    user_state,
)
from lifeseq.pipeline.synth_oracle import (
    long_term_posterior,
    oracle_probabilities,
    positive_category_probs,
    positive_item_probs,
    sample_positive_items,
)

CFG = SynthConfig(
    users=150, seed=3, items=5000, categories=60, median_events=600, max_events=3000,
    long_term_interests=8, long_term_share=0.15,
)  # fmt: skip


def _positives(cfg: SynthConfig, user: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    events = generate_user_events(cfg, user, with_source=True)
    return events, np.flatnonzero(events["behavior"] > 0)


def _auc(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
    s, y = np.concatenate(scores), np.concatenate(labels)
    return float(binary_auroc(torch.from_numpy(s), torch.from_numpy(y).long()))


def test_user_state_is_what_the_events_were_drawn_from() -> None:
    for user in range(5):
        events = generate_user_events(CFG, user, with_source=True)
        state = user_state(CFG, user)
        assert state.session.shape == events["ts"].shape
        short = np.flatnonzero(events["source"] == 0)
        slots = state.short_term[state.session[short]]  # (n, S)
        assert bool((slots == (events["category_id"][short] - 1)[:, None]).any(axis=1).all())
        assert state.episodes.shape == state.truth.long_term_categories.shape


def test_category_probabilities_are_distributions() -> None:
    state = user_state(CFG, 0)
    positions = np.arange(0, state.truth.length, 7)
    probs = positive_category_probs(CFG, state, positions)
    assert probs.shape == (positions.size, CFG.categories)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
    assert bool((probs >= 0).all())


def test_long_term_posterior_is_calibrated_on_the_generators_positives() -> None:
    """Mean predicted P(episode | positive) equals the observed share of positives that the
    generator placed in long-term episodes."""
    predicted, observed = [], []
    for user in range(CFG.users):
        events, positive = _positives(CFG, user)
        predicted.append(long_term_posterior(CFG, user_state(CFG, user), positive))
        observed.append(events["source"][positive] == SOURCE_LONG_TERM)
    p, o = np.concatenate(predicted), np.concatenate(observed)
    assert o.size > 5000
    assert p.mean() == pytest.approx(o.mean(), abs=0.02)
    assert o.mean() > 0.2  # the lift makes episodes a large share of the positives


def test_oracle_auc_on_real_positives_matches_fresh_draws_of_its_model() -> None:
    """Real positives vs uniform catalog items, and fresh positives drawn from the oracle's own
    model vs uniform items: the two AUCs agree, so the oracle models the generator."""
    rng = np.random.default_rng(0)
    catalog = build_catalog(CFG)
    negative = np.full(1, 1.0 / CFG.items)
    real_s, real_y, fresh_s, fresh_y = [], [], [], []
    for user in range(CFG.users):
        events, positive = _positives(CFG, user)
        state = user_state(CFG, user)
        neg_items = catalog.item_ids[rng.integers(0, CFG.items, positive.size)]
        neg_p = np.broadcast_to(negative, positive.shape)
        for items, label, scores, labels in (
            (events["item_id"][positive], 1.0, real_s, real_y),
            (neg_items, 0.0, real_s, real_y),
            (sample_positive_items(CFG, state, positive, rng), 1.0, fresh_s, fresh_y),
            (neg_items, 0.0, fresh_s, fresh_y),
        ):
            scores.append(oracle_probabilities(CFG, state, positive, items, neg_p))
            labels.append(np.full(positive.size, label))
    real, fresh = _auc(real_s, real_y), _auc(fresh_s, fresh_y)
    assert real > 0.9
    assert real == pytest.approx(fresh, abs=0.005)


def _log_likelihoods(seed: int, ignore_long_term: bool = False) -> tuple[float, float]:
    """Mean log-probability, under the oracle's model, of the generator's real positive items
    and of fresh positives drawn from the model at the same positions; `ignore_long_term`
    models a user without return episodes (a wrong model)."""
    rng = np.random.default_rng(seed)
    model = CFG
    real, fresh = [], []
    for user in range(CFG.users):
        events, positive = _positives(CFG, user)
        state = user_state(CFG, user)
        if ignore_long_term:
            state = dataclasses.replace(state, episodes=np.zeros_like(state.episodes))
        drawn = sample_positive_items(model, state, positive, rng)
        real.append(
            np.log(positive_item_probs(model, state, positive, events["item_id"][positive]))
        )
        fresh.append(np.log(positive_item_probs(model, state, positive, drawn)))
    return float(np.concatenate(real).mean()), float(np.concatenate(fresh).mean())


def test_the_oracles_likelihood_of_real_positives_matches_its_own_draws() -> None:
    """A sharper check than AUC (which item popularity dominates): under the right model the
    real positives are as likely as the model's own draws; a model that ignores the long-term
    interests finds the real positives far less likely than its draws."""
    real, fresh = _log_likelihoods(seed=1)
    assert real == pytest.approx(fresh, abs=0.03)
    real_wrong, fresh_wrong = _log_likelihoods(seed=1, ignore_long_term=True)
    assert fresh_wrong - real_wrong > 0.3
