"""The ``bilevel`` command line: ``train``, ``evaluate`` and ``compare`` few-shot methods."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from .data import DataError
from .distributed import World
from .errors import SolverError
from .fewshot.checkpoint import CheckpointError
from .fewshot.benchmarks import BENCHMARKS
from .fewshot.compare import describe_evaluation, describe_training
from .fewshot.config import (CG_ON_NEGATIVE, CURVATURES, DEFAULTS, LAM_SCALES, ON_SOLVER_FAILURE, PROTOCOLS,
                             VECTORIZE, TrainConfig, describe_default, inapplicable, load_config, resolve)
from .fewshot.methods import BACKENDS, METHODS
from .fewshot.models import INITS, NETS, SINUSOID_NETS
from .hvp import HVP_MODES
from .validation import check_int, check_output_dir

EXAMPLES = """examples:
  bilevel compare --benchmark sinusoid --methods maml,fomaml,reptile,imaml-gd,imaml-hf
  bilevel train --benchmark omniglot --ways 5 --shots 1 --method imaml-gd --iterations 500 --out runs/imaml
  bilevel train --resume runs/imaml --iterations 1000
  bilevel evaluate runs/imaml --tasks 600
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one error line (no usage block): the flag, the value and the fix."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(minimum: int):
    """An argparse type: an integer ``>= minimum``, checked by :func:`bilevel.validation.check_int`."""

    def parse(text: str) -> int:
        try:
            return check_int(None, "value", int(text), minimum=minimum)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None

    return parse


def _float_at_least(minimum: float, strict: bool, what: str):
    """An argparse type: a finite float ``> minimum`` (``strict``) or ``>= minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_positive_float = _float_at_least(0.0, True, "a positive number")
_nonnegative_float = _float_at_least(0.0, False, "a number >= 0")


def _unit_interval_float(text: str) -> float:
    """An argparse type: a float in ``[0, 1)`` (a momentum)."""
    value = _nonnegative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _d(name: str) -> str:
    """The default of a TrainConfig field in words, from the config's tables."""
    return describe_default(name)


_ON_SOLVER_FAILURE_HELP = {"warn": "log and go on", "skip-task": "drop that task from the meta-gradient",
                           "stop": "end training with an error"}


