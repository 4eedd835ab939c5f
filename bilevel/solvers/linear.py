"""Linear solvers for ``A x = b`` where ``A`` is given only as a matvec over parameter dicts.

All solvers share one signature, ``solve_*(matvec, b, ...) -> LinearSolveResult``, so
conjugate gradient, the Neumann series, GMRES and the dense solve are interchangeable
(CG needs a symmetric positive definite ``A``; GMRES and Dense any invertible ``A``;
Neumann a spectral radius ``rho(I - alpha A) < 1``).

Invariants:

* No Python control flow on tensor values: loops run a fixed number of iterations and
  freeze the iterate once converged (masked updates), so a whole meta-batch of systems
  solves under ``torch.func.vmap``.
* Never silent: the result reports ``converged``, ``steps``, ``residual_norm``,
  ``negative_curvature``, ``diverged`` and ``truncated``; ``throw=True`` raises
  :class:`SolverError` instead (outside ``vmap`` only, since it reads tensor values), and
  :func:`bilevel.hypergrad` warns or raises on a failed solve (:mod:`bilevel.diagnostics`).
* A deliberate iteration budget is configuration, not failure: a solver built with
  ``truncated=True`` (iMAML's 5-step CG, a K-term Neumann series) reports ``truncated``
  when it stops at its budget, and the failure policy accepts that.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..eager import known_true
from ..errors import SolverError
from ..validation import check_choice, check_flag, check_int, check_nonnegative, check_positive
from ..tree import (Params, tree_axpy, tree_dot, tree_numel, tree_ravel, tree_scale, tree_sub,
                   tree_unravel, tree_where, tree_zeros_like)

__all__ = [
    "LinearSolveResult",
    "solve_cg",
    "solve_neumann",
    "solve_dense",
    "solve_gmres",
    "CG",
    "Neumann",
    "Dense",
    "GMRES",
    "LinearSolver",
    "check_linear_solver",
    "budget_truncated",
    "threshold",
]

Matvec = Callable[[Params], Params]


class LinearSolveResult(NamedTuple):
    """Solution of ``A x = b`` with diagnostics (all tensors, so it passes through ``vmap``).

    Attributes:
        solution: ``x``, a dict shaped like ``b``.
        converged: ``||b - A x|| <= max(tol * ||b||, atol)`` (bool).
        steps: matvec iterations that changed ``x`` (int64).
        residual_norm: ``||b - A x||`` (CG: the recursively updated residual).
        negative_curvature: CG met a direction with ``p^T A p <= 0`` (with the default
            ``negative_curvature="stop"`` it stopped there: the solution is then wrong).
        diverged: the residual became non-finite (Neumann: or grew, see :func:`solve_neumann`).
        truncated: the solver was configured with ``truncated=True`` and stopped at its
            iteration budget, not converged but without breakdown or divergence: an
            approximation by design, which the failure policy does not report.
    """

    solution: Params
    converged: Tensor
    steps: Tensor
    residual_norm: Tensor
    negative_curvature: Tensor
    diverged: Tensor
    truncated: Tensor

    def diagnostics(self) -> dict[str, Tensor]:
        """Everything but the solution."""
        return {k: getattr(self, k) for k in self._fields if k != "solution"}


def _raise_if_failed(call: str, result: LinearSolveResult) -> LinearSolveResult:
    if not bool(result.converged.all()):
        reasons = []
        if bool(result.negative_curvature.any()):
            reasons.append("met negative curvature (the system is not positive definite)")
        if bool(result.diverged.any()):
            reasons.append("diverged (for Neumann, lower alpha below 2 / largest eigenvalue)")
        raise SolverError(
            f"{call}: did not converge after {int(result.steps.max())} steps, residual norm "
            f"{float(result.residual_norm.max()):.3e}"
            + (f"; {', '.join(reasons)}" if reasons else "; raise maxiter or loosen tol")
        )
    return result


def budget_truncated(configured: bool, converged: Tensor, stopped_early: Tensor, diverged: Tensor) -> Tensor:
    """``truncated`` for a result: configured as a budget, not converged, not stopped early
    (breakdown, negative curvature) and not diverged."""
    if not configured:
        return torch.zeros_like(converged)
    return ~converged & ~stopped_early & ~diverged


def threshold(b_norm: Tensor, tol: float, atol: float) -> Tensor:
    """The residual norm below which a solve counts as converged: ``max(tol, floor) ||b||``,
    at least ``atol``. ``floor`` is ``100 eps`` (1.2e-5) in float32, where the default
    ``tol=1e-10`` is out of reach (a float32 solve stalls near ``eps ||b||``), and 0 in every
    other dtype: float64 honours every ``tol``, 0 included, as given, and a solve in bfloat16
    or float16 (whose ``100 eps`` would pass a residual of 78% or 10% of ``||b||``) is judged
    by ``tol`` too (the library's hypergradients compute in float32 for half-precision models)."""
    floor = 100 * torch.finfo(torch.float32).eps if b_norm.dtype == torch.float32 else 0.0
    return torch.clamp(max(tol, floor) * b_norm, min=atol)


def krylov_operator(call: str, matvec: Matvec, b: Params, maxiter: int | None, tol: float, atol: float,
                    ridge: float) -> tuple[Matvec, int]:
    """The checked settings shared by CG and MINRES: ``(v -> A v + ridge v, maxiter)``, where
    ``maxiter=None`` is the number of unknowns (at least 1)."""
    if maxiter is None:
        maxiter = max(tree_numel(b), 1)
    check_int(call, "maxiter", maxiter)
    check_nonnegative(call, "tol", tol)
    check_nonnegative(call, "atol", atol)
    check_nonnegative(call, "ridge", ridge)
    return (matvec if ridge == 0 else (lambda v: tree_axpy(ridge, v, matvec(v)))), maxiter


def solve_cg(matvec: Matvec, b: Params, *, init: Params | None = None, maxiter: int | None = None,
             tol: float = 1e-10, atol: float = 0.0, ridge: float = 0.0,
             negative_curvature: str = "stop", truncated: bool = False,
             throw: bool = False) -> LinearSolveResult:
    """Conjugate gradient for a symmetric positive definite ``A``: solves ``(A + ridge I) x = b``.

    Runs at most ``maxiter`` iterations (default: the number of unknowns, at least 1, so a
    scalar system is solved too), freezing ``x`` once ``||r|| <= max(tol ||b||, atol)`` or at
    the first direction with ``p^T A p <= 0``, which it reports as negative curvature.
    Outside ``vmap`` it returns as soon as every system has stopped; under ``vmap`` it runs
    all ``maxiter`` iterations with frozen updates, so set ``maxiter`` there.

    ``negative_curvature="continue"`` keeps iterating through directions with ``p^T A p < 0``
    (plain CG on a symmetric indefinite system, as the iMAML reference code and TorchOpt do),
    stopping only at an exact breakdown ``p^T A p == 0``; the flag is reported either way.
    ``truncated=True`` declares ``maxiter`` a deliberate budget (see :class:`LinearSolveResult`).

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> res = solve_cg(lambda v: {"x": A @ v["x"]}, {"x": torch.tensor([1.0, 2.0])})
        >>> torch.allclose(A @ res.solution["x"], torch.tensor([1.0, 2.0])), bool(res.converged)
        (True, True)
    """
    op, maxiter = krylov_operator("solve_cg", matvec, b, maxiter, tol, atol, ridge)
    check_choice("solve_cg", "negative_curvature", negative_curvature, ("stop", "continue"))

    x = tree_zeros_like(b) if init is None else init
    r = b if init is None else tree_sub(b, op(x))
    p = r
    rs = tree_dot(r, r)
    zero = torch.zeros_like(rs)
    thresh = threshold(torch.sqrt(tree_dot(b, b)), tol, atol)
    done = torch.sqrt(rs) <= thresh
    negative = torch.zeros_like(done)
    steps = torch.zeros((), dtype=torch.int64, device=rs.device)
    for _ in range(maxiter):
        Ap = op(p)
        pAp = tree_dot(p, Ap)
        negative = negative | (~done & (pAp <= 0))
        curv_bad = pAp <= 0 if negative_curvature == "stop" else pAp == 0
        active = ~done & ~curv_bad
        done = done | curv_bad
        alpha = torch.where(active, rs / torch.where(active, pAp, torch.ones_like(pAp)), zero)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, Ap, r)
        rs_new = tree_dot(r, r)
        beta = rs_new / torch.where(rs > 0, rs, torch.ones_like(rs))
        p = tree_where(active, tree_axpy(beta, p, r), p)
        rs = torch.where(active, rs_new, rs)
        steps = steps + active.to(torch.int64)
        done = done | (torch.sqrt(rs) <= thresh)
        if known_true(done):
            break
    res_norm = torch.sqrt(rs)
    converged, diverged = res_norm <= thresh, ~torch.isfinite(res_norm)
    stopped_early = negative if negative_curvature == "stop" else torch.zeros_like(negative)
    result = LinearSolveResult(
        solution=x,
        converged=converged,
        steps=steps,
        residual_norm=res_norm,
        negative_curvature=negative,
        diverged=diverged,
        truncated=budget_truncated(truncated, converged, stopped_early, diverged),
    )
    return _raise_if_failed("solve_cg", result) if throw else result


