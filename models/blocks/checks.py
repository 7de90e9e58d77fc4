"""Checks of config values, shared by every config dataclass: errors name the field, the value
seen and what was expected."""

from __future__ import annotations


def check_positive(name: str, value: object) -> None:
    """Raise `ValueError` naming `name` unless `value` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def check_widths(name: str, widths: tuple[int, ...]) -> tuple[int, ...]:
    """`widths` (a YAML list or a tuple) as a tuple of positive ints.

    Raises:
        ValueError: a width that is not a positive int, naming `name`.
    """
    widths = tuple(widths)
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{name}: expected positive ints, got {widths!r}")
    return widths


def check_dropout(name: str, value: float) -> None:
    """Raise `ValueError` naming `name` unless `value` is a dropout probability in [0, 1)."""
    if not 0 <= value < 1:
        raise ValueError(f"{name}: expected a value in [0, 1), got {value}")
