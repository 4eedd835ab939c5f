"""``bilevel bench``: speed and memory against higher, TorchOpt and learn2learn, with its own parser.

:func:`bilevel.bench.main` parses everything after ``bench`` (so ``bilevel bench --help`` is its
help); this sub-parser only names the command in ``bilevel --help``.
"""

from __future__ import annotations

__all__ = ["PARSER", "add_arguments", "run"]

PARSER = dict(add_help=False)  # --help goes to bilevel.bench's own parser


def add_arguments(p) -> None:
    """Nothing: the arguments after ``bench`` go to :func:`run` unparsed."""


def run(argv: list[str]) -> int:
    """``bilevel bench ARGV``: :func:`bilevel.bench.main` on the arguments after the command name."""
    from ..bench import main

    return main(argv)