def solve_neumann(matvec: Matvec, b: Params, *, init: Params | None = None, alpha: float = 1.0,
                  steps: int = 10, tol: float = 1e-10, atol: float = 0.0, truncated: bool = False,
                  spectral_check: int = 0, throw: bool = False) -> LinearSolveResult:
    """Truncated Neumann series ``x = x_0 + alpha * sum_{k<steps} (I - alpha A)^k (b - A x_0)``.

    With ``init=None`` (``x_0 = 0``) this is ``alpha * sum_k (I - alpha A)^k b``; from ``x_0`` it
    is the same series on the remaining residual (Richardson iteration). Converges to
    ``A^-1 b`` iff ``0 < alpha < 2 / lambda_max(A)`` for positive definite ``A``. The residual
    is exact for free: ``b - A x = (I - alpha A)^steps (b - A x_0)``.

    ``diverged`` is reported when the residual is non-finite, larger than ``||b||``, or grew
    over the last step. For symmetric ``A`` the last test is exact: in the eigenbasis
    ``||r_k||^2 = sum_i c_i^2 (1 - alpha lambda_i)^(2k)`` is log-convex in ``k``, so once it
    grows it grows forever, and it eventually grows iff some ``|1 - alpha lambda_i| > 1``.
    ``truncated=True`` declares ``steps`` a deliberate budget (a K-term series).

    A short budget cannot see divergence in its residuals (a component growing by 1.1 per step
    hides behind those that shrink), so ``spectral_check=m > 0`` runs ``m`` extra matvecs of
    power iteration from ``b``: its Rayleigh quotient ``rho = v^T A v / v^T v`` satisfies
    ``|rho| <= max |lambda_i(A)|`` for symmetric ``A``, so ``alpha * rho >= 2`` (a component with
    ``|1 - alpha lambda| >= 1``) proves the series diverges and ``rho < 0`` proves ``A`` is not
    positive definite; either is reported (``diverged``, ``negative_curvature``) and the budget
    is then not ``truncated`` but failed. The test only proves failure: an ``alpha`` just
    above ``2 / lambda_max`` with a poor estimate can pass it.

    Example:
        >>> import torch
        >>> res = solve_neumann(lambda v: {"x": 0.5 * v["x"]}, {"x": torch.ones(2)}, alpha=1.0, steps=60)
        >>> torch.allclose(res.solution["x"], torch.full((2,), 2.0))
        True
    """
    check_int("solve_neumann", "steps", steps)
    check_positive("solve_neumann", "alpha", alpha)
    check_nonnegative("solve_neumann", "tol", tol)
    check_nonnegative("solve_neumann", "atol", atol)
    check_int("solve_neumann", "spectral_check", spectral_check, minimum=0)
    x = tree_zeros_like(b) if init is None else init
    p = b if init is None else tree_sub(b, matvec(x))
    previous = torch.sqrt(tree_dot(p, p))
    res_norm = previous
    for _ in range(steps):
        x = tree_axpy(alpha, p, x)
        p = tree_axpy(-alpha, matvec(p), p)
        previous, res_norm = res_norm, torch.sqrt(tree_dot(p, p))
    b_norm = torch.sqrt(tree_dot(b, b))
    converged = res_norm <= threshold(b_norm, tol, atol)
    # Growth over the last step (beyond rounding) means a component with |1 - alpha lambda| > 1.
    grew = ~converged & (res_norm > previous * (1 + 1e-6))
    diverged = ~torch.isfinite(res_norm) | (res_norm > b_norm) | grew
    negative = torch.zeros((), dtype=torch.bool, device=res_norm.device)
    if spectral_check > 0:
        rho = rayleigh_estimate(matvec, b, spectral_check)
        negative = ~converged & (rho < 0)
        diverged = diverged | (~converged & (alpha * rho >= 2))
    result = LinearSolveResult(
        solution=x,
        converged=converged,
        steps=torch.full((), steps, dtype=torch.int64, device=res_norm.device),
        residual_norm=res_norm,
        negative_curvature=negative,
        diverged=diverged,
        truncated=budget_truncated(truncated, converged, negative, diverged),
    )
    return _raise_if_failed("solve_neumann", result) if throw else result


