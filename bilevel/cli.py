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


def _float_at_least(minimum: float, strict: bool, what: str):
    """An argparse type: a float ``> minimum`` (``strict``) or ``>= minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_float = _float_at_least(0.0, True, "a positive number")
_nonnegative_float = _float_at_least(0.0, False, "a number >= 0")


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
    g.add_argument("--protocol", choices=["paper", "official"],
                   help="paper: Algorithm 2 as written (default); official: the released iMAML code's inner loop, "
                   "damped CG, Adam eps, K queries, init and lam = 0 at test (imaml-gd only; docs/reproduction.md)")
    g.add_argument("--net", choices=["strided", "maxpool"],
                   help="conv4 variant: strided (Omniglot default, MAML's net) or maxpool (mini-ImageNet default)")
    g.add_argument("--init", choices=["torch", "official"],
                   help="conv initialization: torch (default) or official (xavier gain 1.73; default of --protocol official)")
    g.add_argument("--backend", choices=sorted(BACKENDS),
                   help="replace the method's hypergradient backend (e.g. torchopt, higher, truncated)")
    h = p.add_argument_group("hyperparameters (defaults from the iMAML paper where it gives them)")
    h.add_argument("--inner-steps", type=_positive_int, help="inner gradient steps (default: 16 for <=5-way, 25 above; sinusoid 5)")
    h.add_argument("--inner-lr", type=_positive_float, help="inner learning rate (default: 0.1; sinusoid 0.02)")
    h.add_argument("--lam", type=_positive_float, help="iMAML's proximal strength lambda (default: 2.0; sinusoid: "
                   "chosen on validation, docs/results/sinusoid-tuning)")
    h.add_argument("--lam-scale", choices=["mean", "sum"],
                   help="the support loss that --lam is stated for: mean (as computed) or sum over the ways*shots "
                   "support examples, i.e. lambda / (ways*shots) on the mean (default: mean)")
    h.add_argument("--cg-steps", type=_positive_int, default=5, help="CG steps for the implicit meta-gradient (default: 5)")
    h.add_argument("--cg-damping", type=_nonnegative_float,
                   help="CG solves ((1 + d) I + H/lambda) g = grad L_test (default: 0; official protocol: 1)")
    h.add_argument("--curvature", choices=["hessian", "gauss-newton"],
                   help="the matrix of the implicit meta-gradient's solve: the support-loss Hessian (default) or its "
                   "positive semi-definite Gauss-Newton part J^T H_loss J")
    h.add_argument("--cg-on-negative", choices=["continue", "stop"],
                   help="CG meeting negative curvature: continue through it (default) or stop at that direction")
    h.add_argument("--hf-steps", type=_positive_int, help="Newton iterations of imaml-hf (default: 5; sinusoid 2)")
    h.add_argument("--hf-cg-steps", type=_positive_int, default=5, help="CG steps per Newton direction (default: 5)")
    h.add_argument("--truncate-steps", type=_positive_int, help="steps kept by --backend truncated (default: half)")
    h.add_argument("--outer-lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    h.add_argument("--outer-eps", type=_positive_float, help="Adam eps (default: 1e-8; official protocol: 1e-3)")
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,compare,reproduce}")

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
    c.add_argument("--jobs", type=_positive_int, default=1,
                   help="methods trained at once, one process each (default: 1; more pays on a GPU or many cores)")

    r = sub.add_parser("reproduce", help="regenerate the iMAML paper's figures and table",
                       description="Regenerate the iMAML paper's comparisons (docs/reproduction.md).")
    rsub = r.add_subparsers(dest="figure", required=True, metavar="{gradient-error,memory,table}")
    ge = rsub.add_parser("gradient-error", help="Fig. 2a: meta-gradient error against CG / inner steps",
                         description="Fig. 2a on a logistic-regression iMAML problem solved exactly in float64: "
                         "relative meta-gradient error of iMAML (CG), Neumann, MAML and first-order MAML.")
    ge.add_argument("--steps", type=_positive_int, default=20, help="largest iteration count (default: 20)")
    ge.add_argument("--out", default="runs/reproduce/gradient-error", help="output folder")
    me = rsub.add_parser("memory", help="Fig. 2b: memory and time per meta-iteration against inner steps",
                         description="Fig. 2b: MAML vs iMAML-GD on Omniglot, each point in a fresh process.")
    me.add_argument("--steps", default="1,5,10,20,40,100", help="inner step counts (default: 1,5,10,20,40,100)")
    me.add_argument("--ways", type=_positive_int, default=20)
    me.add_argument("--shots", type=_positive_int, default=5)
    me.add_argument("--meta-batch", type=_positive_int, default=1, help="tasks per meta-iteration (default: 1)")
    me.add_argument("--repeats", type=_positive_int, default=2, help="timed meta-iterations after a warm-up (default: 2)")
    me.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    me.add_argument("--vectorize", choices=["auto", "on", "off"], default="auto",
                    help="vmap over the meta-batch or loop (default: auto, as bilevel train)")
    me.add_argument("--point-timeout", type=_positive_float, default=600.0, help="seconds per point (default: 600)")
    me.add_argument("--data-root", help="Omniglot folder (default: $BILEVEL_DATA, else ~/.cache/bilevel)")
    me.add_argument("--out", default="runs/reproduce/memory", help="output folder")
    ta = rsub.add_parser("table", help="Table 2: Omniglot few-shot accuracy beside the paper's",
                         description="Train and evaluate every (setting, method) at one budget, resumably; "
                         "writes table.md and table.json beside the paper's numbers.")
    ta.add_argument("--settings", default="5w1s,5w5s,20w1s,20w5s", help="comma-separated (default: all four)")
    ta.add_argument("--methods", default="maml,fomaml,reptile,imaml-gd,imaml-hf,imaml-gd-official",
                    help="comma-separated rows (default: all six)")
    ta.add_argument("--budget", default="20000x32", help="ITERATIONSxMETA_BATCH for every run (default: the paper's "
                    "20000x32, which needs a GPU)")
    ta.add_argument("--quick", action="store_true", help="a smoke run: budget 2x2, 20 test tasks")
    ta.add_argument("--tasks", type=_positive_int, default=600, help="test tasks per run (default: 600)")
    ta.add_argument("--lam", type=_positive_float, help="lambda of the paper-protocol iMAML rows (default: 2.0)")
    ta.add_argument("--lam-scale", choices=["mean", "sum"], help="--lam-scale of the paper-protocol iMAML rows")
    ta.add_argument("--jobs", type=_positive_int, default=1, help="runs trained at once (default: 1)")
    ta.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ta.add_argument("--data-root", help="Omniglot folder (default: $BILEVEL_DATA, else ~/.cache/bilevel)")
    ta.add_argument("--out", default="runs/reproduce/table", help="output folder; rerun to resume")
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
    if args.command == "reproduce":
        return _reproduce(args)
    from .fewshot.compare import compare, format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
    out = Path(args.out or f"runs/compare-{args.benchmark}")
    rows = compare(methods, out, _train_flags(args), eval_tasks=args.tasks, resume=args.resume, jobs=args.jobs)
    print()
    print(format_table(rows))
    print(f"\nwritten: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'learning_curves.png'}")
    return 0


def _reproduce(args) -> int:
    if args.figure == "gradient-error":
        from .reproduce.gradient_error import main as gradient_error

        rows = gradient_error(args.out, args.steps)
        print("steps | iMAML CG | Neumann | MAML | first-order MAML   (relative meta-gradient error)")
        for r in rows:
            print(f"{r['steps']:>5} | {r['imaml_cg']:.2e} | {r['neumann']:.2e} | {r['maml']:.2e} | {r['fomaml']:.2e}")
        print(f"written: {args.out}/gradient_error.csv, {args.out}/gradient_error.png")
        return 0
    if args.figure == "memory":
        from .reproduce.memory import reproduce_memory

        try:
            steps = [int(x) for x in args.steps.split(",")]
        except ValueError:
            raise ValueError(f"--steps must be comma-separated integers, got {args.steps!r}") from None
        if not steps or min(steps) < 1:
            raise ValueError(f"--steps must be positive integers, got {args.steps!r}")
        rows = reproduce_memory(args.out, steps=steps, ways=args.ways, shots=args.shots, meta_batch=args.meta_batch,
                                repeats=args.repeats, device=args.device, data_root=args.data_root,
                                point_timeout=args.point_timeout, vectorize=args.vectorize)
        for r in rows:
            if r["status"] == "ok":
                print(f"{r['method']:>9} {r['steps']:>4} steps: {r['peak_memory_mb']:9.1f} MB ({r['memory_kind']}), "
                      f"{r['seconds_per_iteration']:.3f} s / meta-iteration")
            else:
                print(f"{r['method']:>9} {r['steps']:>4} steps: {r['status']}")
        print(f"written: {args.out}/memory.csv, {args.out}/memory.png")
        return 0
    from .reproduce.table import reproduce_table

    common = ["--device", args.device] + (["--data-root", args.data_root] if args.data_root else [])
    imaml = (["--lam", str(args.lam)] if args.lam else []) + (["--lam-scale", args.lam_scale] if args.lam_scale else [])
    results = reproduce_table(args.out, settings=[s.strip() for s in args.settings.split(",") if s.strip()],
                              rows=[m.strip() for m in args.methods.split(",") if m.strip()], budget=args.budget,
                              eval_tasks=args.tasks, imaml_flags=imaml, common_flags=common, jobs=args.jobs,
                              quick=args.quick)
    print(Path(args.out, "table.md").read_text())
    print(f"written: {args.out}/table.md, {args.out}/table.json ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
