"""The ``bilevel`` command line: ``train``, ``evaluate`` and ``compare`` few-shot methods,
``reproduce`` the iMAML paper, ``bench`` against other libraries.

One module per command, each with ``PARSER`` (its sub-parser's options), ``add_arguments(p)`` and
``run(args) -> exit status``; :data:`COMMANDS` lists them, and :func:`build_parser` and
:func:`main` read nothing else, so adding a command is one module and one line here. Shared
flags and argparse types are in :mod:`.arguments`, the checks before any work in :mod:`.checks`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from ..data import DataError
from ..errors import SolverError
from ..fewshot.checkpoint import CheckpointError
from . import bench, compare, evaluate, reproduce, train
from .arguments import EXAMPLES, Parser, set_threads

__all__ = ["main", "build_parser", "COMMANDS", "Command"]


class Command(NamedTuple):
    """One subcommand: ``bilevel <name> ...``."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Any], int]  # the parsed arguments; with own_parser, the argument list after the name
    help: str  # its line in ``bilevel --help``
    parser: dict  # keyword arguments of its sub-parser (description, epilog, ...)
    own_parser: bool = False  # it parses its own arguments (``--threads`` and errors are its own too)


COMMANDS: dict[str, Command] = {
    "train": Command(train.add_arguments, train.run, "meta-train one method", train.PARSER),
    "evaluate": Command(evaluate.add_arguments, evaluate.run, "test accuracy with a 95%% confidence interval",
                        evaluate.PARSER),
    "compare": Command(compare.add_arguments, compare.run, "train and evaluate several methods, print a table",
                       compare.PARSER),
    "reproduce": Command(reproduce.add_arguments, reproduce.run, "regenerate the iMAML paper's figures and table",
                         reproduce.PARSER),
    "bench": Command(bench.add_arguments, bench.run, "speed and memory against higher, TorchOpt and learn2learn "
                     "(bilevel bench --help)", bench.PARSER, own_parser=True),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``bilevel`` parser, one sub-parser per entry of :data:`COMMANDS`."""
    parser = Parser(
        prog="bilevel", description="Meta-train and evaluate few-shot methods (MAML, first-order MAML, Reptile, "
        "iMAML-GD, iMAML-HF) with the bilevel library.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, **command.parser))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``bilevel ARGV``; the exit status: 0, 2 for a user's error (one line on stderr), 130 when interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in COMMANDS and COMMANDS[argv[0]].own_parser:
        return COMMANDS[argv[0]].run(argv[1:])
    args = build_parser().parse_args(argv)
    set_threads(getattr(args, "threads", None))
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, DataError, SolverError, CheckpointError) as exc:  # a user's error or a run's end
        message = " ".join(str(exc).split())  # one line, whatever the message's layout
        print(f"bilevel {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"bilevel {args.command}: {str(exc) or 'interrupted; resume with --resume'}", file=sys.stderr)
        return 130
