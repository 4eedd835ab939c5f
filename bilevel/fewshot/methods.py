"""The meta-learning methods as configurations of the core: problem + inner solver + backend.

| method | inner problem | inner solver | backend |
| --- | --- | --- | --- |
| ``maml`` | ``L_train(phi)`` from ``theta`` | gradient descent | ``Unrolled`` |
| ``fomaml`` | ``L_train(phi)`` from ``theta`` | gradient descent | ``FirstOrder`` |
| ``reptile`` | ``L_train(phi)`` from ``theta`` | gradient descent | ``Reptile`` |
| ``imaml-gd`` | ``L_train(phi) + (lam/2)||phi - theta||^2`` | gradient descent | ``Implicit(CG)`` |
| ``imaml-hf`` | the same | Hessian-free Newton-CG | ``Implicit(CG)`` |

Any backend can replace the method's own (``--backend``): e.g. ``imaml-gd`` with ``unrolled``
backpropagates through the proximal inner loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters import (FirstOrder, HigherUnrolled, Implicit, Reptile, TorchoptImplicit, TruncatedUnrolled,
                        Unrolled)
from ..inner_solvers import GradientDescent
from ..linear_solve import CG
from ..meta import imaml_problem, maml_problem
from ..newton_cg import NewtonCG

__all__ = ["METHODS", "BACKENDS", "Method", "build_method"]


@dataclass(frozen=True)
class Method:
    name: str
    problem: str  # "maml" or "imaml"
    inner_solver: str  # "gd" or "newton-cg"
    backend: str
    description: str


METHODS = {
    m.name: m
    for m in [
        Method("maml", "maml", "gd", "unrolled", "MAML: backprop through the inner gradient steps"),
        Method("fomaml", "maml", "gd", "first-order", "first-order MAML"),
        Method("reptile", "maml", "gd", "reptile", "Reptile: theta moves towards the adapted weights"),
        Method("imaml-gd", "imaml", "gd", "implicit", "iMAML, gradient-descent inner solver, CG meta-gradient"),
        Method("imaml-hf", "imaml", "newton-cg", "implicit", "iMAML, Hessian-free Newton-CG inner solver"),
    ]
}

BACKENDS = {
    "unrolled": lambda c: Unrolled(),
    "truncated": lambda c: TruncatedUnrolled(c.truncate_steps or max(1, c.inner_steps // 2)),
    "higher": lambda c: HigherUnrolled(),
    # Plain CG through negative curvature, as the iMAML reference code: stopping at the first
    # negative direction would zero a task's meta-gradient. Logged as cg_negative_curvature.
    "implicit": lambda c: Implicit(CG(maxiter=c.cg_steps, negative_curvature="continue"), hvp_mode=c.hvp_mode),
    "torchopt": lambda c: TorchoptImplicit(CG(maxiter=c.cg_steps, negative_curvature="continue")),
    "first-order": lambda c: FirstOrder(),
    "reptile": lambda c: Reptile(),
}


def build_method(config, task_loss):
    """``(problem, backend)`` for a resolved :class:`~bilevel.fewshot.config.TrainConfig`."""
    method = METHODS[config.method]
    if method.inner_solver == "gd":
        solver = GradientDescent(lr=config.inner_lr, steps=config.inner_steps)
    else:
        solver = NewtonCG(steps=config.hf_steps, cg_steps=config.hf_cg_steps, hvp_mode=config.hvp_mode)
    if method.problem == "imaml":
        problem = imaml_problem(task_loss, config.lam, solver)
    else:
        problem = maml_problem(task_loss, solver)
    backend = BACKENDS[config.backend or method.backend](config)
    return problem, backend
