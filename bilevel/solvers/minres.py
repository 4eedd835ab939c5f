"""MINRES (Paige and Saunders, 1975) for a symmetric, possibly indefinite ``A x = b``.

The implicit hypergradient solves ``H w = g`` with the inner Hessian ``H``. CG needs ``H``
positive definite; at the solution of a nonconvex inner problem, or at a saddle point of a
min-max inner problem, ``H`` is symmetric but indefinite, and CG may break down or stop at the
first direction with ``p^T H p <= 0``. MINRES needs only symmetry: it builds the same Lanczos
basis as CG (one matvec and a few vectors per iteration, no growing memory as in GMRES) and
returns the iterate of the Krylov space that minimizes ``||b - A x||``.

Invariants (those of :mod:`bilevel.solvers.linear`): no Python control flow on tensor values, a
fixed number of iterations that freeze once converged (so a batch of systems solves under
``torch.func.vmap``), early return outside ``vmap``, every operation a differentiable torch op,
and a :class:`~bilevel.LinearSolveResult` that reports failure instead of hiding it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..eager import known_true
from .linear import (LinearSolver, LinearSolveResult, Matvec, _raise_if_failed, budget_truncated, krylov_operator,
                     threshold)
from ..tree import Params, tree_axpy, tree_dot, tree_scale, tree_sub, tree_where, tree_zeros_like
from ..validation import check_flag, check_int, check_nonnegative

__all__ = ["solve_minres", "MINRES"]


def _safe_sqrt(t: Tensor) -> Tensor:
    # sqrt with a zero (not infinite) derivative at 0, so a lucky breakdown or a frozen
    # system does not turn gradients through the iterations into NaN.
    positive = t > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, t, torch.ones_like(t))), torch.zeros_like(t))


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # A zero denominator means a breakdown or a frozen system, where the quotient is unused.
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


def solve_minres(matvec: Matvec, b: Params, *, init: Params | None = None, maxiter: int | None = None,
                 tol: float = 1e-10, atol: float = 0.0, ridge: float = 0.0, truncated: bool = False,
                 throw: bool = False) -> LinearSolveResult:
    """MINRES for a symmetric, possibly indefinite ``A``: solves ``(A + ridge I) x = b``.

    Lanczos builds an orthonormal basis ``V_k`` of ``span{r0, A r0, ..., A^(k-1) r0}`` with
    ``A V_k = V_{k+1} T_k`` (``T_k`` tridiagonal, ``(k+1) x k``); Givens rotations update the QR
    factorization of ``T_k`` one column at a time, and ``x_k = x_0 + V_k y_k`` with ``y_k``
    minimizing ``||beta_1 e_1 - T_k y||`` = ``||b - A x_k||``. So the residual never grows, and
    each iteration costs one matvec, and memory is five vectors (CG: three) whatever ``k``.
    In exact arithmetic it reaches ``A^-1 b`` in at most ``n`` steps for any symmetric
    nonsingular ``A``; in floating point the basis loses orthogonality and ill-conditioned
    systems may need more (raise ``maxiter``).

    Runs at most ``maxiter`` iterations (default: the number of unknowns, at least 1), freezing
    ``x`` once the recursively updated residual ``|phibar_k|`` is ``<= max(tol ||b||, atol)``,
    or at a breakdown (``beta_{k+1} = 0``: the Krylov space is exhausted, the "lucky"
    breakdown that solves the system exactly when ``A`` is nonsingular). Outside ``vmap`` it
    returns as soon as every system has stopped; under ``vmap`` it runs all ``maxiter``
    iterations with frozen updates. The reported residual is recomputed as ``||b - A x||``
    with one more matvec, and ``converged`` is judged on it.

    ``negative_curvature`` reports that the Lanczos matrix ``T_k`` of the iterations run is not
    positive definite (a pivot ``d_k = alpha_k - beta_k^2 / d_{k-1}`` of its ``L D L^T``
    factorization is ``<= 0``): exactly the iterations at which CG on the same system meets
    ``p^T A p <= 0``. It proves ``A + ridge I`` is not positive definite (the eigenvalues of
    ``T_k`` lie inside ``A``'s spectrum); ``False`` does not prove it is. MINRES does not stop
    there: for MINRES the flag is information, not failure. ``truncated=True`` declares
    ``maxiter`` a deliberate budget (see :class:`~bilevel.LinearSolveResult`).

    ``A`` must be symmetric (``matvec`` a Hessian-vector product, a KKT matrix); for a
    non-symmetric ``A`` use :func:`~bilevel.solve_gmres`. Every step is a torch op, so
    ``torch.autograd`` and ``torch.func`` differentiate through the iterations. That gives the
    derivative of the returned iterate: it matches ``d(A^-1 b)`` once the solve has converged,
    but not for an iterate that stopped early (at a budget, or at a lucky breakdown of a matrix
    with few distinct eigenvalues, whose perturbations need a larger Krylov space).

    Args:
        matvec: ``v -> A v`` over dicts shaped like ``b``.
        b: the right-hand side, a dict of tensors.
        init: starting point ``x_0`` (``None``: zero).
        maxiter: iterations (matvecs) at most; ``None``: the number of unknowns.
        tol: stop once ``||b - A x|| <= max(tol ||b||, atol)``.
        atol: the absolute floor of that test.
        ridge: solve ``(A + ridge I) x = b``.
        truncated: ``maxiter`` is a deliberate budget, reported as ``truncated``, not failure.
        throw: raise :class:`~bilevel.SolverError` when not converged (outside ``vmap`` only).

    Returns:
        A :class:`~bilevel.LinearSolveResult`.

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 2.0], [2.0, -3.0]])  # symmetric indefinite: eigenvalues of both signs
        >>> res = solve_minres(lambda v: {"x": A @ v["x"]}, {"x": torch.tensor([1.0, 0.0])}, tol=1e-6)
        >>> torch.allclose(A @ res.solution["x"], torch.tensor([1.0, 0.0]), atol=1e-5), bool(res.converged)
        (True, True)
        >>> bool(res.negative_curvature)  # CG would have met p^T A p <= 0 here
        True
    """
    op, maxiter = krylov_operator("solve_minres", matvec, b, maxiter, tol, atol, ridge)
    check_flag("solve_minres", "truncated", truncated)

    x = tree_zeros_like(b) if init is None else init
    r = b if init is None else tree_sub(b, op(x))
    beta1 = _safe_sqrt(tree_dot(r, r))
    one, zero = torch.ones_like(beta1), torch.zeros_like(beta1)
    thresh = threshold(_safe_sqrt(tree_dot(b, b)), tol, atol)
    # Lanczos state: v_{k-1}, v_k and the off-diagonal beta_k between them (0 before the first column).
    v_prev, v, beta = tree_zeros_like(b), tree_scale(_safe_div(one, beta1), r), zero
    # QR state: the rotations G_{k-2} and G_{k-1}, the directions w_{k-2} and w_{k-1}, and the
    # rotated right-hand side phibar (|phibar| is the residual norm).
    c_prev, s_prev, c, s = one, zero, one, zero
    w_prev, w = tree_zeros_like(b), tree_zeros_like(b)
    phibar = beta1
    pivot = one  # d_{k-1} of T_k = L D L^T
    done = beta1 <= thresh
    negative = torch.zeros_like(done)
    breakdown = torch.zeros_like(done)
    steps = torch.zeros((), dtype=torch.int64, device=beta1.device)
    for _ in range(maxiter):
        if known_true(done):
            break
        active = ~done
        # Lanczos: A v_k = beta_k v_{k-1} + alpha_k v_k + beta_{k+1} v_{k+1}.
        p = tree_axpy(-beta, v_prev, op(v))
        alpha = tree_dot(v, p)
        p = tree_axpy(-alpha, v, p)
        beta_next = _safe_sqrt(tree_dot(p, p))
        v_next = tree_scale(_safe_div(one, beta_next), p)
        # Sign information of T_k: all pivots positive iff T_k is positive definite.
        new_pivot = alpha - _safe_div(beta ** 2, pivot)
        negative = negative | (active & (new_pivot <= 0))
        # The new column (beta_k, alpha_k, beta_{k+1}) through G_{k-2}, G_{k-1}, then a new G_k.
        eps = s_prev * beta
        dbar = c_prev * beta
        delta = c * dbar + s * alpha
        gbar = c * alpha - s * dbar
        gamma = _safe_sqrt(gbar ** 2 + beta_next ** 2)
        c_new = torch.where(gamma > 0, _safe_div(gbar, gamma), one)
        s_new = _safe_div(beta_next, gamma)
        tau = c_new * phibar
        w_new = tree_scale(_safe_div(one, gamma), tree_axpy(-eps, w_prev, tree_axpy(-delta, w, v)))
        x_new = tree_axpy(tau, w_new, x)
        # Freeze every piece of state once done, so a frozen system stays finite (and so do
        # gradients through it) and vmap and the early return give the same answer.
        x = tree_where(active, x_new, x)
        v_prev, v = tree_where(active, v, v_prev), tree_where(active, v_next, v)
        w_prev, w = tree_where(active, w, w_prev), tree_where(active, w_new, w)
        beta = torch.where(active, beta_next, beta)
        c_prev, s_prev = torch.where(active, c, c_prev), torch.where(active, s, s_prev)
        c, s = torch.where(active, c_new, c), torch.where(active, s_new, s)
        phibar = torch.where(active, -s_new * phibar, phibar)
        pivot = torch.where(active, new_pivot, pivot)
        steps = steps + active.to(torch.int64)
        exhausted = active & ((beta_next == 0) | (gamma == 0))
        breakdown = breakdown | exhausted
        done = done | exhausted | (torch.abs(phibar) <= thresh)
    res = tree_sub(b, op(x))
    res_norm = _safe_sqrt(tree_dot(res, res))
    converged, diverged = res_norm <= thresh, ~torch.isfinite(res_norm)
    fields = dict(solution=x, converged=converged, steps=steps, residual_norm=res_norm,
                  negative_curvature=negative, diverged=diverged)
    if "truncated" in LinearSolveResult._fields:
        fields["truncated"] = budget_truncated(truncated, converged, breakdown & ~converged, diverged)
    result = LinearSolveResult(**fields)
    if throw:
        # Negative curvature is no reason for MINRES to fail: leave it out of the message.
        _raise_if_failed("solve_minres", result._replace(negative_curvature=torch.zeros_like(negative)))
    return result


@dataclass(frozen=True)
class MINRES(LinearSolver):
    """MINRES with ``maxiter`` iterations (``None``: one per unknown), for symmetric indefinite
    systems (a nonconvex inner problem at a solution, a saddle point); see :func:`solve_minres`."""

    maxiter: int | None = None
    tol: float = 1e-10
    atol: float = 0.0
    ridge: float = 0.0
    truncated: bool = False

    def __post_init__(self):
        if self.maxiter is not None:
            check_int("MINRES", "maxiter", self.maxiter)
        check_flag("MINRES", "truncated", self.truncated)
        if self.truncated and self.maxiter is None:
            raise ValueError("MINRES: truncated=True declares maxiter a deliberate budget; give maxiter "
                             "(e.g. MINRES(maxiter=5, truncated=True)).")
        check_nonnegative("MINRES", "tol", self.tol)
        check_nonnegative("MINRES", "atol", self.atol)
        check_nonnegative("MINRES", "ridge", self.ridge)

    def __call__(self, matvec, b, init=None):
        return solve_minres(matvec, b, init=init, maxiter=self.maxiter, tol=self.tol, atol=self.atol,
                            ridge=self.ridge, truncated=self.truncated)
