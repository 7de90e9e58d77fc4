"""The CTR ceiling of `lifeseq synth` data: the generator's own probability that a target is a
real positive rather than a sampled negative.

A CTR target of a build (`configs/pipeline/*.yaml`, `negatives: sampled`) is either a positive
event (click, cart or buy) at position t of a user's history, or an item drawn uniformly from
the item vocabulary (minus the user's items) with the same request time. The generator
(`pipeline.synth`) chose the positive event's category from a mixture it knows exactly, given
the user's hidden state at t (`pipeline.synth.UserState`):

* a long-term return episode of an interest active in t's phase — its category; the chance
  that t lies in one is the coverage of the interest's drawn episodes over its active phases
  (``1 - exp(-density)``), raised by ``long_term_lift`` because the event is positive;
* otherwise noise (``noise_prob``): a category by popularity; else one of the session's
  short-term slots, uniformly;

then the item by Zipf within the category. With ``p_pos(x)`` that probability of item x and
``p_neg(x)`` the negative sampler's (uniform or by popularity over the items the user never
saw), the oracle's score is the posterior
``p_pos / (p_pos + p_neg)`` under the build's one-negative-per-positive prior. It uses the
hidden state, not the target's own coins (whether t lies in an episode, the noise draw), so it
is the Bayes-optimal score given the state and an upper bound for any model of the observed
history. `sample_positive_items` draws fresh positives from the same model: the AUC of the
oracle on such draws must match its AUC on the build's real targets (tested), which checks the
model against the generator.

    probs = oracle_probabilities(cfg, user_state(cfg, i), positions, raw_items, negative_probs)
"""

from __future__ import annotations

import functools

import numpy as np

from lifeseq.pipeline.synth import Catalog, SynthConfig, UserState, build_catalog


@functools.lru_cache(maxsize=4)
def _item_pmf(catalog: Catalog) -> np.ndarray:
    """(I + 1,) float64 probability of each item id within its category (entry 0 unused)."""
    within = np.diff(catalog.item_cdf, prepend=0.0)  # item_cdf = category index + CDF
    pmf = np.zeros(catalog.item_ids.shape[0] + 1, dtype=np.float64)
    pmf[catalog.item_ids] = within
    return pmf


def phase_of(cfg: SynthConfig, length: int, positions: np.ndarray) -> np.ndarray:
    """(m,) int64 phase of each event position (phase p covers [p*L/P, (p+1)*L/P))."""
    return np.minimum(positions * cfg.phases // length, cfg.phases - 1)


def long_term_density(cfg: SynthConfig, state: UserState, positions: np.ndarray) -> np.ndarray:
    """(m, K) expected number of interest k's episode events covering position t.

    Interest k's drawn episodes (mean ``episode_events`` events each) are spread uniformly over
    its active phases, so the density is zero in its dormant phases.
    """
    truth = state.truth
    active = truth.long_term_active  # (P, K)
    active_count = active.sum(axis=0)  # (K,)
    phase_events = truth.length / cfg.phases
    per_position = state.episodes * cfg.episode_events / (active_count * phase_events)  # (K,)
    return active[phase_of(cfg, truth.length, positions)] * per_position  # (m, K)


def long_term_posterior(cfg: SynthConfig, state: UserState, positions: np.ndarray) -> np.ndarray:
    """(m,) probability that a positive event at each position lies in a long-term episode."""
    covered = 1.0 - np.exp(-long_term_density(cfg, state, positions).sum(axis=1))
    weight = covered * cfg.long_term_lift
    return weight / (weight + (1.0 - covered))


def positive_category_probs(
    cfg: SynthConfig, state: UserState, positions: np.ndarray
) -> np.ndarray:
    """(m, C) probability of each category index for a positive event at each position.

    Args:
        cfg: the generator's config.
        state: the user's hidden state.
        positions: (m,) int64 event positions in the user's generated order.
    """
    catalog = build_catalog(cfg)
    density = long_term_density(cfg, state, positions)  # (m, K)
    total = density.sum(axis=1)  # (m,)
    weight_long = long_term_posterior(cfg, state, positions)  # (m,)
    m, c = positions.shape[0], catalog.num_categories
    long_cats = np.zeros((m, c))
    interests = state.truth.long_term_categories - 1  # (K,) category indices
    share = np.divide(density, total[:, None], out=np.zeros_like(density), where=total[:, None] > 0)
    np.add.at(long_cats, (np.arange(m)[:, None], interests[None, :]), share)
    slots = state.short_term[state.session[positions]]  # (m, S)
    short = np.zeros((m, c))
    np.add.at(short, (np.arange(m)[:, None], slots), 1.0 / slots.shape[1])
    other = cfg.noise_prob * catalog.category_weights[None, :] + (1.0 - cfg.noise_prob) * short
    return weight_long[:, None] * long_cats + (1.0 - weight_long)[:, None] * other  # (m, C)


def positive_item_probs(
    cfg: SynthConfig, state: UserState, positions: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """(m,) probability that the positive event at ``positions[j]`` is item ``items[j]``.

    Args:
        cfg: the generator's config.
        state: the user's hidden state.
        positions: (m,) int64 event positions.
        items: (m,) int64 raw item ids (1..items).
    """
    catalog = build_catalog(cfg)
    categories = positive_category_probs(cfg, state, positions)  # (m, C)
    category_index = catalog.category_of(items) - 1
    return categories[np.arange(items.shape[0]), category_index] * _item_pmf(catalog)[items]


def oracle_probabilities(
    cfg: SynthConfig,
    state: UserState,
    positions: np.ndarray,
    items: np.ndarray,
    negative_probs: np.ndarray,
) -> np.ndarray:
    """(m,) the generator's probability that each target is the real positive.

    Args:
        cfg: the generator's config.
        state: the user's hidden state.
        positions: (m,) int64 positions of the targets' request times in the user's events.
        items: (m,) int64 raw item ids of the targets.
        negative_probs: (m,) probability that the build's negative sampler draws each item
            for this user (uniform or by popularity, over the items the user never saw).
    """
    p_pos = positive_item_probs(cfg, state, positions, items)
    return p_pos / (p_pos + negative_probs)


def sample_positive_items(
    cfg: SynthConfig, state: UserState, positions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(m,) fresh raw item ids of positive events at ``positions``, from the oracle's model.

    Used for the Monte-Carlo check: the oracle's AUC on these draws estimates its AUC on real
    targets when the model matches the generator.
    """
    catalog = build_catalog(cfg)
    probs = positive_category_probs(cfg, state, positions)  # (m, C)
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(positions.shape[0]) * cdf[:, -1]
    category = np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)
    return catalog.sample_items(rng, category.astype(np.int64))
