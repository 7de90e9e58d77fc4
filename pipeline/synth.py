"""Synthetic lifelong user-behavior events with planted long-term structure.

Generates Parquet files in the event schema (DESIGN.md) that are realistic enough for lifelong
modeling to matter:

* a catalog of ``items`` items in ``categories`` categories; category popularity and size are
  Zipf-skewed, and item popularity is Zipf within each category;
* every user has a few *long-term* interest categories (niche ones, drawn uniformly; heavy
  users have more) that come back in short *return episodes* spread over the user's life, and
  that are dormant during some *phases* of it, so a target's category often last appeared
  hundreds or thousands of events earlier;
* between returns the user browses *short-term* interests that drift from session to session,
  plus random *noise* categories (both by category popularity);
* a behavior funnel view → click → cart → buy whose positive rate (click/cart/buy) is
  ``long_term_lift`` times higher in long-term episodes than elsewhere: the planted signal a
  model can only exploit if it sees the long history;
* timestamps over ``span_days`` days ending at ``end_ts``, in sessions, with ties;
* heavy-tailed history lengths (lognormal, median ``median_events``).

Generation is deterministic per seed and independent of chunking: the catalog comes from
``SeedSequence(seed, spawn_key=(0,))`` and user ``i`` (user id ``i + 1``) from
``SeedSequence(seed, spawn_key=(1, i))``, the same streams ``SeedSequence(seed).spawn`` hands out.

Run:

    lifeseq synth --out data/events --users 10000 --seed 7
    lifeseq synth --out data/events-10m --events 10000000 --seed 7 --overwrite
    python -m lifeseq.jobs.synth --help

Library:

    cfg = SynthConfig(users=100, seed=7)
    events = generate_user_events(cfg, 0)     # dict of numpy arrays, one user
    summary = write_synthetic(cfg, "data/events")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

BEHAVIORS: tuple[str, ...] = ("view", "click", "cart", "buy")
"""Behavior names; ``generate_user_events`` returns indices into this tuple."""

SOURCE_SHORT_TERM = 0
SOURCE_NOISE = 1
SOURCE_LONG_TERM = 2
SOURCES: tuple[str, ...] = ("short_term", "noise", "long_term")
"""Why an event's category was chosen (ground truth, see ``generate_user_events``)."""

MAX_EVENTS_LIMIT = 1_000_000
"""Largest allowed ``SynthConfig.max_events``."""

FILE_PATTERN = "events-{:05d}.parquet"
# The leading underscore makes Spark, Hadoop and pyarrow.dataset skip it when they read OUT as a
# Parquet directory (like _SUCCESS).
SUMMARY_FILE = "_synth.json"
_FILE_RE = re.compile(r"^events-\d{5}\.parquet$")

# Median dwell seconds (`value`) per behavior; the lognormal sigma is _DWELL_SIGMA.
_DWELL_MEDIAN = np.array([8.0, 25.0, 40.0, 60.0])
_DWELL_SIGMA = 0.8
_NUMBER = (int, float, np.integer, np.floating)
_CATALOG_KEY = 0
_USER_KEY = 1