def rayleigh_estimate(matvec: Matvec, b: Params, steps: int) -> Tensor:
    """The Rayleigh quotient ``v^T A v / v^T v`` after ``steps`` power iterations from ``b``.

    For symmetric ``A`` it lies in ``[lambda_min, lambda_max]`` and tends to the eigenvalue of
    largest modulus that ``b`` excites; a zero ``b`` gives 0. Data-independent control flow, so
    it runs under ``vmap``.
    """
    v, av = b, matvec(b)
    for _ in range(steps - 1):
        scale = torch.sqrt(tree_dot(av, av))
        v = tree_scale(1 / torch.where(scale > 0, scale, torch.ones_like(scale)), av)
        av = matvec(v)
    vv = tree_dot(v, v)
    return tree_dot(v, av) / torch.where(vv > 0, vv, torch.ones_like(vv))


def solve_dense(matvec: Matvec, b: Params, *, ridge: float = 0.0, tol: float = 1e-10,
                atol: float = 0.0, throw: bool = False) -> LinearSolveResult:
    """Materialize ``A`` (one matvec per unknown, batched with ``vmap``) and solve directly.

    For small problems and as the reference in tests: O(n) matvecs and O(n^3) time.
    """
    check_nonnegative("solve_dense", "ridge", ridge)
    flat_b = tree_ravel(b)
    n = flat_b.numel()

    def flat_matvec(v: Tensor) -> Tensor:
        out = matvec(tree_unravel(v, b))
        return tree_ravel(out) + ridge * v

    eye = torch.eye(n, dtype=flat_b.dtype, device=flat_b.device)
    A = torch.func.vmap(flat_matvec)(eye).transpose(0, 1)  # row i of vmap output is A e_i
    x = torch.linalg.solve(A, flat_b)
    res_norm = torch.linalg.vector_norm(flat_b - A @ x)
    b_norm = torch.linalg.vector_norm(flat_b)
    # A direct solve is backward stable: its residual is bounded by rounding, not by tol.
    rounding = 100 * n * torch.finfo(flat_b.dtype).eps * (torch.linalg.matrix_norm(A) * torch.linalg.vector_norm(x) + b_norm)
    result = LinearSolveResult(
        solution=tree_unravel(x, b),
        converged=(res_norm <= torch.maximum(threshold(b_norm, tol, atol), rounding)) & torch.isfinite(res_norm),
        steps=torch.full((), n, dtype=torch.int64, device=flat_b.device),
        residual_norm=res_norm,
        negative_curvature=torch.zeros((), dtype=torch.bool, device=flat_b.device),
        diverged=~torch.isfinite(res_norm),
        truncated=torch.zeros((), dtype=torch.bool, device=flat_b.device),
    )
    return _raise_if_failed("solve_dense", result) if throw else result


