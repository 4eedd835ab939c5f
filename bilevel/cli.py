"""The ``bilevel`` command line: ``train``, ``evaluate`` and ``compare`` few-shot methods."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import DataError
from .fewshot.benchmarks import BENCHMARKS
from .fewshot.config import TrainConfig
from .fewshot.methods import BACKENDS, METHODS

EXAMPLES = """examples:
  bilevel compare --benchmark sinusoid --methods maml,fomaml,reptile,imaml-gd,imaml-hf
  bilevel train --benchmark omniglot --ways 5 --shots 1 --method imaml-gd --iterations 500 --out runs/imaml
  bilevel train --resume runs/imaml --iterations 1000
  bilevel evaluate runs/imaml --tasks 600
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _add_training_flags(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    g = p.add_argument_group("task and method")
    g.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="sinusoid",
                   help="task family (default: sinusoid, which needs no download)")
    g.add_argument("--ways", type=_positive_int, help="classes per task (default: 5; sinusoid: n/a)")
    g.add_argument("--shots", type=_positive_int, help="support examples per class (default: 1; sinusoid: 10)")
    g.add_argument("--queries", type=_positive_int, help="query examples per class (default: omniglot 5, sinusoid 10)")
    if with_method:
        g.add_argument("--method", choices=sorted(METHODS), default="imaml-gd",
                       help="; ".join(f"{m.name}: {m.description}" for m in METHODS.values()))
    g.add_argument("--backend", choices=sorted(BACKENDS),
                   help="replace the method's hypergradient backend (e.g. torchopt, higher, truncated)")
    h = p.add_argument_group("hyperparameters (defaults from the iMAML paper where it gives them)")
    h.add_argument("--inner-steps", type=_positive_int, help="inner gradient steps (default: 16 for <=5-way, 25 above; sinusoid 5)")
    h.add_argument("--inner-lr", type=_positive_float, help="inner learning rate (default: 0.1; sinusoid 0.02)")
    h.add_argument("--lam", type=_positive_float, default=2.0, help="iMAML's proximal strength lambda (default: 2.0)")
    h.add_argument("--cg-steps", type=_positive_int, default=5, help="CG steps for the implicit meta-gradient (default: 5)")
    h.add_argument("--hf-steps", type=_positive_int, help="Newton iterations of imaml-hf (default: 5; sinusoid 2)")
    h.add_argument("--hf-cg-steps", type=_positive_int, default=5, help="CG steps per Newton direction (default: 5)")
    h.add_argument("--truncate-steps", type=_positive_int, help="steps kept by --backend truncated (default: half)")
    h.add_argument("--outer-lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    h.add_argument("--meta-batch", type=_positive_int, help="tasks per meta-iteration (default: 32; sinusoid 25)")
    h.add_argument("--chunk-size", type=_positive_int, help="tasks per vmap chunk, to bound memory (default: all)")
    h.add_argument("--hvp-mode", choices=["forward-over-reverse", "reverse-over-reverse"],
                   help="Hessian-vector products of the implicit backend and Newton-CG (default: "
                   "reverse-over-reverse, 3x faster than forward-over-reverse on a CPU here)")
    h.add_argument("--vectorize", choices=["auto", "on", "off"],
                   help="one vmap over the meta-batch (on) or a loop over tasks (off); auto: vmap, except a "
                   "loop for conv nets on a CPU, where it is faster (default: auto)")
    r = p.add_argument_group("run")
    r.add_argument("--iterations", type=_positive_int, help="meta-iterations (default: omniglot 20000, sinusoid 500)")
    r.add_argument("--val-every", type=_positive_int, help="validate every N iterations (default: 500; sinusoid 100)")
    r.add_argument("--val-tasks", type=_positive_int, default=100, help="validation tasks (default: 100)")
    r.add_argument("--checkpoint-every", type=_positive_int, help="checkpoint every N iterations (default: --val-every)")
    r.add_argument("--seed", type=int, default=0, help="seed of the initialization and the task streams (default: 0)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    r.add_argument("--data-root", help="data folder (default: $BILEVEL_DATA, else ~/.cache/bilevel)")


def _config(args) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})


