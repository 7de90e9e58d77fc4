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


def check_top_k(unit: str, top_k: int, max_history: int) -> None:
    """Refuse a GSU that would retrieve more behaviors than a target's window can hold.

    Args:
        unit: the unit's class name (named in the message with the YAML key).
        top_k: behaviors the unit's GSU retrieves per target.
        max_history: `data.max_history`, the most events a target's window holds.

    Raises:
        ValueError: `top_k > max_history`, naming both numbers and what to change.
    """
    if top_k > max_history:
        raise ValueError(
            f"{unit}: config.top_k is {top_k:,} but data.max_history is {max_history:,}, so a "
            f"target's window never holds {top_k:,} behaviors to retrieve. Set "
            f"--model.init_args.model.init_args.long_term.init_args.config.top_k <= "
            f"{max_history:,}, or raise --data.max_history"
        )