def solve_gmres(matvec: Matvec, b: Params, *, init: Params | None = None, maxiter: int = 50,
                tol: float = 1e-10, atol: float = 0.0, truncated: bool = False,
                throw: bool = False) -> LinearSolveResult:
    """GMRES for a general (non-symmetric) invertible ``A``: solves ``A x = b`` without restarts.

    Builds an orthonormal basis of the Krylov space ``span{r0, A r0, ..., A^(k-1) r0}``
    (Arnoldi with two passes of modified Gram-Schmidt) and returns the ``x`` in ``x_0`` plus that space which
    minimizes ``||b - A x||``; the minimal residual never grows, and in exact arithmetic it
    reaches 0 after at most ``n`` steps. Each iteration costs one matvec and keeps one more
    vector, so memory is ``maxiter`` copies of ``b``. Iteration stops (the basis is frozen)
    once ``||b - A x|| <= max(tol ||b||, atol)``; outside ``vmap`` it returns at that point,
    under ``vmap`` all ``maxiter`` iterations run with masked updates. The reported residual is
    recomputed as ``||b - A x||`` with one more matvec.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 1.0], [-1.0, 3.0]])  # not symmetric: CG does not apply
        >>> res = solve_gmres(lambda v: {"x": A @ v["x"]}, {"x": torch.tensor([1.0, 2.0])})
        >>> torch.allclose(A @ res.solution["x"], torch.tensor([1.0, 2.0])), int(res.steps)
        (True, 2)
    """
    check_int("solve_gmres", "maxiter", maxiter)
    check_nonnegative("solve_gmres", "tol", tol)
    check_nonnegative("solve_gmres", "atol", atol)
    like = b

    def flat_matvec(v: Tensor) -> Tensor:
        return tree_ravel(matvec(tree_unravel(v, like)))

    flat_b = tree_ravel(b)
    x0 = torch.zeros_like(flat_b) if init is None else tree_ravel(init)
    r0 = flat_b if init is None else flat_b - flat_matvec(x0)
    beta = torch.linalg.vector_norm(r0)
    thresh = threshold(torch.linalg.vector_norm(flat_b), tol, atol)
    done = beta <= thresh
    one, zero = torch.ones_like(beta), torch.zeros_like(beta)

    def safe_div(num: Tensor, den: Tensor) -> Tensor:
        # A zero denominator means a lucky breakdown (or a frozen system): the quotient is unused.
        return torch.where(den > 0, num / torch.where(den > 0, den, one), zero)

    basis = [r0 * safe_div(one, beta)]
    columns, cos, sin, used = [], [], [], []
    g = [beta]  # the rotated right-hand side beta e_1; |g[j+1]| is the residual after j+1 steps
    steps = torch.zeros((), dtype=torch.int64, device=flat_b.device)
    for j in range(maxiter):
        w = flat_matvec(basis[j])
        h = [zero] * len(basis)
        for _ in range(2):  # modified Gram-Schmidt twice, so the basis stays orthogonal to rounding
            for i, v in enumerate(basis):
                h_ij = torch.dot(w, v)
                w = w - h_ij * v
                h[i] = h[i] + h_ij
        h_next = torch.linalg.vector_norm(w)
        basis.append(w * safe_div(one, h_next))
        for i in range(j):  # earlier Givens rotations, applied to the new column
            h[i], h[i + 1] = cos[i] * h[i] + sin[i] * h[i + 1], -sin[i] * h[i] + cos[i] * h[i + 1]
        r = torch.sqrt(h[j] ** 2 + h_next ** 2)
        c = torch.where(r > 0, safe_div(h[j], r), one)
        s = safe_div(h_next, r)
        h[j] = r
        cos.append(c)
        sin.append(s)
        g.append(-s * g[j])
        g[j] = c * g[j]
        columns.append(h)
        active = ~done
        used.append(active)
        steps = steps + active.to(torch.int64)
        done = done | (torch.abs(g[j + 1]) <= thresh)
        if known_true(done):
            break
    # Solve the k x k upper triangular system R y = g[:k]; columns of frozen iterations get
    # an identity row and a zero right-hand side, so their coefficient is 0.
    k = len(columns)
    mask = torch.stack(used)
    R = torch.stack([torch.stack(col + [zero] * (k - len(col))) for col in columns], dim=1)
    both = mask[:, None] & mask[None, :]
    R = torch.where(both, R, torch.eye(k, dtype=R.dtype, device=R.device))
    rhs = torch.where(mask, torch.stack(g[:k]), zero)
    y = torch.linalg.solve_triangular(R, rhs[:, None], upper=True)[:, 0]
    x = x0 + torch.stack(basis[:k], dim=1) @ y
    res_norm = torch.linalg.vector_norm(flat_b - flat_matvec(x))
    converged, diverged = res_norm <= thresh, ~torch.isfinite(res_norm)
    result = LinearSolveResult(
        solution=tree_unravel(x, b),
        converged=converged,
        steps=steps,
        residual_norm=res_norm,
        negative_curvature=torch.zeros((), dtype=torch.bool, device=flat_b.device),
        diverged=diverged,
        truncated=budget_truncated(truncated, converged, torch.zeros_like(converged), diverged),
    )
    return _raise_if_failed("solve_gmres", result) if throw else result


