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
