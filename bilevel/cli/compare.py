"""``bilevel compare``: train and evaluate several methods (over seeds), print and write the table."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..fewshot.benchmarks import BENCHMARKS
from ..fewshot.config import describe_default
from ..fewshot.methods import METHODS
from ..validation import check_output_dir
from .arguments import EXAMPLES, add_threads, add_training_flags, given_settings, int_at_least, positive_int
from .checks import check_environment

__all__ = ["PARSER", "add_arguments", "run"]

PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
              description="Train and evaluate each method, then print a table (metric +- CI, time per "
              "iteration, peak memory) and write compare.md, compare.csv and learning_curves.png. "
              "A flag that a method does not use (--lam for maml) is dropped for that method.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="maml,fomaml,reptile,imaml-gd,imaml-hf",
                   help="comma-separated methods (default: all five)")
    add_training_flags(p, with_method=False)
    p.add_argument("--out", help="output folder (default: runs/compare-<benchmark>, plus -<net> for a "
                   "--net other than the benchmark's default)")
    p.add_argument("--tasks", type=int_at_least(2),
                   help=f"test tasks per method ({describe_default('eval_tasks')})")
    p.add_argument("--resume", action="store_true", help="keep finished runs (and their evaluations) in --out, "
                   "continue unfinished ones; their saved settings must match the flags (--iterations aside)")
    p.add_argument("--overwrite", action="store_true", help="train again the runs already in --out, replacing "
                   "them; without it (or --resume) a folder that holds runs is refused")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="training seeds per method, --seed, --seed + 1, ...; over several the table reports the "
                   "mean over seeds with a 95%% interval over seeds, each seed's score and the paired difference "
                   "to --reference (default: 1)")
    p.add_argument("--reference", help="the method that the paired differences over seeds are taken against "
                   "(default: maml when compared, else the first method)")
    p.add_argument("--jobs", type=positive_int,
                   help="runs (method x seed) trained at once, one process each (default: one per core, at most "
                   "one per run; with one thread each this is faster than one method at a time, docs/performance.md)")
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from ..fewshot.compare import compare, format_table, run_configs

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(sorted(METHODS))}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods {args.methods!r} names a method twice; name each once")
    configs = run_configs({m: dict(method=m) for m in methods}, given_settings(args))
    first = next(iter(configs.values()))
    default_net = BENCHMARKS[first.benchmark].default_net
    out = Path(args.out or f"runs/compare-{first.benchmark}" + (f"-{first.net}" if first.net != default_net else ""))
    check_output_dir(None, "--out", out)
    check_environment(first)  # the methods share the benchmark, data and device
    jobs = args.jobs or max(1, min(len(configs) * args.seeds, os.cpu_count() or 1))
    if args.reference is not None and args.seeds < 2:
        raise ValueError("--reference sets the method of the paired differences over seeds; it needs --seeds N >= 2")
    rows = compare(configs, out, eval_tasks=args.tasks, resume=args.resume, jobs=jobs, seeds=args.seeds,
                   reference=args.reference, overwrite=args.overwrite)
    print()
    print(format_table(rows, args.reference))
    written = ["compare.md", "compare.csv", "learning_curves.png"] + (["compare.json"] if args.seeds > 1 else [])
    print("\nwritten: " + ", ".join(str(out / name) for name in written))
    return 0