# --- Configured solvers: immutable objects validated at construction, called as solver(matvec, b).


class LinearSolver(abc.ABC):
    """A configured linear solver: ``solver(matvec, b, init=None) -> LinearSolveResult``.

    Subclasses are immutable, validate their settings at construction, and either start
    from ``init`` or reject it. Any subclass can be given to :class:`~bilevel.Implicit`.
    """

    @abc.abstractmethod
    def __call__(self, matvec: Matvec, b: Params, init: Params | None = None) -> LinearSolveResult:
        """Solve ``A x = b`` for the operator ``matvec``, starting from ``init`` (``None``: zero)."""


@dataclass(frozen=True)
class CG(LinearSolver):
    """Conjugate gradient with ``maxiter`` iterations (``None``: one per unknown); see :func:`solve_cg`."""

    maxiter: int | None = None
    tol: float = 1e-10
    atol: float = 0.0
    ridge: float = 0.0
    negative_curvature: str = "stop"
    truncated: bool = False

    def __post_init__(self):
        if self.maxiter is not None:
            check_int("CG", "maxiter", self.maxiter)
        check_choice("CG", "negative_curvature", self.negative_curvature, ("stop", "continue"))
        check_flag("CG", "truncated", self.truncated)
        if self.truncated and self.maxiter is None:
            raise ValueError("CG: truncated=True declares maxiter a deliberate budget; give maxiter (e.g. CG(maxiter=5, truncated=True)).")
        check_nonnegative("CG", "tol", self.tol)
        check_nonnegative("CG", "atol", self.atol)
        check_nonnegative("CG", "ridge", self.ridge)

    def __call__(self, matvec, b, init=None):
        return solve_cg(matvec, b, init=init, maxiter=self.maxiter, tol=self.tol, atol=self.atol,
                        ridge=self.ridge, negative_curvature=self.negative_curvature, truncated=self.truncated)


