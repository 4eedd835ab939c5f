"""Implicit differentiation of a fixed point ``z* = T(z*, theta)`` (deep equilibrium models).

Differentiating ``z* = T(z*, theta)`` gives ``dz*/dtheta = (I - J)^-1 dT/dtheta`` with
``J = dT/dz`` at ``z*``, so for an outer loss ``L(z*(theta), theta)``

    dL/dtheta = dL/dtheta (explicit) + (dT/dtheta)^T w,   (I - J)^T w = dL/dz.

The adjoint system is not symmetric (``J`` is any square Jacobian), so CG does not apply in
general: use :class:`~bilevel.GMRES` (default), the Neumann series ``w = sum_k (J^T)^k dL/dz``
(:class:`~bilevel.Neumann` with ``alpha=1``, i.e. the fixed-point iteration ``w <- J^T w + dL/dz``,
which converges iff the spectral radius of ``J`` is below 1) or :class:`~bilevel.Dense`. Each
product ``J^T v`` is one ``torch.func.vjp`` of ``T`` at ``z*``. Only ``z*`` enters, never the
forward iterations: memory is flat in their number, and ``z*`` may come from anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.func import grad_and_value, vjp

from bilevel.fixed_point import FixedPointProblem
from bilevel.hypergrad import HypergradBackend, Hypergradient
from bilevel.linear_solve import GMRES, LinearSolver, check_linear_solver
from bilevel.tree import Params, tree_add, tree_detach, tree_norm, tree_sub

__all__ = ["FixedPointImplicit", "UnrolledFixedPoint", "fixed_point_implicit_hypergrad"]


def fixed_point_implicit_hypergrad(map_fn, outer_loss, theta: Params, z: Params, batch: Any, outer_batch: Any,
                                   *, linear_solver: LinearSolver) -> Hypergradient:
    """The implicit hypergradient at a given fixed point ``z`` (assumed to satisfy ``z = T(z)``).

    Solves ``(I - J)^T w = dL/dz`` with ``linear_solver`` over the matvec ``v -> v - J^T v``
    (one vjp of ``T`` in ``z`` per product), then returns ``dL/dtheta + (dT/dtheta)^T w``
    (one vjp of ``T`` in ``theta``). ``stats`` holds the linear solve's diagnostics and
    ``fixed_point_residual`` ``= ||T(z) - z||``, which the theorem assumes to be 0.
    """
    (g_z, g_theta), loss = grad_and_value(outer_loss, argnums=(0, 1))(z, theta, outer_batch)
    t_z, vjp_z = vjp(lambda zz: map_fn(zz, theta, batch), z)

    def adjoint_matvec(v: Params) -> Params:
        return tree_sub(v, vjp_z(v)[0])

    solve = linear_solver(adjoint_matvec, g_z)
    _, vjp_theta = vjp(lambda th: map_fn(z, th, batch), theta)
    (mixed,) = vjp_theta(solve.solution)
    stats = {**solve.diagnostics(), "fixed_point_residual": tree_norm(tree_sub(t_z, z)).detach()}
    return Hypergradient(loss.detach(), tree_add(g_theta, mixed), z, stats)


def _check_problem(call: str, problem) -> FixedPointProblem:
    if not isinstance(problem, FixedPointProblem):
        raise TypeError(f"{call}: expected a FixedPointProblem (map, outer_loss, forward_solver, init), got "
                        f"{type(problem).__name__}. For a BilevelProblem use Implicit or Unrolled.")
    return problem


def _forward_stats(diagnostics: dict | None) -> dict:
    if diagnostics is None:  # a given z*: its residual is in fixed_point_residual
        return {}
    return {"forward_converged": diagnostics["converged"], "forward_steps": diagnostics["steps"],
            "forward_diverged": diagnostics["diverged"]}


@dataclass(frozen=True)
class FixedPointImplicit(HypergradBackend):
    """Implicit-function-theorem hypergradient at the fixed point of a :class:`~bilevel.FixedPointProblem`.

    Args:
        linear_solver: a :class:`~bilevel.LinearSolver` for the non-symmetric adjoint system
            ``(I - dT/dz)^T w = dL/dz``: :class:`~bilevel.GMRES` (default, 50 Krylov vectors),
            ``Neumann(alpha=1.0, steps=k)`` (``sum_{i<k} (J^T)^i dL/dz``: no extra memory,
            needs ``rho(J) < 1``), :class:`~bilevel.Dense` (small problems), or
            :class:`~bilevel.CG` only when ``dT/dz`` is symmetric (e.g. ``T`` a gradient step
            ``z - eta grad f(z)``).

    ``stats``: the linear solve's ``converged``, ``steps``, ``residual_norm``,
    ``negative_curvature``, ``diverged``; ``fixed_point_residual`` ``= ||T(z*) - z*||``; and,
    when the backend ran the forward solver itself, ``forward_converged``, ``forward_steps``,
    ``forward_diverged``. The answer is exact when both residuals are 0.

    Example:
        >>> import torch
        >>> from bilevel.fixed_point import Anderson, FixedPointProblem, fixed_point_hypergrad
        >>> problem = FixedPointProblem(
        ...     map=lambda z, theta, x: {"z": 0.5 * z["z"] + theta["b"] * x},  # z* = 2 b x
        ...     outer_loss=lambda z, theta, y: (z["z"] * y).sum(),
        ...     forward_solver=Anderson(steps=20, tol=1e-12), init={"z": torch.zeros((), dtype=torch.float64)})
        >>> b = torch.tensor(3.0, dtype=torch.float64)
        >>> r = fixed_point_hypergrad(problem, {"b": b}, 2.0, 5.0, backend=FixedPointImplicit())
        >>> round(float(r.grad["b"]), 8), round(float(r.inner_solution["z"]), 8)  # dL/db = 2 x y
        (20.0, 12.0)
    """

    linear_solver: Any = field(default_factory=GMRES)

    def __post_init__(self):
        check_linear_solver("FixedPointImplicit", self.linear_solver)

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None):
        call = "FixedPointImplicit.hypergrad"
        problem = _check_problem(call, problem)
        z, forward = problem.fixed_point(call, theta, inner_batch, inner_solution)
        result = fixed_point_implicit_hypergrad(problem.map, problem.outer_loss, theta, z, inner_batch,
                                                outer_batch, linear_solver=self.linear_solver)
        return result._replace(stats={**result.stats, **_forward_stats(forward)})


@dataclass(frozen=True)
class UnrolledFixedPoint(HypergradBackend):
    """Backpropagation through every iteration of the forward solver: the reference path.

    Gives the exact gradient of the computation that ran (the last iterate ``z_K(theta)``),
    which tends to the implicit answer as the forward solve converges; memory grows linearly
    with the number of forward iterations. Cannot take ``inner_solution=``.
    """

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None):
        call = "UnrolledFixedPoint.hypergrad"
        problem = _check_problem(call, problem)
        if inner_solution is not None:
            raise TypeError(f"{call}: this backend differentiates through the forward iterations and cannot "
                            "take inner_solution=; use FixedPointImplicit for a fixed point computed elsewhere.")
        problem.require_solver(call)

        def outer_of_theta(th):
            res = problem.solve(th, inner_batch)
            return problem.outer_loss(res.solution, th, outer_batch), (res.solution, res.diagnostics())

        g, (loss, (z, diagnostics)) = grad_and_value(outer_of_theta, has_aux=True)(theta)
        stats = {"fixed_point_residual": diagnostics["residual_norm"], **_forward_stats(diagnostics)}
        return Hypergradient(loss.detach(), g, tree_detach(z), stats)
