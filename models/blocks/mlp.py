"""A plain MLP head: Linear → ReLU per hidden width, then Linear to one logit."""

from __future__ import annotations

from torch import nn


def mlp(width: int, hidden: tuple[int, ...], out: int = 1) -> nn.Sequential:
    """`Linear(width, h1) → ReLU → … → Linear(h_last, out)`; no hidden layer gives a linear map."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def check_widths(name: str, widths: tuple[int, ...]) -> tuple[int, ...]:
    """`widths` as a tuple of positive ints.

    Raises:
        ValueError: a width that is not a positive int, naming `name`.
    """
    widths = tuple(widths)
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{name}: expected positive ints, got {widths!r}")
    return widths


def check_positive(name: str, value: object) -> None:
    """Raise `ValueError` naming `name` unless `value` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