@dataclass(frozen=True)
class Neumann(LinearSolver):
    """Neumann series ``alpha * sum_{k<steps} (I - alpha A)^k b``; see :func:`solve_neumann`.

    With ``truncated=True`` (a deliberate K-term budget) it also runs ``spectral_check`` matvecs
    of power iteration (default 20) and reports the solve as diverged when they prove
    ``alpha >= 2 / lambda_max`` (or negative curvature); ``spectral_check=0`` skips that.
    """

    alpha: float = 1.0
    steps: int = 10
    tol: float = 1e-10
    atol: float = 0.0
    truncated: bool = False
    spectral_check: int = 20

    def __post_init__(self):
        check_int("Neumann", "steps", self.steps)
        check_flag("Neumann", "truncated", self.truncated)
        check_int("Neumann", "spectral_check", self.spectral_check, minimum=0)
        check_positive("Neumann", "alpha", self.alpha)
        check_nonnegative("Neumann", "tol", self.tol)
        check_nonnegative("Neumann", "atol", self.atol)

    def __call__(self, matvec, b, init=None):
        # A truncated series cannot show divergence in its residuals: check alpha against the
        # spectrum (spectral_check matvecs; 0 accepts the risk). Without truncated=True an
        # unconverged series is reported anyway.
        return solve_neumann(matvec, b, init=init, alpha=self.alpha, steps=self.steps, tol=self.tol,
                             atol=self.atol, truncated=self.truncated,
                             spectral_check=self.spectral_check if self.truncated else 0)