def _add_training_flags(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    """The TrainConfig flags; every one defaults to None, so that ``resolve`` fills it (config.py)."""
    g = p.add_argument_group("task and method")
    g.add_argument("--benchmark", choices=sorted(BENCHMARKS), help=f"task family ({_d('benchmark')}, which "
                   "needs no download)")
    g.add_argument("--ways", type=_positive_int, help=f"classes per task, not set on sinusoid ({_d('ways')})")
    g.add_argument("--shots", type=_positive_int, help=f"support examples per class ({_d('shots')})")
    g.add_argument("--queries", type=_positive_int, help=f"query examples per class ({_d('queries')})")
    if with_method:
        g.add_argument("--method", choices=sorted(METHODS), help=f"{_d('method')}. " + "; ".join(
            f"{m.name}: {m.description}" for m in METHODS.values()))
    g.add_argument("--protocol", choices=PROTOCOLS,
                   help="paper: Algorithm 2 as written; official: the released iMAML code's inner loop, "
                   "damped CG, Adam eps, K queries, init and lam = 0 at test (imaml-gd only; docs/reproduction.md) "
                   f"({_d('protocol')})")
    g.add_argument("--net", choices=NETS + SINUSOID_NETS,
                   help="conv4 variant: strided (MAML's net) or maxpool; sinusoid: relu (Finn et al.'s) or "
                        f"softplus (smooth, so iMAML's inner problem can be solved) ({_d('net')})")
    g.add_argument("--init", choices=INITS,
                   help=f"conv initialization: torch or official (xavier gain 1.73) ({_d('init')})")
    g.add_argument("--backend", choices=sorted(BACKENDS),
                   help="replace the method's hypergradient backend (e.g. torchopt, higher, truncated) "
                   f"({_d('backend')})")
    h = p.add_argument_group("hyperparameters (defaults from the iMAML paper where it gives them)")
    h.add_argument("--inner-steps", type=_positive_int, help=f"inner gradient steps ({_d('inner_steps')})")
    h.add_argument("--inner-lr", type=_positive_float, help=f"inner learning rate ({_d('inner_lr')})")
    h.add_argument("--inner-momentum", type=_unit_interval_float, metavar="M",
                   help=f"heavy-ball momentum of the gradient inner loop, 0 for plain gradient descent "
                        f"({_d('inner_momentum')})")
    h.add_argument("--inner-nesterov", action="store_true", default=None,
                   help=f"Nesterov's form of --inner-momentum ({_d('inner_nesterov')})")
    h.add_argument("--lam", type=_positive_float, help=f"iMAML's proximal strength lambda ({_d('lam')}; the "
                   "sinusoid values chosen on validation, docs/results/sinusoid-tuning-softplus and, for relu, "
                   "docs/results/sinusoid-tuning)")
    h.add_argument("--lam-scale", choices=LAM_SCALES,
                   help="the support loss that --lam is stated for: mean (as computed) or sum over the ways*shots "
                   f"support examples, i.e. lambda / (ways*shots) on the mean ({_d('lam_scale')})")
    h.add_argument("--cg-steps", type=_positive_int, help=f"CG steps for the implicit meta-gradient ({_d('cg_steps')})")
    h.add_argument("--cg-damping", type=_nonnegative_float,
                   help=f"CG solves ((1 + d) I + H/lambda) g = grad L_test ({_d('cg_damping')})")
    h.add_argument("--curvature", choices=CURVATURES,
                   help="the matrix of the implicit meta-gradient's solve: the support-loss Hessian or its "
                   f"positive semi-definite Gauss-Newton part J^T H_loss J ({_d('curvature')})")
    h.add_argument("--cg-on-negative", choices=CG_ON_NEGATIVE,
                   help=f"CG meeting negative curvature: continue through it or stop at that direction "
                   f"({_d('cg_on_negative')})")
    h.add_argument("--hf-steps", type=_positive_int, help=f"Newton iterations of imaml-hf ({_d('hf_steps')})")
    h.add_argument("--hf-cg-steps", type=_positive_int, help=f"CG steps per Newton direction ({_d('hf_cg_steps')})")
    h.add_argument("--hf-curvature", choices=CURVATURES,
                   help="the matrix of imaml-hf's Newton systems: the Hessian of the proximal support loss or "
                   f"its Gauss-Newton part J^T H_loss J + lambda I, as in Martens' Hessian-free ({_d('hf_curvature')})")
    h.add_argument("--truncate-steps", type=_positive_int, help=f"steps kept by --backend truncated "
                   f"({_d('truncate_steps')})")
    h.add_argument("--outer-lr", type=_positive_float, help=f"Adam learning rate ({_d('outer_lr')})")
    h.add_argument("--outer-eps", type=_positive_float, help=f"Adam eps ({_d('outer_eps')})")
    h.add_argument("--meta-batch", type=_positive_int, help=f"tasks per meta-iteration ({_d('meta_batch')})")
    h.add_argument("--chunk-size", type=_positive_int, help=f"tasks per vmap chunk, to bound memory "
                   f"({_d('chunk_size')})")
    h.add_argument("--memory-budget", dest="memory_budget_mb", metavar="MB", type=_positive_float,
                   help="CUDA memory one meta-step may add (MB): the largest vmap chunk that fits, measured on a "
                   f"validation meta-batch before training; not with --chunk-size, CUDA only ({_d('memory_budget_mb')})")
    h.add_argument("--hvp-mode", choices=HVP_MODES,
                   help="Hessian-vector products of the implicit backend and Newton-CG (reverse-over-reverse also "
                   f"covers ops without forward-mode rules) ({_d('hvp_mode')})")
    h.add_argument("--vectorize", choices=VECTORIZE,
                   help="one vmap over the meta-batch (on) or a loop over tasks (off); auto: vmap, except a "
                   f"loop for conv nets on a CPU, where it is faster ({_d('vectorize')})")
    h.add_argument("--on-solver-failure", choices=ON_SOLVER_FAILURE,
                   help="what to do when a task's linear solve does not converge: " + ", ".join(
                       f"{k} ({_ON_SOLVER_FAILURE_HELP[k]}{', default' if k == DEFAULTS['on_solver_failure'] else ''})"
                       for k in ON_SOLVER_FAILURE))
    r = p.add_argument_group("run")
    r.add_argument("--iterations", type=_positive_int, help=f"meta-iterations ({_d('iterations')})")
    r.add_argument("--val-every", type=_positive_int, help=f"validate every N iterations ({_d('val_every')})")
    r.add_argument("--val-tasks", type=_int_at_least(2), help=f"validation tasks ({_d('val_tasks')})")
    r.add_argument("--checkpoint-every", type=_positive_int, help=f"checkpoint every N iterations "
                   f"({_d('checkpoint_every')})")
    r.add_argument("--seed", type=_int_at_least(0), help=f"seed of the initialization and the task streams "
                   f"({_d('seed')})")
    r.add_argument("--device", help=f"auto, cpu, cuda or cuda:N ({_d('device')})")
    r.add_argument("--data-root", help=f"data folder ({_d('data_root')})")
    r.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic GPU kernels, slower (docs/reliability.md)")


def _given(args) -> dict:
    """The TrainConfig fields set on the command line (argparse leaves the others None)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bilevel", description="Meta-train and evaluate few-shot methods (MAML, first-order MAML, Reptile, "
        "iMAML-GD, iMAML-HF) with the bilevel library.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,compare,reproduce,bench}")

    t = sub.add_parser("train", help="meta-train one method", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Meta-train one method; writes config.json, metrics.jsonl, checkpoint.pt and "
                       "summary.json to --out.")
    _add_training_flags(t)
    t.add_argument("--out", help="run directory (default: runs/<benchmark>-<method>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped "
                   "(its saved config is used: other training flags must agree with it; --iterations may "
                   "extend it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="test accuracy with a 95%% confidence interval",
                       description="Adapt the trained run to test tasks and report the mean metric +- 1.96 "
                       "std / sqrt(tasks).")
    e.add_argument("run_dir", help="a run directory written by `bilevel train`")
    e.add_argument("--tasks", type=_int_at_least(2), help="test tasks (default: the run's eval_tasks, "
                   f"{DEFAULTS['eval_tasks']} unless set, as in the paper)")
    e.add_argument("--split", choices=["test", "val"], default="test", help="which split (default: test)")
    e.add_argument("--quiet", action="store_true", help="print only the result line")

    c = sub.add_parser("compare", help="train and evaluate several methods, print a table",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train and evaluate each method, then print a table (metric +- CI, time per "
                       "iteration, peak memory) and write compare.md, compare.csv and learning_curves.png. "
                       "A flag that a method does not use (--lam for maml) is dropped for that method.",
                       epilog=EXAMPLES)
    c.add_argument("--methods", default="maml,fomaml,reptile,imaml-gd,imaml-hf",
                   help="comma-separated methods (default: all five)")
    _add_training_flags(c, with_method=False)
    c.add_argument("--out", help="output folder (default: runs/compare-<benchmark>, plus -<net> for a "
                   "--net other than the benchmark's default)")
    c.add_argument("--tasks", type=_int_at_least(2), help=f"test tasks per method ({_d('eval_tasks')})")
    c.add_argument("--resume", action="store_true", help="keep finished runs (and their evaluations) in --out, "
                   "continue unfinished ones; their saved settings must match the flags (--iterations aside)")
    c.add_argument("--seeds", type=_positive_int, default=1,
                   help="training seeds per method, --seed, --seed + 1, ...; over several the table reports the "
                   "mean over seeds with a 95%% interval over seeds, each seed's score and the paired difference "
                   "to --reference (default: 1)")
    c.add_argument("--reference", help="the method that the paired differences over seeds are taken against "
                   "(default: maml when compared, else the first method)")
    c.add_argument("--jobs", type=_positive_int,
                   help="runs (method x seed) trained at once, one process each (default: one per core, at most "
                   "one per run; with one thread each this is faster than one method at a time, docs/performance.md)")

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
    me.add_argument("--ways", type=_int_at_least(2), default=20)
    me.add_argument("--shots", type=_positive_int, default=5)
    me.add_argument("--meta-batch", type=_positive_int, default=1, help="tasks per meta-iteration (default: 1)")
    me.add_argument("--repeats", type=_positive_int, default=2, help="timed meta-iterations after a warm-up (default: 2)")
    me.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    me.add_argument("--vectorize", choices=VECTORIZE, default="auto",
                    help="vmap over the meta-batch or loop (default: auto, as bilevel train)")
    me.add_argument("--point-timeout", type=_positive_float, default=600.0, help="seconds per point (default: 600)")
    me.add_argument("--data-root", help="Omniglot folder (default: $BILEVEL_DATA, else ~/.cache/bilevel)")
    me.add_argument("--out", default="runs/reproduce/memory", help="output folder")
    ta = rsub.add_parser("table", help="Table 2: Omniglot few-shot accuracy beside the paper's",
                         description="Train and evaluate every (setting, method) at one budget, resumably; "
                         "writes table.md and table.json beside the paper's numbers.")
    ta.add_argument("--settings", default="5w1s,5w5s,20w1s,20w5s", help="comma-separated (default: all four)")
    ta.add_argument("--methods", default="maml,fomaml,reptile,imaml-gd,imaml-hf,imaml-hf-gn,imaml-gd-official",
                    help="comma-separated rows (default: all seven; imaml-hf-gn is iMAML-HF with "
                         "--curvature gauss-newton, not in the paper)")
    ta.add_argument("--budget", default="20000x32", help="ITERATIONSxMETA_BATCH for every run (default: the paper's "
                    "20000x32, which needs a GPU)")
    ta.add_argument("--quick", action="store_true", help="a smoke run: budget 2x2, 20 test tasks")
    ta.add_argument("--tasks", type=_int_at_least(2), default=600, help="test tasks per run (default: 600)")
    ta.add_argument("--lam", type=_positive_float, help=f"lambda of the paper-protocol iMAML rows ({_d('lam')})")
    ta.add_argument("--lam-scale", choices=LAM_SCALES, help="--lam-scale of the paper-protocol iMAML rows "
                    f"({_d('lam_scale')})")
    ta.add_argument("--jobs", type=_positive_int, default=1, help="runs trained at once (default: 1)")
    ta.add_argument("--seeds", type=_positive_int, default=1, help="training seeds per cell; over several, each "
                    "cell is the mean over seeds with a 95%% interval over seeds (default: 1)")
    ta.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ta.add_argument("--data-root", help="Omniglot folder (default: $BILEVEL_DATA, else ~/.cache/bilevel)")
    ta.add_argument("--out", default="runs/reproduce/table", help="output folder; rerun to resume")
    sub.add_parser("bench", help="speed and memory against higher, TorchOpt and learn2learn (bilevel bench --help)",
                   add_help=False)
    for p in (t, e, c, ge, me, ta):
        p.add_argument("--threads", type=_positive_int, help="torch intra-op threads per process (default: "
                       "$OMP_NUM_THREADS if set, else 1, the fastest for these small networks)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser: bilevel bench --help
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    _set_threads(getattr(args, "threads", None))
    try:
        return _dispatch(args)
    except (ValueError, DataError, SolverError, CheckpointError) as exc:  # a user's error or a run's end
        message = " ".join(str(exc).split())  # one line, whatever the message's layout
        print(f"bilevel {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"bilevel {args.command}: {str(exc) or 'interrupted; resume with --resume'}", file=sys.stderr)
        return 130


def _set_threads(threads: int | None) -> None:
    """``--threads``, else ``OMP_NUM_THREADS`` if set, else 1: the few-shot networks are small,
    and one thread per process is faster than two, alone and beside a busy process
    (docs/performance.md)."""
    import os

    import torch

    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads or 1)  # and for the processes this one starts
    torch.set_num_threads(threads or 1)


# --------------------------------------------------------------------------- checks before any work


def _check_device(device: str) -> None:
    """A CUDA device that torch cannot see is refused here, not after the data are loaded."""
    if device.startswith("cuda"):
        import torch

        index = int(device[5:]) if device.startswith("cuda:") else 0
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no CUDA device; use --device cpu (or auto)")
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s); "
                             "use --device cuda:0")


def _check_environment(config: TrainConfig) -> None:
    """The device and the data of a resolved config, cheaply (nothing is loaded)."""
    _check_device(config.device)
    BENCHMARKS[config.benchmark].check_data(config.data_root)


def _refuse_inapplicable(config: TrainConfig) -> None:
    problems = inapplicable(config)
    if problems:
        raise ValueError(next(iter(problems.values())))


def _run_dir(flag: str, run_dir: Path) -> TrainConfig:
    """The resolved saved config of an existing run directory, or a one-line error."""
    where = f"{flag} {run_dir}".lstrip()
    if not run_dir.is_dir():
        raise ValueError(f"{where}: no such run directory; train one with `bilevel train --out {run_dir}`")
    if not (run_dir / "checkpoint.pt").is_file():
        raise ValueError(f"{where}: no checkpoint.pt there; start a run with --out {run_dir}")
    try:
        return resolve(load_config(run_dir / "config.json"))
    except ValueError as exc:
        raise ValueError(f"{where}: its config.json: {exc}") from None


def _resumed_config(args) -> TrainConfig:
    """``--resume``: the saved config (``--iterations`` aside, given flags must agree with it)."""
    run_dir = Path(args.resume)
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise ValueError(f"--out {args.out} contradicts --resume {run_dir}: a resumed run stays in its folder; "
                         "drop --out")
    saved = _run_dir("--resume", run_dir)
    given = _given(args)
    iterations = given.pop("iterations", None)
    differ = [f"--{k.replace('_', '-')} {v} (the run has {getattr(saved, k)})" for k, v in given.items()
              if getattr(saved, k) != v]
    if differ:
        raise ValueError(f"--resume {run_dir}: {', '.join(differ)}: a resumed run keeps its saved settings; drop "
                         "these flags, or start a new run with --out")
    check_output_dir(None, "--resume", run_dir)
    return resolve(dataclasses.replace(saved, iterations=iterations or saved.iterations))


# --------------------------------------------------------------------------- the commands


def _dispatch(args) -> int:
    from .fewshot.trainer import evaluate, train

    if args.command == "train":
        if args.resume:
            config = _resumed_config(args)
            out = args.resume
        else:
            asked = TrainConfig(**_given(args))
            config = resolve(asked)
            _refuse_inapplicable(asked)
            out = args.out or f"runs/{config.benchmark}-{config.method}"
            check_output_dir(None, "--out", out)
        _check_environment(config)
        if args.resume:
            summary = train(None, out, resume=True, iterations=args.iterations, progress=not args.quiet)
        else:
            summary = train(config, out, progress=not args.quiet)
        if World.launched().is_main:  # under torchrun, rank 0 prints the result
            print(describe_training(summary, out))
        return 0
    if args.command == "evaluate":
        config = _run_dir("", Path(args.run_dir))
        check_output_dir(None, "RUN_DIR", args.run_dir)  # evaluation-<split>.json goes there
        _check_environment(config)
        result = evaluate(args.run_dir, tasks=args.tasks, split=args.split, progress=not args.quiet)
        if World.launched().is_main:  # under torchrun, rank 0 prints the result
            print(describe_evaluation(result))
        return 0
    if args.command == "reproduce":
        return _reproduce(args)
    from .fewshot.compare import compare, format_table, run_configs

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(sorted(METHODS))}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods {args.methods!r} names a method twice; name each once")
    configs = run_configs({m: dict(method=m) for m in methods}, _given(args))
    first = next(iter(configs.values()))
    default_net = BENCHMARKS[first.benchmark].default_net
    out = Path(args.out or f"runs/compare-{first.benchmark}" + (f"-{first.net}" if first.net != default_net else ""))
    check_output_dir(None, "--out", out)
    _check_environment(first)  # the methods share the benchmark, data and device
    jobs = args.jobs or max(1, min(len(configs) * args.seeds, os.cpu_count() or 1))
    if args.reference is not None and args.seeds < 2:
        raise ValueError("--reference sets the method of the paired differences over seeds; it needs --seeds N >= 2")
    rows = compare(configs, out, eval_tasks=args.tasks, resume=args.resume, jobs=jobs, seeds=args.seeds,
                   reference=args.reference)
    print()
    print(format_table(rows, args.reference))
    written = ["compare.md", "compare.csv", "learning_curves.png"] + (["compare.json"] if args.seeds > 1 else [])
    print("\nwritten: " + ", ".join(str(out / name) for name in written))
    return 0


def _reproduce(args) -> int:
    check_output_dir(None, "--out", args.out)
    if args.figure == "gradient-error":
        from .reproduce.gradient_error import main as gradient_error

        rows = gradient_error(args.out, args.steps)
        print("steps | iMAML CG | Neumann | MAML | first-order MAML   (relative meta-gradient error)")
        for r in rows:
            print(f"{r['steps']:>5} | {r['imaml_cg']:.2e} | {r['neumann']:.2e} | {r['maml']:.2e} | {r['fomaml']:.2e}")
        print(f"written: {args.out}/gradient_error.csv, {args.out}/gradient_error.png")
        return 0
    _check_environment(resolve(TrainConfig(benchmark="omniglot", device=args.device, data_root=args.data_root)))
    if args.figure == "memory":
        from .reproduce.memory import reproduce_memory

        try:
            steps = [check_int(None, "--steps", int(x)) for x in args.steps.split(",")]
        except ValueError:
            raise ValueError(f"--steps must be comma-separated positive integers, got {args.steps!r}") from None
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

    common = {k: v for k, v in dict(device=args.device, data_root=args.data_root).items() if v is not None}
    imaml = {k: v for k, v in dict(lam=args.lam, lam_scale=args.lam_scale).items() if v is not None}
    results = reproduce_table(args.out, settings=[s.strip() for s in args.settings.split(",") if s.strip()],
                              rows=[m.strip() for m in args.methods.split(",") if m.strip()], budget=args.budget,
                              eval_tasks=args.tasks, imaml=imaml, common=common, jobs=args.jobs, quick=args.quick,
                              seeds=args.seeds)
    print(Path(args.out, "table.md").read_text())
    print(f"written: {args.out}/table.md, {args.out}/table.json ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
