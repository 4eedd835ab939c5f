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
from typing import Any

import torch
from torch.func import grad, grad_and_value, vjp

from bilevel.eager import autograd_grads, eager_ok, grad_leaves
from bilevel.hvp import check_hvp_mode, make_hvp, resolve_hvp_mode
from bilevel.hypergrad import HypergradBackend, Hypergradient
from bilevel.linear_solve import CG, LinearSolver, check_linear_solver
from bilevel.problem import Loss
from bilevel.tree import Params, tree_norm, tree_sub

__all__ = ["Implicit", "implicit_hypergrad"]


def implicit_hypergrad(inner_loss: Loss, outer_loss: Loss, theta: Params, phi: Params,
                       inner_batch: Any, outer_batch: Any, *, linear_solver: LinearSolver,
                       hvp_mode: str = "auto", matvec: Any = None) -> Hypergradient:
    """The implicit hypergradient at a given inner solution ``phi`` (assumed stationary).

    Solves ``[d^2 L_in/dphi^2] w = dL_out/dphi`` with ``linear_solver`` over Hessian-vector
    products, then returns ``dL_out/dtheta - (d^2 L_in/dphi dtheta)^T w`` (one more vjp).
    ``stats`` holds the linear solve's diagnostics and ``inner_grad_norm``, the stationarity
    ``||grad_phi L_in(phi, theta)||`` that the theorem assumes to be 0. ``matvec``, if given,
    builds the operator in place of the inner Hessian: ``matvec(theta, phi, inner_batch) -> (v -> A v)``.
    """
    if resolve_hvp_mode(hvp_mode, phi) == "reverse-over-reverse" and eager_ok(theta, phi, inner_batch, outer_batch):
        return _implicit_hypergrad_autograd(inner_loss, outer_loss, theta, phi, inner_batch, outer_batch,
                                            linear_solver, matvec)
    (g_phi, g_theta), loss = grad_and_value(outer_loss, argnums=(0, 1))(phi, theta, outer_batch)
    if matvec is None:
        operator = make_hvp(lambda p: inner_loss(p, theta, inner_batch), phi, hvp_mode)
    else:
        operator = matvec(theta, phi, inner_batch)
    solve = linear_solver(operator, g_phi)
    inner_grad, mixed_vjp = vjp(lambda th: grad(inner_loss)(phi, th, inner_batch), theta)
    (mixed,) = mixed_vjp(solve.solution)
    # The theorem assumes grad_phi L_in(phi) = 0: report how far the given phi is from it.
    stats = {**solve.diagnostics(), "inner_grad_norm": tree_norm(inner_grad).detach()}
    return Hypergradient(loss.detach(), tree_sub(g_theta, mixed), phi, stats)


def _implicit_hypergrad_autograd(inner_loss, outer_loss, theta, phi, inner_batch, outer_batch, linear_solver,
                                 matvec) -> Hypergradient:
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
    stats = {**solve.diagnostics(), "inner_grad_norm": tree_norm({k: v.detach() for k, v in inner_grad.items()})}
    return Hypergradient(loss.detach(), tree_sub(g_theta, mixed), phi, stats)


@dataclass(frozen=True)
class Implicit(HypergradBackend):
    """Implicit-function-theorem hypergradient at the inner solver's output.

    Args:
        linear_solver: a :class:`~bilevel.LinearSolver`: :class:`~bilevel.CG` (default: run to
            ``tol``), :class:`~bilevel.Neumann`, :class:`~bilevel.Dense`, or your own subclass.
            iMAML uses ``CG(maxiter=5)``.
        hvp_mode: ``"auto"`` (reverse-over-reverse on a CPU, forward-over-reverse on a GPU),
            ``"forward-over-reverse"`` or ``"reverse-over-reverse"`` (:mod:`bilevel.hvp`).
        matvec: ``None`` (the inner Hessian), or ``matvec(theta, phi, inner_batch) -> (v -> A v)``
            building another symmetric operator in its place, e.g. a positive semi-definite
            Gauss-Newton matrix from :func:`~bilevel.make_ggn` (plus iMAML's ``lam I``).

    The answer is exact when the inner problem is solved and the linear solve converged;
    ``stats`` reports the latter.
    """

    linear_solver: Any = field(default_factory=CG)
    hvp_mode: str = "auto"
    matvec: Any = None

    def __post_init__(self):
        check_linear_solver("Implicit", self.linear_solver)
        check_hvp_mode("Implicit", self.hvp_mode)
        if self.matvec is not None and not callable(self.matvec):
            raise TypeError(f"Implicit: matvec must be None or callable as matvec(theta, phi, inner_batch) -> "
                            f"(v -> A v), got {type(self.matvec).__name__}.")

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None):
        phi = problem.inner_solution("Implicit.hypergrad", theta, inner_batch, inner_solution)
        return implicit_hypergrad(problem.inner_loss, problem.outer_loss, theta, phi, inner_batch,
                                  outer_batch, linear_solver=self.linear_solver, hvp_mode=self.hvp_mode,
                                  matvec=self.matvec)
