"""Tests of `trainers.run_state`: RNG states and the schema hash carried by checkpoints."""

from __future__ import annotations

import pytest
import torch

from lifeseq.trainers import run_state

pytestmark = pytest.mark.unit


def _gather_two_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Stand-in for `all_gather` over 2 ranks whose rank 1 is 3 draws further on."""
    other = torch.Generator()
    other.set_state(tensor.clone())
    torch.rand(3, generator=other)
    return torch.stack([tensor, other.get_state()])


def test_restored_rng_continues_the_saved_stream() -> None:
    torch.manual_seed(7)
    torch.rand(5)
    checkpoint: dict = {}
    run_state.stamp(checkpoint, "abc", lambda t: t, world_size=1)
    expected = torch.rand(4)
    torch.rand(100)  # the interrupted run's draws after the checkpoint

    run_state.restore(checkpoint, "abc", rank=0, source="ckpt")

    assert torch.equal(torch.rand(4), expected)
    assert checkpoint["lifeseq"]["rng"]["cpu"].shape == (1, 5056)


def test_each_rank_restores_its_own_row() -> None:
    torch.manual_seed(1)
    checkpoint: dict = {}
    run_state.stamp(checkpoint, "abc", _gather_two_ranks, world_size=2)
    generator = torch.Generator()
    generator.set_state(checkpoint["lifeseq"]["rng"]["cpu"][1].clone())
    expected_rank1 = torch.rand(2, generator=generator)

    run_state.restore(checkpoint, "abc", rank=1, source="ckpt")

    assert torch.equal(torch.rand(2), expected_rank1)


def test_checkpoint_of_another_schema_is_refused() -> None:
    checkpoint: dict = {}
    run_state.stamp(checkpoint, "a" * 64, lambda t: t, world_size=1)

    with pytest.raises(ValueError, match=r"RUN/last.ckpt: .*schema aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        run_state.restore(checkpoint, "b" * 64, rank=0, source="RUN/last.ckpt")


def test_checkpoint_without_the_section_is_accepted() -> None:
    run_state.restore({"state_dict": {}}, "b" * 64, rank=0, source="old.ckpt")
