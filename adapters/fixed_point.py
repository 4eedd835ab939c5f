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

from bilevel.diagnostics import Diagnostics, FixedPointStationarity, stationarity
from bilevel.hypergrad import HypergradBackend, Hypergradient, reject_create_graph
from bilevel.solvers.linear import GMRES, LinearSolver, check_linear_solver
from bilevel.problem import FixedPointProblem
from bilevel.tree import Params, tree_add, tree_detach, tree_norm, tree_sub
from bilevel.validation import check_positive

DEFAULT_STATIONARITY_RTOL = 1e-3

__all__ = ["FixedPointImplicit", "UnrolledFixedPoint", "fixed_point_implicit_hypergrad"]


def fixed_point_implicit_hypergrad(map_fn, outer_loss, theta: Params, z: Params, batch: Any, outer_batch: Any,
                                   *, linear_solver: LinearSolver,
                                   stationarity_rtol: float | None = DEFAULT_STATIONARITY_RTOL) -> Hypergradient:
    """The implicit hypergradient at a given fixed point ``z`` (assumed to satisfy ``z = T(z)``).

    Solves ``(I - J)^T w = dL/dz`` with ``linear_solver`` over the matvec ``v -> v - J^T v``
    (one vjp of ``T`` in ``z`` per product), then returns ``dL/dtheta + (dT/dtheta)^T w``
    (one vjp of ``T`` in ``theta``). ``diagnostics`` holds the linear solve's result and the
    stationarity ``||T(z) - z||``, which the theorem assumes to be 0 (judged against ``||z||``
    with ``stationarity_rtol``; ``None``: not judged).
    """
    (g_z, g_theta), loss = grad_and_value(outer_loss, argnums=(0, 1))(z, theta, outer_batch)
    t_z, vjp_z = vjp(lambda zz: map_fn(zz, theta, batch), z)

    def adjoint_matvec(v: Params) -> Params:
        return tree_sub(v, vjp_z(v)[0])

    solve = linear_solver(adjoint_matvec, g_z)
    _, vjp_theta = vjp(lambda th: map_fn(z, th, batch), theta)
    (mixed,) = vjp_theta(solve.solution)
    stat = stationarity(FixedPointStationarity, tree_norm(tree_sub(t_z, z)), tree_norm(z), stationarity_rtol)
    diagnostics = Diagnostics(linear_solve=solve._replace(solution={}), stationarity=stat)
    return Hypergradient(loss.detach(), tree_add(g_theta, mixed), z, diagnostics)


def _check_problem(call: str, problem) -> FixedPointProblem:
    if not isinstance(problem, FixedPointProblem):
        raise TypeError(f"{call}: expected a FixedPointProblem (map, outer_loss, forward_solver, init), got "
                        f"{type(problem).__name__}. For a BilevelProblem use Implicit or Unrolled.")
    return problem


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

        stationarity_rtol: ``z`` counts as a fixed point when ``||T(z) - z|| <= stationarity_rtol
            * ||z||``; ``None``: not judged.

    ``diagnostics``: the linear solve's result, the stationarity ``||T(z*) - z*||`` and, when
    the backend ran the forward solver itself, the forward solve's result. The answer is exact
    when both residuals are 0.

    Example:
        >>> import torch
        >>> from bilevel import Anderson, FixedPointProblem, fixed_point_hypergrad
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
    stationarity_rtol: float | None = DEFAULT_STATIONARITY_RTOL

    def __post_init__(self):
        check_linear_solver("FixedPointImplicit", self.linear_solver)
        if self.stationarity_rtol is not None:
            check_positive("FixedPointImplicit", "stationarity_rtol", self.stationarity_rtol)

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        if create_graph:
            reject_create_graph(f"{type(self).__name__}.hypergrad", self)
        call = "FixedPointImplicit.hypergrad"
        problem = _check_problem(call, problem)
        z, forward = problem.fixed_point(call, theta, inner_batch, inner_solution)
        result = fixed_point_implicit_hypergrad(problem.map, problem.outer_loss, theta, z, inner_batch,
                                                outer_batch, linear_solver=self.linear_solver,
                                                stationarity_rtol=self.stationarity_rtol)
        return result._replace(diagnostics=result.diagnostics._replace(forward_solve=forward))


@dataclass(frozen=True)
class UnrolledFixedPoint(HypergradBackend):
    """Backpropagation through every iteration of the forward solver: the reference path.

    Gives the exact gradient of the computation that ran (the last iterate ``z_K(theta)``),
    which tends to the implicit answer as the forward solve converges; memory grows linearly
    with the number of forward iterations. Cannot take ``inner_solution=``.
    """

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        if create_graph:
            reject_create_graph(f"{type(self).__name__}.hypergrad", self)
        call = "UnrolledFixedPoint.hypergrad"
        problem = _check_problem(call, problem)
        if inner_solution is not None:
            raise TypeError(f"{call}: this backend differentiates through the forward iterations and cannot "
                            "take inner_solution=; use FixedPointImplicit for a fixed point computed elsewhere.")
        problem.require_solver(call)

        def outer_of_theta(th):
            res = problem.solve(th, inner_batch)
            return problem.outer_loss(res.solution, th, outer_batch), res

        g, (loss, forward) = grad_and_value(outer_of_theta, has_aux=True)(theta)
        forward = tree_detach_result(forward)
        return Hypergradient(loss.detach(), g, forward.solution, Diagnostics(forward_solve=forward._replace(solution={})))


def tree_detach_result(result):
    """A solver result with every tensor detached."""
    return result._replace(solution=tree_detach(result.solution),
                           **{k: getattr(result, k).detach() for k in result._fields if k != "solution"})