@dataclass(frozen=True)
class Dense(LinearSolver):
    """Direct solve of the materialized matrix (small problems, tests); see :func:`solve_dense`."""

    ridge: float = 0.0

    def __post_init__(self):
        check_nonnegative("Dense", "ridge", self.ridge)

    def __call__(self, matvec, b, init=None):
        if init is not None:
            raise ValueError("Dense: a direct solve has no starting point; call it with init=None "
                             "(or use CG or Neumann, which start from init).")
        return solve_dense(matvec, b, ridge=self.ridge)


@dataclass(frozen=True)
class GMRES(LinearSolver):
    """GMRES with a Krylov space of at most ``maxiter`` vectors, for non-symmetric systems
    (the adjoint of a fixed point); see :func:`solve_gmres`."""

    maxiter: int = 50
    tol: float = 1e-10
    atol: float = 0.0
    truncated: bool = False

    def __post_init__(self):
        check_int("GMRES", "maxiter", self.maxiter)
        check_flag("GMRES", "truncated", self.truncated)
        check_nonnegative("GMRES", "tol", self.tol)
        check_nonnegative("GMRES", "atol", self.atol)

    def __call__(self, matvec, b, init=None):
        return solve_gmres(matvec, b, init=init, maxiter=self.maxiter, tol=self.tol, atol=self.atol,
                           truncated=self.truncated)


def check_linear_solver(call: str, solver) -> LinearSolver:
    """``solver`` if it is a :class:`LinearSolver` instance, else a ``TypeError`` naming the fix."""
    if isinstance(solver, LinearSolver):
        return solver
    hint = (f" Strings are not accepted: write {_BY_NAME[solver]}." if isinstance(solver, str) and solver in _BY_NAME
            else "")
    raise TypeError(f"{call}: linear_solver must be a LinearSolver such as CG(maxiter=5), MINRES(), Neumann(alpha=0.1, "
                    f"steps=20), GMRES() or Dense(), got {type(solver).__name__} ({solver!r}).{hint} A custom solver "
                    "subclasses bilevel.LinearSolver and implements __call__(matvec, b, init=None).")


_BY_NAME = {"cg": "CG()", "minres": "MINRES()", "neumann": "Neumann()", "dense": "Dense()", "gmres": "GMRES()"}
