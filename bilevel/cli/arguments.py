"""The command line's shared argument helpers: the parser class, argparse types, the training flags.

Every ``TrainConfig`` flag defaults to ``None`` here, so that :func:`~bilevel.fewshot.config.resolve`
fills it from the config's tables (and ``--help`` states them); :func:`given` reads back only the
flags that were set.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

from ..fewshot.backends import BACKENDS
from ..fewshot.benchmarks import BENCHMARKS
from ..fewshot.config import (CG_ON_NEGATIVE, CURVATURES, DEFAULTS, LAM_SCALES, ON_SOLVER_FAILURE, PROTOCOLS,
                              VECTORIZE, TrainConfig, describe_default)
from ..fewshot.methods import METHODS
from ..fewshot.models import INITS, NETS, SINUSOID_NETS
from ..hvp import HVP_MODES
from ..validation import check_int

__all__ = ["EXAMPLES", "Parser", "int_at_least", "float_at_least", "positive_int", "positive_float",
           "nonnegative_float", "unit_interval_float", "add_training_flags", "add_threads", "set_threads",
           "given_settings"]

EXAMPLES = """examples:
  bilevel compare --benchmark sinusoid --methods maml,fomaml,reptile,imaml-gd,imaml-hf
  bilevel train --benchmark omniglot --ways 5 --shots 1 --method imaml-gd --iterations 500 --out runs/imaml
  bilevel train --resume runs/imaml --iterations 1000
  bilevel evaluate runs/imaml --tasks 600
"""


class Parser(argparse.ArgumentParser):
    """argparse with one error line (no usage block): the flag, the value and the fix."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def int_at_least(minimum: int):
    """An argparse type: an integer ``>= minimum``, checked by :func:`bilevel.validation.check_int`."""

    def parse(text: str) -> int:
        try:
            return check_int(None, "value", int(text), minimum=minimum)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None

    return parse


def float_at_least(minimum: float, strict: bool, what: str):
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


positive_int = int_at_least(1)
positive_float = float_at_least(0.0, True, "a positive number")
nonnegative_float = float_at_least(0.0, False, "a number >= 0")


def unit_interval_float(text: str) -> float:
    """An argparse type: a float in ``[0, 1)`` (a momentum)."""
    value = nonnegative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _d(name: str) -> str:
    """The default of a TrainConfig field in words, from the config's tables."""
    return describe_default(name)


_ON_SOLVER_FAILURE_HELP = {"warn": "log and go on", "skip-task": "drop that task from the meta-gradient",
                           "stop": "end training with an error"}


