"""The meta-learning methods as configurations of the core: problem + inner solver + backend.

| method | inner problem | inner solver | backend |
| --- | --- | --- | --- |
| ``maml`` | ``L_train(phi)`` from ``theta`` | gradient descent | ``Unrolled`` |
| ``fomaml`` | ``L_train(phi)`` from ``theta`` | gradient descent | ``FirstOrder`` |
| ``reptile`` | ``L_train(phi)`` from ``theta`` | gradient descent | ``Reptile`` |
| ``imaml-gd`` | ``L_train(phi) + (lam/2)||phi - theta||^2`` | gradient descent | ``Implicit(CG)`` |
| ``imaml-hf`` | the same | Hessian-free Newton-CG | ``Implicit(CG)`` |

Any backend of the registry :data:`~bilevel.fewshot.backends.BACKENDS` can replace the method's
own (``--backend``): e.g. ``imaml-gd`` with ``unrolled`` backpropagates through the proximal inner loop.

``imaml-gd`` under ``--protocol official`` is the released iMAML code, written exactly in
the library's terms: its inner loop (GD on ``L_train``, then one pull towards ``theta``) is
:class:`~bilevel.GradientDescentThenPull`, and its meta-gradient
``((1 + d) I + H/lam_c)^-1 v`` (``lam_c = lam + 10``) is ``Implicit(CG(ridge=d lam_c))`` on the
iMAML problem with ``lam = lam_c``: that solves ``(H + lam_c (1 + d) I) w = v`` and returns
``lam_c w``, the same vector (and the same CG iterates, up to scale).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from ..adapters import Implicit
from ..solvers.inner import GradientDescent, GradientDescentThenPull, Momentum
from ..hvp import make_ggn
from ..problem import BilevelProblem
from ..meta import imaml_problem, maml_problem
from ..solvers.newton_cg import NewtonCG
from .backends import BACKENDS, OFFICIAL_LAM_DAMPING, implicit_lam

# BACKENDS and OFFICIAL_LAM_DAMPING live in .backends; re-exported here, where they were first defined.
__all__ = ["METHODS", "BACKENDS", "Method", "MethodSetup", "build_method", "OFFICIAL_LAM_DAMPING"]


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


class MethodSetup(NamedTuple):
    """What the trainer needs for one method.

    Attributes:
        problem: the bilevel problem whose hypergradient ``backend`` computes.
        backend: the hypergradient backend.
        adapt: ``None``, or a problem whose inner solver gives the inner solutions passed to
            ``backend`` (``inner_solution=``) instead of ``problem``'s own (official protocol).
        eval_problem: the problem whose inner solver adapts to validation and test tasks.
    """

    problem: BilevelProblem
    backend: object
    adapt: BilevelProblem | None
    eval_problem: BilevelProblem


def _gauss_newton(outputs, criterion, lam: float):
    """``Implicit(matvec=...)`` for ``J^T H_loss J + lam I`` (the proximal term's Hessian is exact)."""

    def build(theta, phi, batch):
        x, y = batch
        return make_ggn(lambda p: outputs(p, x), lambda out: criterion(out, y), phi, ridge=lam)

    return build


def build_method(config, task_loss, outputs=None, criterion=None) -> MethodSetup:
    """The :class:`MethodSetup` of a resolved :class:`~bilevel.fewshot.config.TrainConfig`.

    ``outputs(params, x)`` and ``criterion(out, y)`` (with ``task_loss = criterion(outputs)``) are
    needed only for ``curvature="gauss-newton"`` or ``hf_curvature="gauss-newton"``.
    """
    method = METHODS[config.method]
    if method.inner_solver == "gd":
        solver = (Momentum(lr=config.inner_lr, steps=config.inner_steps, momentum=config.inner_momentum,
                           nesterov=config.inner_nesterov) if config.inner_momentum
                  else GradientDescent(lr=config.inner_lr, steps=config.inner_steps))
    else:
        solver = NewtonCG(steps=config.hf_steps, cg_steps=config.hf_cg_steps, hvp_mode=config.hvp_mode)
    backend = BACKENDS[config.backend or method.backend].build(config)
    if config.curvature == "gauss-newton":
        if not isinstance(backend, Implicit):
            raise ValueError("--curvature gauss-newton applies to the implicit backend (imaml-gd, imaml-hf)")
        if outputs is None or criterion is None:
            raise ValueError("build_method: curvature='gauss-newton' needs outputs= and criterion=")
        backend = dataclasses.replace(backend, matvec=_gauss_newton(outputs, criterion, implicit_lam(config)))
    if config.protocol == "official":
        pull = GradientDescentThenPull(lr=config.inner_lr, gd_steps=config.inner_steps,
                                       pull=config.inner_lr * config.lam)
        problem = imaml_problem(task_loss, implicit_lam(config), solver)
        return MethodSetup(problem, backend, adapt=maml_problem(task_loss, pull),
                           eval_problem=maml_problem(task_loss, solver))  # lam = 0 at test
    if method.problem == "imaml":
        inner_curvature = None
        if config.hf_curvature == "gauss-newton" and method.inner_solver == "newton-cg":
            if outputs is None or criterion is None:
                raise ValueError("build_method: hf_curvature='gauss-newton' needs outputs= and criterion=")
            inner_curvature = _gauss_newton(outputs, criterion, config.lam_effective)
        problem = imaml_problem(task_loss, config.lam_effective, solver, inner_curvature)
    else:
        problem = maml_problem(task_loss, solver)
    return MethodSetup(problem, backend, adapt=None, eval_problem=problem)
