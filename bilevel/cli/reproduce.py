"""``bilevel reproduce``: regenerate the iMAML paper's figures (gradient error, memory) and its Table 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..fewshot.config import LAM_SCALES, VECTORIZE, TrainConfig, describe_default, resolve
from ..validation import check_int, check_output_dir
from .arguments import add_threads, int_at_least, positive_float, positive_int
from .checks import check_environment

__all__ = ["PARSER", "add_arguments", "run"]

PARSER = dict(description="Regenerate the iMAML paper's comparisons (docs/reproduction.md).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="figure", required=True, metavar="{gradient-error,memory,table}")
    ge = sub.add_parser("gradient-error", help="Fig. 2a: meta-gradient error against CG / inner steps",
                        description="Fig. 2a on a logistic-regression iMAML problem solved exactly in float64: "
                        "relative meta-gradient error of iMAML (CG), Neumann, MAML and first-order MAML.")
    ge.add_argument("--steps", type=positive_int, default=20, help="largest iteration count (default: 20)")
    ge.add_argument("--out", default="runs/reproduce/gradient-error", help="output folder")
    me = sub.add_parser("memory", help="Fig. 2b: memory and time per meta-iteration against inner steps",
                        description="Fig. 2b: MAML vs iMAML-GD on Omniglot, each point in a fresh process.")
    me.add_argument("--steps", default="1,5,10,20,40,100", help="inner step counts (default: 1,5,10,20,40,100)")
    me.add_argument("--ways", type=int_at_least(2), default=20)
    me.add_argument("--shots", type=positive_int, default=5)
    me.add_argument("--meta-batch", type=positive_int, default=1, help="tasks per meta-iteration (default: 1)")
    me.add_argument("--repeats", type=positive_int, default=2, help="timed meta-iterations after a warm-up (default: 2)")
    me.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    me.add_argument("--vectorize", choices=VECTORIZE, default="auto",
                    help="vmap over the meta-batch or loop (default: auto, as bilevel train)")
    me.add_argument("--point-timeout", type=positive_float, default=600.0, help="seconds per point (default: 600)")
    me.add_argument("--data-root", help="Omniglot folder (default: $BILEVEL_DATA, else ~/.cache/bilevel)")
    me.add_argument("--out", default="runs/reproduce/memory", help="output folder")
    ta = sub.add_parser("table", help="Table 2: Omniglot few-shot accuracy beside the paper's",
                        description="Train and evaluate every (setting, method) at one budget, resumably; "
                        "writes table.md and table.json beside the paper's numbers.")
    ta.add_argument("--settings", default="5w1s,5w5s,20w1s,20w5s", help="comma-separated (default: all four)")
    ta.add_argument("--methods", default="maml,fomaml,reptile,imaml-gd,imaml-hf,imaml-hf-gn,imaml-gd-official",
                    help="comma-separated rows (default: all seven; imaml-hf-gn is iMAML-HF with "
                         "--curvature gauss-newton, not in the paper)")
    ta.add_argument("--budget", default="20000x32", help="ITERATIONSxMETA_BATCH for every run (default: the paper's "
                    "20000x32, which needs a GPU)")
    ta.add_argument("--quick", action="store_true", help="a smoke run: budget 2x2, 20 test tasks")
    ta.add_argument("--tasks", type=int_at_least(2), default=600, help="test tasks per run (default: 600)")
    ta.add_argument("--lam", type=positive_float,
                    help=f"lambda of the paper-protocol iMAML rows ({describe_default('lam')})")
    ta.add_argument("--lam-scale", choices=LAM_SCALES, help="--lam-scale of the paper-protocol iMAML rows "
                    f"({describe_default('lam_scale')})")
    ta.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once (default: 1)")
    ta.add_argument("--seeds", type=positive_int, default=1, help="training seeds per cell; over several, each "
                    "cell is the mean over seeds with a 95%% interval over seeds (default: 1)")
    ta.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ta.add_argument("--data-root", help="Omniglot folder (default: $BILEVEL_DATA, else ~/.cache/bilevel)")
    ta.add_argument("--out", default="runs/reproduce/table", help="output folder; rerun to resume")
    for figure in (ge, me, ta):
        add_threads(figure)


def run(args: argparse.Namespace) -> int:
    check_output_dir(None, "--out", args.out)
    if args.figure == "gradient-error":
        return _gradient_error(args)
    check_environment(resolve(TrainConfig(benchmark="omniglot", device=args.device, data_root=args.data_root)))
    return _memory(args) if args.figure == "memory" else _table(args)


def _gradient_error(args: argparse.Namespace) -> int:
    from ..reproduce.gradient_error import main as gradient_error

    rows = gradient_error(args.out, args.steps)
    print("steps | iMAML CG | Neumann | MAML | first-order MAML   (relative meta-gradient error)")
    for r in rows:
        print(f"{r['steps']:>5} | {r['imaml_cg']:.2e} | {r['neumann']:.2e} | {r['maml']:.2e} | {r['fomaml']:.2e}")
    print(f"written: {args.out}/gradient_error.csv, {args.out}/gradient_error.png")
    return 0


def _memory(args: argparse.Namespace) -> int:
    from ..reproduce.memory import reproduce_memory

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


def _table(args: argparse.Namespace) -> int:
    from ..reproduce.table import reproduce_table

    common = {k: v for k, v in dict(device=args.device, data_root=args.data_root).items() if v is not None}
    imaml = {k: v for k, v in dict(lam=args.lam, lam_scale=args.lam_scale).items() if v is not None}
    results = reproduce_table(args.out, settings=[s.strip() for s in args.settings.split(",") if s.strip()],
                              rows=[m.strip() for m in args.methods.split(",") if m.strip()], budget=args.budget,
                              eval_tasks=args.tasks, imaml=imaml, common=common, jobs=args.jobs, quick=args.quick,
                              seeds=args.seeds)
    print(Path(args.out, "table.md").read_text())
    print(f"written: {args.out}/table.md, {args.out}/table.json ({len(results)} runs)")
    return 0