_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("category_id", pa.int64()),
        ("behavior", pa.string()),
        ("ts", pa.int64()),
        ("value", pa.float32()),
    ]
)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic event generator.

    Exactly one of ``users`` and ``events`` must be set.

    Attributes:
        seed: Random seed (>= 0); the same seed and parameters give identical files.
        users: Number of users to generate (user ids 1..users). Exclusive with ``events``.
        events: Total number of events to generate: users are generated in order until the
            total reaches exactly this number (the last user's history is cut short).
            Exclusive with ``users``.
        items: Catalog size; item ids are 1..items and each item belongs to one category.
        categories: Number of categories (ids 1..categories); must be <= items.
        category_zipf: Zipf exponent of category popularity; category sizes (items per
            category) follow the same skew, so popular categories are also the big ones.
        item_zipf: Zipf exponent of item popularity within a category.
        median_events: Median events per user (lognormal history length).
        length_sigma: Sigma of the lognormal history length; the default ln(20)/2.326 puts
            the 99th percentile at 20x the median.
        min_events: Smallest history length (lengths are clipped to [min_events, max_events]).
        max_events: Largest history length, at most 1,000,000.
        end_ts: End of the time range, epoch seconds UTC (exclusive); default 2025-01-01.
        span_days: Length of the time range in days; all events lie in
            [end_ts - span_days * 86400, end_ts).
        min_active_fraction: A user is active during the last f * span_days days before
            end_ts, with f uniform in [min_active_fraction, 1].
        session_events: Mean events per session (geometric session lengths).
        gap_median_seconds: Median gap between consecutive events of a session (lognormal,
            whole seconds).
        gap_sigma: Sigma of the lognormal intra-session gap.
        tie_prob: Probability that an event has exactly the timestamp of the previous event
            of its session (gap 0), as real logs have ties.
        long_term_interests: Mean number of long-term interest categories of a user with
            ``median_events`` events (1 + Poisson, at least 1); heavy users have more, see
            ``long_term_growth``.
        long_term_growth: The mean number of long-term interests scales as
            (length / median_events) ** long_term_growth; with 1.0 a user's returns to one
            interest are spaced proportionally to the length of the history.
        long_term_max: Cap on the number of long-term interest categories of a user.
        long_term_share: Expected fraction of a user's events that belong to long-term return
            episodes.
        phases: The user's life is split into this many phases of equal length.
        phase_active_prob: Probability that a long-term interest is active in a phase; each
            phase has at least one active interest and each interest at least one active
            phase. Dormant phases make a user return to an old interest after a long gap.
        episode_events: Mean events per return episode (geometric).
        short_term_interests: Number of concurrent short-term interests (categories) in a
            session.
        drift_prob: Probability that a short-term interest switches to a new category at the
            start of a session.
        noise_prob: Probability that an event's category is a random popular category.
        click_rate: Overall fraction of click events.
        cart_rate: Overall fraction of cart events.
        buy_rate: Overall fraction of buy events; views are the rest.
        long_term_lift: How many times more likely a positive behavior (click, cart or buy) is
            in a long-term return episode than in other events; the overall rates are kept.
        value: Write the ``value`` column (float32 dwell seconds).
        rows_per_file: Rows per Parquet file (the last file may be smaller).
    """

    seed: int = 0
    users: int | None = None
    events: int | None = None
    items: int = 100_000
    categories: int = 200
    category_zipf: float = 1.0
    item_zipf: float = 1.1
    median_events: float = 1000.0
    length_sigma: float = math.log(20.0) / 2.326
    min_events: int = 20
    max_events: int = 100_000
    end_ts: int = 1_735_689_600
    span_days: float = 730.0
    min_active_fraction: float = 0.25
    session_events: float = 20.0
    gap_median_seconds: float = 20.0
    gap_sigma: float = 1.5
    tie_prob: float = 0.05
    long_term_interests: float = 4.0
    long_term_growth: float = 1.0
    long_term_max: int = 100
    long_term_share: float = 0.04
    phases: int = 4
    phase_active_prob: float = 0.6
    episode_events: float = 1.25
    short_term_interests: int = 2
    drift_prob: float = 0.3
    noise_prob: float = 0.15
    click_rate: float = 0.10
    cart_rate: float = 0.03
    buy_rate: float = 0.02
    long_term_lift: float = 6.0
    value: bool = True
    rows_per_file: int = 1_000_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("users", "events"):
                if v is not None:
                    _check_int(f.name, v, 1)
            elif f.type == "bool":
                if not isinstance(v, bool):
                    raise ValueError(f"SynthConfig.{f.name} must be a bool, got {v!r}")
            elif f.type == "int":
                _check_int(f.name, v, 0)
            elif f.type == "float":
                if isinstance(v, bool) or not isinstance(v, _NUMBER) or not math.isfinite(v):
                    raise ValueError(f"SynthConfig.{f.name} must be a finite number, got {v!r}")
            # Plain Python numbers (not numpy scalars), so the config is JSON-serializable.
            if f.type == "float":
                object.__setattr__(self, f.name, float(v))
            elif v is not None and f.type != "bool":
                object.__setattr__(self, f.name, int(v))
        if (self.users is None) == (self.events is None):
            raise ValueError(
                f"SynthConfig: set exactly one of users and events, got users={self.users!r} "
                f"events={self.events!r}"
            )
        _check_int("items", self.items, 1)
        _check_int("categories", self.categories, 1)
        if self.categories > self.items:
            raise ValueError(
                f"SynthConfig.categories must be <= items={self.items}, got {self.categories}"
            )
        _check_range("category_zipf", self.category_zipf, 0.0, 10.0)
        _check_range("item_zipf", self.item_zipf, 0.0, 10.0)
        _check_range("median_events", self.median_events, 1.0, float(MAX_EVENTS_LIMIT))
        _check_range("length_sigma", self.length_sigma, 0.0, 5.0)
        _check_int("min_events", self.min_events, 1)
        _check_int("max_events", self.max_events, self.min_events)
        if self.max_events > MAX_EVENTS_LIMIT:
            raise ValueError(
                f"SynthConfig.max_events must be <= {MAX_EVENTS_LIMIT}, got {self.max_events}"
            )
        _check_range("span_days", self.span_days, 1.0 / 86400, 36_500.0)
        if self.end_ts - self.span_days * 86400 < 0:
            raise ValueError(
                f"SynthConfig.end_ts must be >= span_days * 86400 = {self.span_days * 86400:.0f} "
                f"(events start at end_ts - span), got {self.end_ts}"
            )
        if not 0.0 < self.min_active_fraction <= 1.0:
            raise ValueError(
                f"SynthConfig.min_active_fraction must be in (0, 1], got {self.min_active_fraction}"
            )
        _check_range("session_events", self.session_events, 1.0, float(MAX_EVENTS_LIMIT))
        _check_range("gap_median_seconds", self.gap_median_seconds, 0.0, 86400.0, low_open=True)
        _check_range("gap_sigma", self.gap_sigma, 0.0, 5.0)
        _check_range("tie_prob", self.tie_prob, 0.0, 1.0)
        _check_range("long_term_interests", self.long_term_interests, 1.0, 1e6)
        _check_range("long_term_growth", self.long_term_growth, 0.0, 2.0)
        _check_int("long_term_max", self.long_term_max, 1)
        _check_range("long_term_share", self.long_term_share, 0.0, 1.0)
        _check_int("phases", self.phases, 1)
        if not 0.0 < self.phase_active_prob <= 1.0:
            raise ValueError(
                f"SynthConfig.phase_active_prob must be in (0, 1], got {self.phase_active_prob}"
            )
        _check_range("episode_events", self.episode_events, 1.0, 1e6)
        _check_int("short_term_interests", self.short_term_interests, 1)
        _check_range("drift_prob", self.drift_prob, 0.0, 1.0)
        _check_range("noise_prob", self.noise_prob, 0.0, 1.0)
        for name in ("click_rate", "cart_rate", "buy_rate"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        if self.positive_rate >= 1.0:
            raise ValueError(
                "SynthConfig.click_rate + cart_rate + buy_rate must be < 1 (views are the rest), "
                f"got {self.positive_rate}"
            )
        _check_range("long_term_lift", self.long_term_lift, 1.0, 1e6)
        if self.long_term_lift * self.positive_rate > 1.0:
            raise ValueError(
                f"SynthConfig.long_term_lift must be <= 1 / (click_rate + cart_rate + buy_rate) "
                f"= {1.0 / self.positive_rate:.3f}, got {self.long_term_lift}"
            )
        _check_int("rows_per_file", self.rows_per_file, 1)

    @property
    def positive_rate(self) -> float:
        """Overall fraction of click, cart and buy events."""
        return self.click_rate + self.cart_rate + self.buy_rate

    @property
    def start_ts(self) -> int:
        """Start of the time range, epoch seconds (inclusive)."""
        return self.end_ts - int(self.span_days * 86400)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"SynthConfig.{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"SynthConfig.{name} must be >= {low}, got {value}")


def _check_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False
) -> None:
    bad = value <= low if low_open else value < low
    if bad or value > high:
        left = "(" if low_open else "["
        raise ValueError(f"SynthConfig.{name} must be in {left}{low}, {high}], got {value}")


def config_field_docs() -> dict[str, str]:
    """One-paragraph description of every ``SynthConfig`` field, from its docstring.

    Returns:
        Field name → description (the "Attributes:" section, continuation lines joined).
    """
    docs: dict[str, str] = {}
    lines = (SynthConfig.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    current = None
    for line in lines[start + 1 :]:
        m = re.match(r"^ {8}(\w+): (.*)$", line)
        if m:
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif line.startswith(" " * 12) and current is not None:
            docs[current] += " " + line.strip()
    return docs


# ---------------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Catalog:
    """Items and categories, shared by all users of one seed (hashed by identity: one per
    seed and sizes, cached).

    Items are stored by *position*: the positions of category ``c`` (0-based index, id
    ``c + 1``) are ``offsets[c]:offsets[c + 1]``, in decreasing popularity.

    Attributes:
        category_weights: (C,) float64 popularity of each category index, sums to 1.
        category_cdf: (C,) float64 cumulative ``category_weights``; last entry exactly 1.
        long_term_cdf: (C,) float64 CDF of the long-term interest draw: uniform, so
            long-term interests are personal niches rather than what everybody browses.
        offsets: (C + 1,) int64 item position range of each category index.
        item_ids: (I,) int64 item id at each position (a permutation of 1..I).
        item_cdf: (I,) float64 ``c + within-category CDF`` at each position, so one
            ``searchsorted`` samples items of many categories at once.
        item_category: (I + 1,) int64 category id of each item id (entry 0 unused, 0).
    """

    category_weights: np.ndarray
    category_cdf: np.ndarray
    long_term_cdf: np.ndarray
    offsets: np.ndarray
    item_ids: np.ndarray
    item_cdf: np.ndarray
    item_category: np.ndarray

    @property
    def num_categories(self) -> int:
        """Number of categories C."""
        return int(self.category_weights.shape[0])

    def category_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Category ids of item ids.

        Args:
            item_ids: (N,) int64 item ids in 1..I.

        Returns:
            (N,) int64 category ids.
        """
        return self.item_category[item_ids]

    def sample_categories(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw category indices (0-based) by popularity.

        Args:
            rng: Random generator.
            n: Number of draws.

        Returns:
            (n,) int64 category indices.
        """
        return _cdf_draw(self.category_cdf, rng.random(n))

    def sample_items(self, rng: np.random.Generator, category_index: np.ndarray) -> np.ndarray:
        """Draw one item per event, Zipf within the event's category.

        Args:
            rng: Random generator.
            category_index: (N,) int64 category indices (0-based).

        Returns:
            (N,) int64 item ids.
        """
        u = category_index + rng.random(category_index.shape[0])
        pos = np.searchsorted(self.item_cdf, u, side="right")
        # Rounding of c + u can land on the next category's boundary: clamp into category c.
        pos = np.minimum(pos, self.offsets[category_index + 1] - 1)
        pos = np.maximum(pos, self.offsets[category_index])
        return self.item_ids[pos]


def _cdf_draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(cdf, u, side="right")
    return np.minimum(idx, cdf.shape[0] - 1).astype(np.int64)


def _normalized_cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


@functools.lru_cache(maxsize=4)
def _catalog(
    seed: int, items: int, categories: int, category_zipf: float, item_zipf: float
) -> Catalog:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_CATALOG_KEY,)))
    # Popularity rank of each category index: a random permutation, so ids carry no order.
    rank = rng.permutation(categories)
    weights = (rank + 1.0) ** -category_zipf
    weights /= weights.sum()
    sizes = 1 + rng.multinomial(items - categories, weights)
    offsets = np.zeros(categories + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    item_ids = rng.permutation(items).astype(np.int64) + 1
    cat_of_pos = np.repeat(np.arange(categories, dtype=np.int64), sizes)
    rank_in_cat = np.arange(items, dtype=np.int64) - offsets[cat_of_pos]
    cum = np.cumsum((rank_in_cat + 1.0) ** -item_zipf)
    before = np.concatenate([[0.0], cum])[offsets[:-1]]  # (C,) mass before each category
    total = cum[offsets[1:] - 1] - before
    within = (cum - before[cat_of_pos]) / total[cat_of_pos]
    within[offsets[1:] - 1] = 1.0
    item_category = np.zeros(items + 1, dtype=np.int64)
    item_category[item_ids] = cat_of_pos + 1
    catalog = Catalog(
        category_weights=weights,
        category_cdf=_normalized_cdf(weights.copy()),
        long_term_cdf=_normalized_cdf(np.ones(categories)),
        offsets=offsets,
        item_ids=item_ids,
        item_cdf=cat_of_pos + within,
        item_category=item_category,
    )
    for arr in dataclasses.astuple(catalog):
        arr.flags.writeable = False
    return catalog


def build_catalog(cfg: SynthConfig) -> Catalog:
    """The catalog of a config (cached: it depends only on seed, items, categories, Zipfs).

    Args:
        cfg: Generator config.

    Returns:
        The read-only catalog.
    """
    return _catalog(cfg.seed, cfg.items, cfg.categories, cfg.category_zipf, cfg.item_zipf)


# ---------------------------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserTruth:
    """Ground truth of one synthetic user (what a model should discover).

    Attributes:
        user_id: User id (user index + 1).
        length: Full history length (before any ``events`` truncation).
        long_term_categories: (K,) int64 long-term interest category ids.
        long_term_active: (phases, K) bool, whether interest k is active in phase p; phase p
            covers events ``[p * length // phases, (p + 1) * length // phases)``.
        active_start_ts: First second of the user's active window (which ends at end_ts).
    """

    user_id: int
    length: int
    long_term_categories: np.ndarray
    long_term_active: np.ndarray
    active_start_ts: int


def _user_rng(cfg: SynthConfig, user_index: int) -> np.random.Generator:
    if user_index < 0:
        raise ValueError(f"user_index must be >= 0, got {user_index}")
    return np.random.default_rng(
        np.random.SeedSequence(cfg.seed, spawn_key=(_USER_KEY, user_index))
    )


def _draw_length(cfg: SynthConfig, rng: np.random.Generator) -> int:
    raw = rng.lognormal(math.log(cfg.median_events), cfg.length_sigma)
    return int(min(max(round(raw), cfg.min_events), cfg.max_events))


def _draw_truth(
    cfg: SynthConfig, catalog: Catalog, rng: np.random.Generator, user_index: int
) -> UserTruth:
    """The first draws of a user's stream: length, interests, phases, active window."""
    length = _draw_length(cfg, rng)
    mean_k = cfg.long_term_interests * (length / cfg.median_events) ** cfg.long_term_growth
    k = 1 + int(rng.poisson(mean_k - 1.0)) if mean_k > 1.0 else 1
    k = min(k, cfg.long_term_max, catalog.num_categories)
    # k distinct categories from long_term_cdf (rejecting repeats).
    chosen: list[int] = []
    while len(chosen) < k:
        for c in _cdf_draw(catalog.long_term_cdf, rng.random(2 * k)).tolist():
            if c not in chosen and len(chosen) < k:
                chosen.append(c)
    active = rng.random((cfg.phases, k)) < cfg.phase_active_prob
    idle_phases = np.flatnonzero(~active.any(axis=1))
    active[idle_phases, rng.integers(0, k, idle_phases.shape[0])] = True
    never = np.flatnonzero(~active.any(axis=0))
    active[rng.integers(0, cfg.phases, never.shape[0]), never] = True
    fraction = rng.uniform(cfg.min_active_fraction, 1.0)
    window = max(int(fraction * cfg.span_days * 86400), 1)
    return UserTruth(
        user_id=user_index + 1,
        length=length,
        long_term_categories=np.asarray(chosen, dtype=np.int64) + 1,
        long_term_active=active,
        active_start_ts=cfg.end_ts - window,
    )


def user_truth(cfg: SynthConfig, user_index: int) -> UserTruth:
    """Ground truth of user ``user_index`` (long-term interests, phases, length).

    Args:
        cfg: Generator config.
        user_index: 0-based user index (user id ``user_index + 1``).

    Returns:
        The user's ground truth; consistent with ``generate_user_events``.

    Raises:
        ValueError: If ``user_index`` is negative.
    """
    return _draw_truth(cfg, build_catalog(cfg), _user_rng(cfg, user_index), user_index)


def history_lengths(cfg: SynthConfig, num_users: int, start: int = 0) -> np.ndarray:
    """Full history lengths of users ``start .. start + num_users - 1``, without their events.

    Args:
        cfg: Generator config.
        num_users: Number of users.
        start: First user index.

    Returns:
        (num_users,) int64 lengths, equal to the lengths ``generate_user_events`` produces.
    """
    return np.array(
        [_draw_length(cfg, _user_rng(cfg, i)) for i in range(start, start + num_users)],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class UserState:
    """Everything the generator drew for one user before its per-event coins: the hidden
    state an oracle may condition on (`pipeline.synth_oracle`).

    Attributes:
        truth: the user's ground truth (length, long-term interests, phases).
        session: (L,) int64 session index of each event.
        short_term: (sessions, S) int64 category indices (0-based) of the session's
            short-term interest slots.
        episodes: (K,) int64 number of long-term return episodes drawn for each interest.
    """

    truth: UserTruth
    session: np.ndarray
    short_term: np.ndarray
    episodes: np.ndarray


def user_state(cfg: SynthConfig, user_index: int) -> UserState:
    """The hidden state of user ``user_index`` (see `UserState`), consistent with
    ``generate_user_events``.

    Raises:
        ValueError: If ``user_index`` is negative.
    """
    return _generate(cfg, user_index, with_source=False)[1]


def generate_user_events(
    cfg: SynthConfig, user_index: int, *, with_source: bool = False
) -> dict[str, np.ndarray]:
    """All events of one user, in time order.

    Args:
        cfg: Generator config.
        user_index: 0-based user index; the user id is ``user_index + 1``.
        with_source: Also return ``source``: int8 index into ``SOURCES`` saying why each
            event's category was chosen (short-term interest, noise, long-term episode).

    Returns:
        Arrays of shape (L,), L = ``user_truth(cfg, user_index).length``: ``user_id``,
        ``item_id``, ``category_id`` (int64), ``behavior`` (int8 index into ``BEHAVIORS``),
        ``ts`` (int64 epoch seconds, non-decreasing), ``value`` (float32 dwell seconds, only
        if ``cfg.value``) and optionally ``source`` (int8).

    Raises:
        ValueError: If ``user_index`` is negative.
    """
    return _generate(cfg, user_index, with_source=with_source)[0]


def _generate(
    cfg: SynthConfig, user_index: int, *, with_source: bool
) -> tuple[dict[str, np.ndarray], UserState]:
    """The events of ``generate_user_events`` and the state they were drawn from."""
    catalog = build_catalog(cfg)
    rng = _user_rng(cfg, user_index)
    truth = _draw_truth(cfg, catalog, rng, user_index)
    n = truth.length

    # Sessions: geometric lengths with mean session_events.
    is_start = rng.random(n) < 1.0 / cfg.session_events
    is_start[0] = True
    session = np.cumsum(is_start) - 1  # (L,) session index of each event
    num_sessions = int(session[-1]) + 1

    # Short-term interests: S slots per session; each slot switches category with drift_prob.
    slots = cfg.short_term_interests
    switch = rng.random((num_sessions, slots)) < cfg.drift_prob
    switch[0] = True
    draws = catalog.sample_categories(rng, num_sessions * slots).reshape(num_sessions, slots)
    last_switch = np.where(switch, np.arange(num_sessions)[:, None], 0)
    np.maximum.accumulate(last_switch, axis=0, out=last_switch)
    short_term = draws[last_switch, np.arange(slots)]  # (sessions, S)
    category = short_term[session, rng.integers(0, slots, n)]  # (L,) category index
    source = np.full(n, SOURCE_SHORT_TERM, dtype=np.int8)

    noise = np.flatnonzero(rng.random(n) < cfg.noise_prob)
    category[noise] = catalog.sample_categories(rng, noise.shape[0])
    source[noise] = SOURCE_NOISE

    # Long-term return episodes, placed uniformly in the interest's active phases.
    active = truth.long_term_active  # (P, K)
    phases, k = active.shape
    active_count = active.sum(axis=0)  # (K,)
    mean_episodes = cfg.long_term_share * n / cfg.episode_events  # over all interests
    episodes = rng.poisson(mean_episodes * active_count / active_count.sum())  # (K,)
    owner = np.repeat(np.arange(k), episodes)  # (E,) interest of each episode
    if owner.shape[0]:
        nth = (rng.random(owner.shape[0]) * active_count[owner]).astype(np.int64)
        phase = np.argmax(np.cumsum(active.T[owner], axis=1) > nth[:, None], axis=1)
        first = ((phase + rng.random(owner.shape[0])) * n / phases).astype(np.int64)
        sizes = rng.geometric(1.0 / cfg.episode_events, owner.shape[0])
        ends = np.cumsum(sizes)
        pos = np.arange(ends[-1]) - np.repeat(ends - sizes, sizes) + np.repeat(first, sizes)
        keep = pos < n
        pos = pos[keep]
        category[pos] = (truth.long_term_categories - 1)[np.repeat(owner, sizes)[keep]]
        source[pos] = SOURCE_LONG_TERM

    item = catalog.sample_items(rng, category)

    # Funnel: positive probability lifted in long-term episodes, overall rate preserved.
    share = float(np.count_nonzero(source == SOURCE_LONG_TERM)) / n
    p_other = cfg.positive_rate / (1.0 + share * (cfg.long_term_lift - 1.0))
    p_pos = np.where(source == SOURCE_LONG_TERM, p_other * cfg.long_term_lift, p_other)
    positive = rng.random(n) < p_pos
    stage = rng.random(n) * cfg.positive_rate
    behavior = np.where(
        positive,
        1 + (stage >= cfg.click_rate) + (stage >= cfg.click_rate + cfg.cart_rate),
        0,
    ).astype(np.int8)

    # Timestamps: intra-session gaps, then sessions spread over the active window.
    gaps = np.floor(rng.lognormal(math.log(cfg.gap_median_seconds), cfg.gap_sigma, n))
    gaps[rng.random(n) < cfg.tie_prob] = 0.0
    gaps[is_start] = 0.0
    window = cfg.end_ts - truth.active_start_ts
    busy = float(gaps.sum())
    if busy > window // 2:  # extremely active user: compress sessions to half the window
        gaps = np.floor(gaps * ((window // 2) / busy))
    offset = np.cumsum(gaps.astype(np.int64))  # (L,)
    idle = window - 1 - int(offset[-1])
    session_start = np.sort(rng.integers(0, idle + 1, num_sessions))
    ts = truth.active_start_ts + session_start[session] + offset

    out = {
        "user_id": np.full(n, truth.user_id, dtype=np.int64),
        "item_id": item,
        "category_id": category + 1,
        "behavior": behavior,
        "ts": ts,
    }
    if cfg.value:
        dwell = rng.lognormal(np.log(_DWELL_MEDIAN)[behavior], _DWELL_SIGMA)
        out["value"] = dwell.astype(np.float32)
    if with_source:
        out["source"] = source
    state = UserState(truth=truth, session=session, short_term=short_term, episodes=episodes)
    return out, state


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


def _prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"output {out_dir!r} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(
            f"output directory {out_dir!r} is not empty ({len(entries)} entries); "
            "pass overwrite=True (--overwrite) to replace it"
        )
    foreign = [e for e in entries if e != SUMMARY_FILE and not _FILE_RE.match(e)]
    if foreign:
        raise FileExistsError(
            f"output directory {out_dir!r} holds files lifeseq synth did not write "
            f"({', '.join(foreign[:5])}); refusing to overwrite it"
        )
    for e in entries:
        os.remove(os.path.join(out_dir, e))


def _to_table(columns: dict[str, np.ndarray], with_value: bool) -> pa.Table:
    names = pa.array(BEHAVIORS, type=pa.string())
    arrays = [
        pa.array(columns["user_id"]),
        pa.array(columns["item_id"]),
        pa.array(columns["category_id"]),
        names.take(pa.array(columns["behavior"])),
        pa.array(columns["ts"]),
    ]
    schema = _SCHEMA
    if with_value:
        arrays.append(pa.array(columns["value"]))
    else:
        schema = schema.remove(schema.get_field_index("value"))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_synthetic(cfg: SynthConfig, out_dir: str, *, overwrite: bool = False) -> dict:
    """Generate the events of ``cfg`` and write them as Parquet plus ``_synth.json``.

    Files are ``out_dir/events-NNNNN.parquet`` with exactly ``cfg.rows_per_file`` rows each
    (the last may be smaller), rows grouped by user in user-id order and in time order within
    a user (a user may continue in the next file). The content depends only on ``cfg``.

    Args:
        cfg: Generator config.
        out_dir: Local output directory; created if missing.
        overwrite: Replace earlier ``lifeseq synth`` output in ``out_dir``.

    Returns:
        The summary also written to ``out_dir/_synth.json``: ``config``, ``time_range``,
        ``columns``, ``users``, ``events``, ``behaviors`` (count per behavior),
        ``truncated_last_user`` and ``files`` (``path`` relative to ``out_dir``, ``rows``).

    Raises:
        FileExistsError: If ``out_dir`` is not empty and ``overwrite`` is false, or holds
            files this generator did not write.
    """
    _prepare_out_dir(out_dir, overwrite)
    names = list(_SCHEMA.names) if cfg.value else list(_SCHEMA.names[:-1])
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    files: list[dict] = []
    counts = np.zeros(len(BEHAVIORS), dtype=np.int64)

    def flush(final: bool) -> None:
        nonlocal pending, pending_rows
        if not pending_rows:
            return
        merged = {c: np.concatenate([p[c] for p in pending]) for c in names}
        done = 0
        while pending_rows - done >= cfg.rows_per_file or (final and done < pending_rows):
            rows = min(cfg.rows_per_file, pending_rows - done)
            part = {c: merged[c][done : done + rows] for c in names}
            name = FILE_PATTERN.format(len(files))
            pq.write_table(_to_table(part, cfg.value), os.path.join(out_dir, name))
            files.append({"path": name, "rows": rows})
            logger.debug("wrote %s (%d rows)", name, rows)
            done += rows
        pending = [{c: merged[c][done:] for c in names}]
        pending_rows -= done

    user_index = 0
    total = 0
    truncated = False
    while True:
        if cfg.users is not None and user_index >= cfg.users:
            break
        if cfg.events is not None and total >= cfg.events:
            break
        events = generate_user_events(cfg, user_index)
        n = events["ts"].shape[0]
        if cfg.events is not None and total + n > cfg.events:
            keep = cfg.events - total
            events = {c: a[:keep] for c, a in events.items()}
            truncated = keep < n
            n = keep
        counts += np.bincount(events["behavior"], minlength=len(BEHAVIORS))
        pending.append(events)
        pending_rows += n
        total += n
        user_index += 1
        if pending_rows >= cfg.rows_per_file:
            flush(final=False)
    flush(final=True)

    summary = {
        "generator": "lifeseq synth",
        "format_version": 1,
        "config": dataclasses.asdict(cfg),
        "time_range": {
            "start_ts": cfg.start_ts,
            "end_ts": cfg.end_ts,
            "start": _iso(cfg.start_ts),
            "end": _iso(cfg.end_ts),
        },
        "columns": {f.name: str(f.type) for f in _SCHEMA if f.name in names},
        "users": user_index,
        "events": total,
        "behaviors": {b: int(c) for b, c in zip(BEHAVIORS, counts, strict=True)},
        "truncated_last_user": truncated,
        "files": files,
    }
    with open(os.path.join(out_dir, SUMMARY_FILE), "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    return summary


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
