"""Argument checks shared by the library's constructors and functions.

Each raises ``TypeError``/``ValueError`` with a message naming the call, the argument, what
was expected and what was given: never ``assert`` on user input.
"""

from __future__ import annotations

__all__ = ["check_positive_int", "check_positive", "check_nonnegative", "check_unit_interval", "check_choice"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive_int(call: str, name: str, value) -> int:
    """An ``int >= 1`` (a step or iteration count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{call}: {name} must be an int, got {type(value).__name__} ({value!r}).")
    if value <= 0:
        raise ValueError(f"{call}: {name} must be >= 1, got {value}. At least one iteration is needed.")
    return value


def check_positive(call: str, name: str, value) -> float:
    if not _is_number(value) or not value > 0:
        raise ValueError(f"{call}: {name} must be a number > 0, got {value!r}.")
    return value


def check_nonnegative(call: str, name: str, value) -> float:
    if not _is_number(value) or not value >= 0:
        raise ValueError(f"{call}: {name} must be a number >= 0, got {value!r}.")
    return value


def check_unit_interval(call: str, name: str, value) -> float:
    """A number in ``[0, 1)`` (a momentum or a decay rate)."""
    if not _is_number(value) or not 0 <= value < 1:
        raise ValueError(f"{call}: {name} must be in [0, 1), got {value!r}.")
    return value


def check_choice(call: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{call}: {name} must be one of {tuple(choices)}, got {value!r}.")
    return value