def add_training_flags(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    """The TrainConfig flags; every one defaults to None, so that ``resolve`` fills it (config.py)."""
    g = p.add_argument_group("task and method")
    g.add_argument("--benchmark", choices=sorted(BENCHMARKS), help=f"task family ({_d('benchmark')}, which "
                   "needs no download)")
    g.add_argument("--ways", type=positive_int, help=f"classes per task, not set on sinusoid ({_d('ways')})")
    g.add_argument("--shots", type=positive_int, help=f"support examples per class ({_d('shots')})")
    g.add_argument("--queries", type=positive_int, help=f"query examples per class ({_d('queries')})")
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
    h.add_argument("--inner-steps", type=positive_int, help=f"inner gradient steps ({_d('inner_steps')})")
    h.add_argument("--inner-lr", type=positive_float, help=f"inner learning rate ({_d('inner_lr')})")
    h.add_argument("--inner-momentum", type=unit_interval_float, metavar="M",
                   help=f"heavy-ball momentum of the gradient inner loop, 0 for plain gradient descent "
                        f"({_d('inner_momentum')})")
    h.add_argument("--inner-nesterov", action="store_true", default=None,
                   help=f"Nesterov's form of --inner-momentum ({_d('inner_nesterov')})")
    h.add_argument("--lam", type=positive_float, help=f"iMAML's proximal strength lambda ({_d('lam')}; the "
                   "sinusoid values chosen on validation, docs/results/sinusoid-tuning-softplus and, for relu, "
                   "docs/results/sinusoid-tuning)")
    h.add_argument("--lam-scale", choices=LAM_SCALES,
                   help="the support loss that --lam is stated for: mean (as computed) or sum over the ways*shots "
                   f"support examples, i.e. lambda / (ways*shots) on the mean ({_d('lam_scale')})")
    h.add_argument("--cg-steps", type=positive_int, help=f"CG steps for the implicit meta-gradient ({_d('cg_steps')})")
    h.add_argument("--cg-damping", type=nonnegative_float,
                   help=f"CG solves ((1 + d) I + H/lambda) g = grad L_test ({_d('cg_damping')})")
    h.add_argument("--curvature", choices=CURVATURES,
                   help="the matrix of the implicit meta-gradient's solve: the support-loss Hessian or its "
                   f"positive semi-definite Gauss-Newton part J^T H_loss J ({_d('curvature')})")
    h.add_argument("--cg-on-negative", choices=CG_ON_NEGATIVE,
                   help=f"CG meeting negative curvature: continue through it or stop at that direction "
                   f"({_d('cg_on_negative')})")
    h.add_argument("--hf-steps", type=positive_int, help=f"Newton iterations of imaml-hf ({_d('hf_steps')})")
    h.add_argument("--hf-cg-steps", type=positive_int, help=f"CG steps per Newton direction ({_d('hf_cg_steps')})")
    h.add_argument("--hf-curvature", choices=CURVATURES,
                   help="the matrix of imaml-hf's Newton systems: the Hessian of the proximal support loss or "
                   f"its Gauss-Newton part J^T H_loss J + lambda I, as in Martens' Hessian-free ({_d('hf_curvature')})")
    h.add_argument("--truncate-steps", type=positive_int, help=f"steps kept by --backend truncated "
                   f"({_d('truncate_steps')})")
    h.add_argument("--outer-lr", type=positive_float, help=f"Adam learning rate ({_d('outer_lr')})")
    h.add_argument("--outer-eps", type=positive_float, help=f"Adam eps ({_d('outer_eps')})")
    h.add_argument("--meta-batch", type=positive_int, help=f"tasks per meta-iteration ({_d('meta_batch')})")
    h.add_argument("--chunk-size", type=positive_int, help=f"tasks per vmap chunk, to bound memory "
                   f"({_d('chunk_size')})")
    h.add_argument("--memory-budget", dest="memory_budget_mb", metavar="MB", type=positive_float,
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
    r.add_argument("--iterations", type=positive_int, help=f"meta-iterations ({_d('iterations')})")
    r.add_argument("--val-every", type=positive_int, help=f"validate every N iterations ({_d('val_every')})")
    r.add_argument("--val-tasks", type=int_at_least(2), help=f"validation tasks ({_d('val_tasks')})")
    r.add_argument("--checkpoint-every", type=positive_int, help=f"checkpoint every N iterations "
                   f"({_d('checkpoint_every')})")
    r.add_argument("--seed", type=int_at_least(0), help=f"seed of the initialization and the task streams "
                   f"({_d('seed')})")
    r.add_argument("--device", help=f"auto, cpu, cuda or cuda:N ({_d('device')})")
    r.add_argument("--data-root", help=f"data folder ({_d('data_root')})")
    r.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic GPU kernels, slower (docs/reliability.md)")


def given_settings(args) -> dict:
    """The TrainConfig fields set on the command line (argparse leaves the others None)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads``: the torch intra-op threads of this process and those it starts (:func:`set_threads`)."""
    p.add_argument("--threads", type=positive_int, help="torch intra-op threads per process (default: "
                   "$OMP_NUM_THREADS if set, else 1, the fastest for these small networks)")


def set_threads(threads: int | None) -> None:
    """``--threads``, else ``OMP_NUM_THREADS`` if set, else 1: the few-shot networks are small,
    and one thread per process is faster than two, alone and beside a busy process
    (docs/performance.md)."""
    import torch

    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads or 1)  # and for the processes this one starts
    torch.set_num_threads(threads or 1)