def _train_flags(args) -> list[str]:
    """The training flags the user gave, to pass on to each ``train`` run of ``compare``."""
    flags = []
    for key, value in vars(args).items():
        if key in TrainConfig.__dataclass_fields__ and key not in ("method",) and value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bilevel", description="Meta-train and evaluate few-shot methods (MAML, first-order MAML, Reptile, "
        "iMAML-GD, iMAML-HF) with the bilevel library.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,compare}")

    t = sub.add_parser("train", help="meta-train one method", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Meta-train one method; writes config.json, metrics.jsonl, checkpoint.pt and "
                       "summary.json to --out.")
    _add_training_flags(t)
    t.add_argument("--out", help="run directory (default: runs/<benchmark>-<method>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped "
                   "(its saved config is used; --iterations may extend it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="test accuracy with a 95%% confidence interval",
                       description="Adapt the trained run to test tasks and report the mean metric +- 1.96 "
                       "std / sqrt(tasks).")
    e.add_argument("run_dir", help="a run directory written by `bilevel train`")
    e.add_argument("--tasks", type=_positive_int, help="test tasks (default: 600, as in the paper)")
    e.add_argument("--split", choices=["test", "val"], default="test", help="which split (default: test)")
    e.add_argument("--quiet", action="store_true", help="print only the result line")

    c = sub.add_parser("compare", help="train and evaluate several methods, print a table",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train and evaluate each method, then print a table (metric +- CI, time per "
                       "iteration, peak memory) and write compare.md, compare.csv and learning_curves.png.",
                       epilog=EXAMPLES)
    c.add_argument("--methods", default="maml,fomaml,reptile,imaml-gd,imaml-hf",
                   help="comma-separated methods (default: all five)")
    _add_training_flags(c, with_method=False)
    c.add_argument("--out", help="output folder (default: runs/compare-<benchmark>)")
    c.add_argument("--tasks", type=_positive_int, help="test tasks per method (default: 600)")
    c.add_argument("--resume", action="store_true", help="keep finished runs (and their evaluations) in --out, continue unfinished ones")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, parser)
    except (ValueError, DataError, RuntimeError) as exc:
        print(f"bilevel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bilevel {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


def _dispatch(args, parser) -> int:
    from .fewshot.trainer import evaluate, train

    if args.command == "train":
        if args.resume:
            summary = train(None, args.resume, resume=True, iterations=args.iterations, progress=not args.quiet)
            out = args.resume
        else:
            out = args.out or f"runs/{args.benchmark}-{args.method}"
            summary = train(_config(args), out, progress=not args.quiet)
        spi = summary["seconds_per_iteration"]
        print(f"trained {summary['method']} on {summary['benchmark']} for {summary['iterations']} iterations"
              + (f" ({spi:.3f} s/iteration)" if spi else "") + f"; run saved in {out}")
        return 0
    if args.command == "evaluate":
        r = evaluate(args.run_dir, tasks=args.tasks, split=args.split, progress=not args.quiet)
        scale, unit = (100.0, "%") if r["metric"] == "accuracy" else (1.0, "")
        print(f"{r['method']} {r['benchmark']} {r['split']} {r['metric']}: {scale * r['mean']:.2f}{unit} "
              f"+- {scale * r['ci95']:.2f}{unit} (95% CI over {r['tasks']} tasks, iteration {r['iteration']})")
        return 0
    from .fewshot.compare import compare, format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
    out = Path(args.out or f"runs/compare-{args.benchmark}")
    rows = compare(methods, out, _train_flags(args), eval_tasks=args.tasks, resume=args.resume)
    print()
    print(format_table(rows))
    print(f"\nwritten: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'learning_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
