"""``bilevel evaluate``: a trained run's test (or validation) metric with a 95% confidence interval."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..distributed import World
from ..fewshot.compare import describe_evaluation
from ..fewshot.config import DEFAULTS
from ..validation import check_output_dir
from .arguments import add_threads, int_at_least
from .checks import check_environment, run_dir_config

__all__ = ["PARSER", "add_arguments", "run"]

PARSER = dict(description="Adapt the trained run to test tasks and report the mean metric +- 1.96 "
              "std / sqrt(tasks).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory written by `bilevel train`")
    p.add_argument("--tasks", type=int_at_least(2), help="test tasks (default: the run's eval_tasks, "
                   f"{DEFAULTS['eval_tasks']} unless set, as in the paper)")
    p.add_argument("--split", choices=["test", "val"], default="test", help="which split (default: test)")
    p.add_argument("--quiet", action="store_true", help="print only the result line")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from ..fewshot.trainer import evaluate

    config = run_dir_config("", Path(args.run_dir))
    check_output_dir(None, "RUN_DIR", args.run_dir)  # evaluation-<split>.json goes there
    check_environment(config)
    result = evaluate(args.run_dir, tasks=args.tasks, split=args.split, progress=not args.quiet)
    if World.launched().is_main:  # under torchrun, rank 0 prints the result
        print(describe_evaluation(result))
    return 0
