"""Argument checks shared by the library's constructors, its functions and the command line.

Each raises ``TypeError``/``ValueError`` with a message naming the call, the argument, what
was expected and what was given, and the likely fix: never ``assert`` on user input.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_int", "check_positive", "check_nonnegative", "check_unit_interval",
           "check_choice", "check_output_dir"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _where(call: str | None) -> str:
    return f"{call}: " if call else ""


def check_int(call: str | None, name: str, value, *, minimum: int = 1, fix: str | None = None) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``; raise otherwise.

    The one integer check of the project (constructors, data loaders, ``resolve`` and the
    command line's argparse types). ``call`` names the caller (``None``: the message starts at
    ``name``, as for a command-line flag); ``fix`` is appended as the likely cure.

    >>> check_int("GradientDescent", "steps", 0)
    Traceback (most recent call last):
    ValueError: GradientDescent: steps must be >= 1, got 0.
    """
    tail = f" {fix}" if fix else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_where(call)}{name} must be an int, got {type(value).__name__} ({value!r}).{tail}")
    if value < minimum:
        raise ValueError(f"{_where(call)}{name} must be >= {minimum}, got {value}.{tail}")
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


def check_flag(call: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{call}: {name} must be True or False, got {value!r}.")
    return value


def check_choice(call: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{call}: {name} must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_output_dir(call: str | None, name: str, path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a folder we can write into, or one we can create; raise otherwise.

    Cheap and side-effect free (nothing is created): checks that ``path`` is not a file, and that
    its nearest existing ancestor is a folder with write and search permission (``os.access``,
    so root passes wherever the kernel would let it write).
    """
    path = Path(path).expanduser()
    where = f"{_where(call)}{name} {str(path)!r}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{where} is a file, not a folder; choose another {name} (or move the file away).")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{where} cannot be created: {str(existing)!r} is a file; choose another {name}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "folder is" if existing == path else f"parent folder {str(existing)!r} is"
        raise ValueError(f"{where} is not writable (the {what} read-only for this user); choose a "
                         f"writable {name}.")
    return path
