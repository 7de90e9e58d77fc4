"""Deterministic layer initialisation that leaves the caller's global RNG untouched."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the block with the global CPU RNG seeded by `seed`, then restore the previous state.

    Models build their dense layers inside it so the same seed gives the same weights on every
    rank and world size, whatever the training job drew before.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
