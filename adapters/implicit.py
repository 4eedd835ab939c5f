"""Implicit differentiation of the inner optimality condition (the iMAML meta-gradient).

At a stationary point ``grad_phi L_in(phi*, theta) = 0``, the implicit function theorem gives

    d L_out / d theta = dL_out/dtheta - (d^2 L_in / dphi dtheta)^T [d^2 L_in / dphi^2]^-1 dL_out/dphi

For iMAML, ``L_in = L_train(phi) + (lam/2)||phi - theta||^2``: the Hessian is ``H + lam I``
and the mixed term is ``-lam I``, so this is exactly ``(I + H/lam)^-1 grad L_test(phi*)``.
Only ``phi*`` enters, never the inner path: memory is flat in the number of inner steps
and any inner solver works, including a ``torch.optim`` loop run by the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.func import grad, grad_and_value, vjp

from bilevel.diagnostics import Diagnostics, InnerStationarity, stationarity
from bilevel.eager import autograd_grads, eager_ok, grad_leaves, known_true
from bilevel.hvp import check_hvp_mode, make_hvp, resolve_hvp_mode
from bilevel.hypergrad import HypergradBackend, Hypergradient
from bilevel.solvers.linear import CG, LinearSolver, check_linear_solver
from bilevel.problem import Loss
from bilevel.tree import Params, tree_add, tree_detach, tree_norm, tree_sub
from bilevel.validation import check_positive

__all__ = ["Implicit", "implicit_hypergrad", "newton_change"]

DEFAULT_STATIONARITY_RTOL = 1e-2
DEFAULT_NEWTON_CHECK = 1e-2


def implicit_hypergrad(inner_loss: Loss, outer_loss: Loss, theta: Params, phi: Params,
                       inner_batch: Any, outer_batch: Any, *, linear_solver: LinearSolver,
                       hvp_mode: str = "auto", matvec: Any = None, phi_start: Params | None = None,
                       stationarity_rtol: float | None = DEFAULT_STATIONARITY_RTOL,
                       newton_check: float | None = DEFAULT_NEWTON_CHECK,
                       create_graph: bool = False) -> Hypergradient:
    """The implicit hypergradient at a given inner solution ``phi`` (assumed stationary).

    Solves ``[d^2 L_in/dphi^2] w = dL_out/dphi`` with ``linear_solver`` over Hessian-vector
    products, then returns ``dL_out/dtheta - (d^2 L_in/dphi dtheta)^T w`` (one more vjp).
    ``diagnostics`` holds the linear solve's result and the stationarity
    ``||grad_phi L_in(phi, theta)||`` that the theorem assumes to be 0, judged against its value
    at ``phi_start`` with ``stationarity_rtol`` (not judged without ``phi_start`` or with
    ``stationarity_rtol=None``). ``matvec``, if given, builds the operator in place of the inner
    Hessian: ``matvec(theta, phi, inner_batch) -> (v -> A v)``.

    A small gradient does not bound the hypergradient's error (a hypergradient that is small
    against its terms amplifies ``phi``'s error), so where stationarity is judged and
    ``newton_check`` is set, the hypergradient is also computed at the Newton-refined
    ``phi' = phi - H^-1 grad L_in(phi)`` (two more linear solves) and its relative change
    ``||g(phi) - g(phi')|| / ||g(phi')||``, a first-order estimate of the error, must stay
    below ``newton_check``; it is reported as ``diagnostics.stationarity.newton_change``.

    With ``create_graph=True`` every step is a differentiable ``torch.func`` operation (the
    linear solver's iterations included), so the result is differentiable in ``theta``, in
    ``phi`` and in what the losses close over; to differentiate through ``phi = phi*(theta)``
    pass ``phi`` from :func:`attach_implicit_solution`.
    """
    if (not create_graph and resolve_hvp_mode(hvp_mode, phi) == "reverse-over-reverse"
            and eager_ok(theta, phi, inner_batch, outer_batch)):
        loss, g, solve, inner_grad = _implicit_autograd(inner_loss, outer_loss, theta, phi, inner_batch,
                                                        outer_batch, linear_solver, matvec)
    else:
        (g_phi, g_theta), loss = grad_and_value(outer_loss, argnums=(0, 1))(phi, theta, outer_batch)
        operator = _operator(inner_loss, theta, phi, inner_batch, hvp_mode, matvec)
        solve = linear_solver(operator, g_phi)
        inner_grad, mixed_vjp = vjp(lambda th: grad(inner_loss)(phi, th, inner_batch), theta)
        (mixed,) = mixed_vjp(solve.solution)
        g = tree_sub(g_theta, mixed)
    residual = tree_norm(tree_detach(inner_grad))
    judged = phi_start is not None and stationarity_rtol is not None
    # The reference costs one more gradient, so it is taken only to judge (NaN: not measured).
    reference = _grad_norm(inner_loss, phi_start, theta, inner_batch) if judged else torch.full_like(residual, float("nan"))
    change = None
    if judged and newton_check is not None:
        change = newton_change(inner_loss, outer_loss, theta, phi, inner_batch, outer_batch, linear_solver,
                                hvp_mode, matvec, inner_grad, g, residual)
    stat = stationarity(InnerStationarity, residual, reference, stationarity_rtol if judged else None,
                        newton_change=change, newton_check=newton_check)
    diagnostics = Diagnostics(linear_solve=solve._replace(solution={}), stationarity=stat)
    return Hypergradient(loss if create_graph else loss.detach(), g, tree_detach(phi), diagnostics)


def newton_change(inner_loss, outer_loss, theta, phi, inner_batch, outer_batch, linear_solver, hvp_mode, matvec,
                   inner_grad, g, residual):
    """``||g(phi) - g(phi')|| / ||g(phi')||`` at ``phi' = phi - H^-1 grad L_in(phi)`` (constants).

    0 where ``phi`` is stationary to rounding (``||grad L_in|| <= 1000 eps``, the floor of
    :func:`~bilevel.diagnostics.stationarity`), alone or under ``vmap`` alike; the refinement is
    skipped when every system is that stationary and the values can be read."""
    theta, phi = tree_detach(theta), tree_detach(phi)
    floor = 1000 * torch.finfo(residual.dtype).eps
    if known_true(residual <= floor):
        return torch.zeros_like(residual)
    operator = _operator(inner_loss, theta, phi, inner_batch, hvp_mode, matvec)
    step = linear_solver(operator, tree_detach(inner_grad)).solution
    refined = implicit_hypergrad(inner_loss, outer_loss, theta, tree_sub(phi, step), inner_batch, outer_batch,
                                 linear_solver=linear_solver, hvp_mode=hvp_mode, matvec=matvec,
                                 stationarity_rtol=None, newton_check=None).grad
    scale = torch.clamp(tree_norm(refined), min=floor)
    change = tree_norm(tree_sub(tree_detach(g), refined)) / scale
    return torch.where(residual <= floor, torch.zeros_like(change), change)


def attach_implicit_solution(inner_loss: Loss, theta: Params, phi: Params, inner_batch: Any, *,
                             linear_solver: LinearSolver, hvp_mode: str = "auto", matvec: Any = None) -> Params:
    """``phi`` (same values) with the derivative of ``phi*(theta)`` attached for autograd and ``torch.func``.

    One Newton step with its value cancelled: ``phi - (s - stopgrad(s))`` where
    ``H s = r``, ``r = grad_phi L_in(phi, theta)``, with ``H`` held constant. Its derivative is
    ``-H^-1 d^2 L_in / dphi dtheta``, the implicit function theorem's ``d phi* / d theta`` (and
    likewise for anything the inner loss closes over); its value is ``phi``.

    ``r`` is zero at a solution, where an iterative solver stops at once and its iterations
    carry no derivative; so ``s`` is taken as ``S(c + r) - S(c)`` for a fixed generic ``c`` (a
    deterministic pattern as large as ``phi``), which equals ``H^-1 r`` for any solver ``S``
    that solves its systems. Differentiating through an iterative solver's steps is exact
    when it ran to convergence in as many steps as unknowns, approximate otherwise.
    """
    theta_const = tree_detach(theta)
    operator = _operator(inner_loss, theta_const, phi, inner_batch, hvp_mode, matvec)
    residual = grad(inner_loss)(phi, theta, inner_batch)
    offset = _generic_like(phi)
    s = tree_sub(linear_solver(operator, tree_add(offset, residual)).solution,
                 linear_solver(operator, offset).solution)
    return {k: phi[k] - (s[k] - s[k].detach()) for k in phi}


def _generic_like(tree: Params) -> Params:
    """A fixed vector with no special structure (not an eigenvector of a structured matrix),
    scaled like ``tree``: ``sin(1 + 0.618 i)`` entry by entry, times ``1 + ||tree||``."""
    scale = 1.0 + tree_norm(tree_detach(tree))
    out, start = {}, 0
    for k, v in tree.items():
        i = torch.arange(start, start + v.numel(), dtype=v.dtype, device=v.device).reshape(v.shape)
        out[k] = torch.sin(1.0 + 0.6180339887 * i) * scale
        start += v.numel()
    return out


def _operator(inner_loss, theta, phi, inner_batch, hvp_mode, matvec):
    if matvec is None:
        return make_hvp(lambda p: inner_loss(p, theta, inner_batch), phi, hvp_mode)
    return matvec(theta, phi, inner_batch)


def _grad_norm(inner_loss, phi, theta, inner_batch):
    """``||grad_phi L_in(phi, theta)||`` as a constant."""
    phi, theta = tree_detach(phi), tree_detach(theta)
    if eager_ok(phi, theta, inner_batch):
        with torch.enable_grad():
            p = grad_leaves(phi)
            (g,) = autograd_grads(inner_loss(p, theta, inner_batch), p)
    else:
        g = grad(inner_loss)(phi, theta, inner_batch)
    return tree_norm(tree_detach(g))


def _implicit_autograd(inner_loss, outer_loss, theta, phi, inner_batch, outer_batch, linear_solver, matvec):
    """:func:`implicit_hypergrad` in reverse-over-reverse mode with plain autograd (``bilevel.eager``):
    one graph of ``grad_phi L_in`` serves every Hessian-vector product and the mixed term."""
    with torch.enable_grad():
        p, th = grad_leaves(phi), grad_leaves(theta)
        loss = outer_loss(p, th, outer_batch)
        g_phi, g_theta = autograd_grads(loss, p, th)
        (inner_grad,) = autograd_grads(inner_loss(p, th, inner_batch), p, create_graph=True)
        grad_list = list(inner_grad.values())
        if matvec is None:
            def operator(v):
                return autograd_grads(grad_list, p, grad_outputs=[v[k] for k in inner_grad], retain_graph=True)[0]
        else:
            operator = matvec(theta, phi, inner_batch)
        solve = linear_solver(operator, g_phi)
        (mixed,) = autograd_grads(grad_list, th, grad_outputs=[solve.solution[k] for k in inner_grad])
    return loss.detach(), tree_sub(g_theta, mixed), solve, inner_grad


@dataclass(frozen=True)
class Implicit(HypergradBackend):
    """Implicit-function-theorem hypergradient at the inner solver's output.

    Args:
        linear_solver: a :class:`~bilevel.LinearSolver`: :class:`~bilevel.CG` (default: run to
            ``tol``), :class:`~bilevel.MINRES` (symmetric indefinite: a nonconvex inner problem
            or a saddle point), :class:`~bilevel.Neumann`, :class:`~bilevel.GMRES`,
            :class:`~bilevel.Dense`, or your own subclass. iMAML uses
            ``CG(maxiter=5, truncated=True)``.
        hvp_mode: ``"auto"`` (reverse-over-reverse on every device), ``"forward-over-reverse"``
            or ``"reverse-over-reverse"`` (:mod:`bilevel.hvp`).
        matvec: ``None`` (the inner Hessian), or ``matvec(theta, phi, inner_batch) -> (v -> A v)``
            building another symmetric operator in its place, e.g. a positive semi-definite
            Gauss-Newton matrix from :func:`~bilevel.make_ggn` (plus iMAML's ``lam I``).
        stationarity_rtol: the inner solution counts as stationary when
            ``||grad L_in(phi)|| <= stationarity_rtol * ||grad L_in(phi_0)||``; otherwise the
            failure policy reports it. ``None``: not judged (still reported).
        newton_check: where stationarity is judged, the largest relative change of the
            hypergradient under one Newton step of the inner problem (two more linear solves;
            see :func:`implicit_hypergrad`); ``None``: not checked.

    The answer is exact when the inner problem is solved and the linear solve converged;
    ``diagnostics`` reports both. Supports ``create_graph=True``.
    """

    linear_solver: Any = field(default_factory=CG)
    hvp_mode: str = "auto"
    matvec: Any = None
    stationarity_rtol: float | None = DEFAULT_STATIONARITY_RTOL
    newton_check: float | None = DEFAULT_NEWTON_CHECK

    supports_create_graph: ClassVar[bool] = True

    def __post_init__(self):
        check_linear_solver("Implicit", self.linear_solver)
        check_hvp_mode("Implicit", self.hvp_mode)
        if self.matvec is not None and not callable(self.matvec):
            raise TypeError(f"Implicit: matvec must be None or callable as matvec(theta, phi, inner_batch) -> "
                            f"(v -> A v), got {type(self.matvec).__name__}.")
        if self.stationarity_rtol is not None:
            check_positive("Implicit", "stationarity_rtol", self.stationarity_rtol)
        if self.newton_check is not None:
            check_positive("Implicit", "newton_check", self.newton_check)

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        phi = problem.inner_solution("Implicit.hypergrad", theta, inner_batch, inner_solution)
        if create_graph:
            phi = attach_implicit_solution(problem.inner_loss, theta, phi, inner_batch,
                                           linear_solver=self.linear_solver, hvp_mode=self.hvp_mode,
                                           matvec=self.matvec)
        return implicit_hypergrad(problem.inner_loss, problem.outer_loss, theta, phi, inner_batch,
                                  outer_batch, linear_solver=self.linear_solver, hvp_mode=self.hvp_mode,
                                  matvec=self.matvec, phi_start=tree_detach(problem.init_inner(theta)),
                                  stationarity_rtol=self.stationarity_rtol, newton_check=self.newton_check,
                                  create_graph=create_graph)
