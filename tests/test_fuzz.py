"""Property-based tests: random problems of four kinds x every backend x every linear solver.

The property, for every (problem, backend): with ``on_failure="warn"``, the hypergradient either
agrees with an independent reference within the case's relative tolerance (``TOL = 1e-6`` where
the backend's claim is exact, ``BUDGET_TOL = 1e-2`` where the inner budget stops short), or the
call emitted a :class:`~bilevel.SolverWarning`, or it raised :class:`~bilevel.SolverError` /
:class:`~bilevel.NonFiniteError`. Never a silent wrong answer. One known library gap (the
default ``stationarity_rtol`` does not bound the hypergradient's error, see
:func:`test_stationarity_gap_reproducer`) turns a kind's case into an xfail when it is hit.

Problem kinds (float64, drawn by ``hypothesis`` from a seed and a few sizes):

* ``quadratic``: ``L_in = 0.5 phi^T A phi - phi^T (B theta + c)``, ``A`` SPD with condition
  number up to 20, 2-8 unknowns, 1-3 hyperparameters; ``phi* = A^-1 (B theta + c)``.
* ``logistic``: logistic regression, 2-8 features, per-feature L2 weights ``exp(theta_j)``.
* ``mlp``: a tanh MLP (2-3-1, 2-4-1, 3-3-2 or 3-4-2: 13-26 parameters) on 6-12 random regression
  points, hyperparameters a log weight decay (``exp(-4)`` or ``exp(-3)``) and a target shift. Its
  exact stationary point is found by Newton's method on ``grad L_in = 0`` from random starts and
  kept only if the Hessian there is indefinite (a saddle of the training loss) and the outer
  gradient has a component on its negative eigenspace (see :func:`mlp`); the implicit backends
  get it as ``inner_solution=``. The unrolled backends run the problem's own gradient descent from the
  same start (it goes to a minimum, not to the saddle) and are checked on that computation.
* ``saddle``: the stationary point of a Lagrangian ``L(w, mu) = f(w) + mu^T c(w) - (eps/2)||mu||^2``
  (min over ``w``, max over ``mu``; ``f`` and ``c`` nonlinear), found by Newton's method on the
  KKT system; its Hessian ``[[H_ww, J^T], [J, -eps I]]`` is indefinite. Inner minimisation
  solvers do not apply, so only the implicit backends run, with ``inner_solution=``.

References, computed here without the library's solvers or Hessian-vector products:

* implicit backends: the dense implicit-function-theorem answer at the exact stationary point,
  ``dL/dtheta - (d2 L_in/dphi dtheta)^T H^-1 dL/dphi`` (``torch.func.jacrev`` on the flat
  vector, ``torch.linalg.solve``). For ``quadratic`` and ``logistic`` the backend runs the
  problem's gradient descent itself; the drawn budget is either enough (contraction
  ``(1 - mu/L)^S <= 1e-14``) or a fraction of it, which the stationarity check must report.
* ``Unrolled`` and ``HigherUnrolled``: central finite differences (``h = 1e-5``) of the unrolled
  computation, ``theta -> L_out(phi_S(theta))``, re-implemented here as a plain GD loop.
* ``TruncatedUnrolled(T)``: central differences of the computation it declares: the first
  ``S - T`` steps held constant, the last ``T`` differentiated.

``FirstOrder`` and ``Reptile`` are skipped: they are biased by design (``d phi / d theta = I``),
report no diagnostics, and do not claim to be exact; they also need ``phi`` and ``theta`` to
share names, which hyperparameter problems do not. Declared iteration budgets
(``CG(maxiter=5, truncated=True)``) are left out for the same reason: the user asked for an
approximation. ``benchmarks/fuzz_outcomes.py`` counts the outcomes over many more problems.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from torch.func import grad, jacrev, vmap

from bilevel import (CG, GMRES, BilevelProblem, Dense, GradientDescent, HigherUnrolled, Implicit, Neumann,
                     NonFiniteError, SolverError, SolverWarning, TorchoptImplicit, TruncatedUnrolled, Unrolled,
                     hypergrad)
from bilevel.diagnostics import failures

try:
    from bilevel.solvers.minres import MINRES
except ImportError:  # written concurrently; the fuzz runs without it
    MINRES = None

DTYPE = torch.float64
TOL = 1e-6
"""Relative tolerance of a "right" answer where the backend's claim is exact: the implicit backends at
an exact stationary point (given, or reached by a converged GD budget) and the unrolled ones against
their own computation. The implicit references are dense solves at ``||grad L_in|| <= 1e-11`` and the
solvers stop at 1e-10 relative residual, times a condition number of at most ~1e4 here; the
finite-difference references have error ~h^2 + eps/h ~ 1e-10. ``FD_FLOOR`` keeps a near-zero
finite-difference gradient from turning rounding into a relative error."""
BUDGET_TOL = 1e-2
"""The tolerance where an inner iteration budget is set short of convergence (implicit backends on
``quadratic``/``logistic`` with a fraction of the converged GD budget): the library accepts an inner
solution as stationary at ``||grad L_in(phi)|| <= 1e-2 ||grad L_in(phi_0)||`` (``stationarity_rtol``),
so an error below 1% passes silently by design; above it, a warning is owed."""
FD_H = 1e-5
FD_FLOOR = 1e-7
WRONG = 1e-2
"""The issue's bar: an answer off by more than this without a warning is a silent error."""
CONVERGED = 1e-14
"""Contraction ``(1 - mu/L)^S`` of a "converged" gradient-descent budget."""


# --- Flat vectors: the references work on one vector per dict, independent of bilevel.tree.


def ravel(d: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


def unravel(flat: torch.Tensor, like: dict) -> dict:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = flat[i:i + v.numel()].reshape(v.shape)
        i += v.numel()
    return out


def rel_err(a: dict, b: dict, floor: float = 0.0) -> float:
    num = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in b))
    den = torch.sqrt(sum((b[k] ** 2).sum() for k in b))
    return float(num / max(float(den), floor, 1e-300))


# --- The drawn problems.


@dataclass(frozen=True)
class Fuzzed:
    """One random problem with its references; ``spec`` (the drawn parameters) rebuilds it."""

    kind: str
    spec: tuple
    problem: BilevelProblem
    theta: dict
    inner_batch: object
    outer_batch: object
    phi_star: dict  # the exact stationary point
    given_solution: bool  # implicit backends get phi_star as inner_solution=
    ift: dict  # dense IFT hypergradient at phi_star
    eigenvalues: torch.Tensor  # of the inner Hessian at phi_star
    lr: float | None = None  # the problem's gradient descent (None: no inner solver applies)
    steps: int | None = None
    truncated_steps: int | None = None
    unrolled_fd: dict | None = None
    truncated_fd: dict | None = None
    converged: bool = True  # the GD budget reaches phi* (False: a drawn fraction of it)

    @property
    def neumann(self) -> tuple[float, int]:
        """``alpha = 1 / ||H||_2`` and enough terms for ``(1 - |lambda|_min / |lambda|_max)^K <= 1e-11``, at most 500."""
        a = self.eigenvalues.abs()
        ratio = float(a.min() / a.max())
        steps = 1 if ratio >= 1 else math.ceil(math.log(1e-11) / math.log1p(-ratio))
        return 1.0 / float(a.max()), max(1, min(steps, 500))

    def describe(self) -> str:
        e = self.eigenvalues
        return (f"{self.kind} {self.spec}: {self.phi_star_numel} unknowns, Hessian eigenvalues in "
                f"[{float(e.min()):.3g}, {float(e.max()):.3g}], GD steps {self.steps}, lr {self.lr}")

    @property
    def phi_star_numel(self) -> int:
        return sum(v.numel() for v in self.phi_star.values())


def hessian(f: Callable, argnums: int = 0) -> Callable:
    """``jacrev`` of ``jacrev``: on these small problems 3x faster than ``torch.func.hessian``."""
    return jacrev(jacrev(f, argnums=argnums), argnums=argnums)


def flat_losses(problem: BilevelProblem, phi_like: dict, theta_like: dict, inner_batch, outer_batch):
    def inner(p, t):
        return problem.inner_loss(unravel(p, phi_like), unravel(t, theta_like), inner_batch)

    def outer(p, t):
        return problem.outer_loss(unravel(p, phi_like), unravel(t, theta_like), outer_batch)

    return inner, outer


def dense_ift(problem, phi: dict, theta: dict, inner_batch, outer_batch):
    """``dL/dtheta - (d2 L_in/dphi dtheta)^T H^-1 dL/dphi`` on flat vectors, and ``eig(H)``."""
    inner, outer = flat_losses(problem, phi, theta, inner_batch, outer_batch)
    p, t = ravel(phi), ravel(theta)
    H = hessian(inner, argnums=0)(p, t)
    mixed = jacrev(jacrev(inner, argnums=0), argnums=1)(p, t)  # (n, m)
    g_p, g_t = jacrev(outer, argnums=(0, 1))(p, t)
    H = 0.5 * (H + H.T)
    return unravel(g_t - mixed.T @ torch.linalg.solve(H, g_p), theta), torch.linalg.eigvalsh(H)


def newton_root(inner: Callable, p: torch.Tensor, t: torch.Tensor, tol: float = 1e-12, iters: int = 100):
    """A zero of ``grad inner(., t)`` by Newton's method with backtracking on ``||grad||``: it
    converges to stationary points of any kind (saddles too), which descent methods avoid."""
    g_fn = grad(inner, argnums=0)
    h_fn = hessian(inner, argnums=0)
    g = g_fn(p, t)
    for _ in range(iters):
        if float(g.norm()) <= tol:
            break
        try:
            d = -torch.linalg.solve(h_fn(p, t), g)
        except RuntimeError:  # singular Hessian
            return p, g
        a = 1.0
        for _ in range(30):
            g_new = g_fn(p + a * d, t)
            if torch.isfinite(g_new).all() and float(g_new.norm()) <= (1 - 1e-4 * a) * float(g.norm()):
                break
            a *= 0.5
        else:
            return p, g
        p, g = p + a * d, g_new
    return p, g


def gd_loop(inner: Callable, p0: torch.Tensor, t: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    g_fn = grad(inner, argnums=0)
    p = p0
    for _ in range(steps):
        p = p - lr * g_fn(p, t)
    return p


def central_fd(value: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """Central differences of a scalar function of the flat ``theta``, every coordinate at once."""
    m = t.numel()
    steps = FD_H * torch.clamp(t.abs(), min=1.0)
    shifts = torch.diag(steps)
    values = vmap(value)(torch.cat([t + shifts, t - shifts]))
    return (values[:m] - values[m:]) / (2 * steps)


def unrolled_references(problem, phi0: dict, theta: dict, inner_batch, outer_batch, lr: float, steps: int,
                        truncated_steps: int):
    """Finite differences of the unrolled computation and of the truncated one (prefix constant)."""
    inner, outer = flat_losses(problem, phi0, theta, inner_batch, outer_batch)
    p0, t = ravel(phi0), ravel(theta)
    full = central_fd(lambda th: outer(gd_loop(inner, p0, th, lr, steps), th), t)
    prefix = gd_loop(inner, p0, t, lr, steps - truncated_steps)
    truncated = central_fd(lambda th: outer(gd_loop(inner, prefix, th, lr, truncated_steps), th), t)
    return unravel(full, theta), unravel(truncated, theta)


def gd_budget(mu: float, L: float, fraction: float) -> int:
    converged = math.ceil(math.log(CONVERGED) / math.log1p(-mu / L)) if mu < L else 1
    return max(1, int(fraction * converged))


def with_gd(kind, spec, problem, theta, inner_batch, outer_batch, phi0, phi_star, mu, L, fraction,
            given_solution=False):
    """A problem whose inner solver is GD(lr=1/L) for the drawn budget, with every reference."""
    lr = 1.0 / L
    steps = gd_budget(mu, L, fraction)
    truncated_steps = max(1, (3 * steps) // 4)
    problem = BilevelProblem(problem.inner_loss, problem.outer_loss, GradientDescent(lr=lr, steps=steps), phi0)
    ift, eig = dense_ift(problem, phi_star, theta, inner_batch, outer_batch)
    full, truncated = unrolled_references(problem, phi0, theta, inner_batch, outer_batch, lr, steps, truncated_steps)
    return Fuzzed(kind, spec, problem, theta, inner_batch, outer_batch, phi_star, given_solution, ift, eig, lr,
                  steps, truncated_steps, full, truncated, converged=fraction >= 1)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def rand(g, *shape):
    return torch.rand(*shape, generator=g, dtype=DTYPE)


@lru_cache(maxsize=256)
def quadratic(seed: int, d: int, m: int, kappa: float, fraction: float) -> Fuzzed:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(randn(g, d, d))
    eig = torch.exp(torch.cat([torch.tensor([0.0, math.log(kappa)], dtype=DTYPE),
                               rand(g, d - 2) * math.log(kappa)]))[:d]
    A = Q @ torch.diag(eig) @ Q.T
    A = 0.5 * (A + A.T)
    B, c, target, e = randn(g, d, m), randn(g, d), randn(g, d), randn(g, m)
    theta = {"theta": randn(g, m)}

    def inner(phi, theta, batch):
        w = phi["w"]
        return 0.5 * w @ (A @ w) - w @ (B @ theta["theta"] + c)

    def outer(phi, theta, batch):
        return 0.5 * ((phi["w"] - target) ** 2).sum() + 0.1 * e @ theta["theta"]

    phi_star = {"w": torch.linalg.solve(A, B @ theta["theta"] + c)}
    problem = BilevelProblem(inner, outer)
    return with_gd("quadratic", (seed, d, m, kappa, fraction), problem, theta, None, None,
                   {"w": torch.zeros(d, dtype=DTYPE)}, phi_star, float(eig.min()), float(eig.max()), fraction)


@lru_cache(maxsize=256)
def logistic(seed: int, d: int, n: int, fraction: float) -> Fuzzed:
    g = torch.Generator().manual_seed(seed)
    X, Xv = randn(g, n, d), randn(g, n, d)
    w_true = randn(g, d)
    y = (X @ w_true + 0.5 * randn(g, n) > 0).to(DTYPE)
    yv = (Xv @ w_true > 0).to(DTYPE)
    theta = {"log_l2": -2.0 * rand(g, d)}

    def inner(phi, theta, batch):
        X, y = batch
        return (F.binary_cross_entropy_with_logits(X @ phi["w"], y)
                + 0.5 * (theta["log_l2"].exp() * phi["w"] ** 2).sum())

    def outer(phi, theta, batch):
        Xv, yv = batch
        return F.binary_cross_entropy_with_logits(Xv @ phi["w"], yv)

    problem = BilevelProblem(inner, outer)
    flat_inner, _ = flat_losses(problem, {"w": X[0]}, theta, (X, y), None)
    p, res = newton_root(flat_inner, torch.zeros(d, dtype=DTYPE), ravel(theta))
    assert float(res.norm()) <= 1e-11, "Newton did not solve a strongly convex logistic regression"
    l2 = theta["log_l2"].exp()
    L = 0.25 * float(torch.linalg.eigvalsh(X.T @ X / n).max()) + float(l2.max())
    return with_gd("logistic", (seed, d, n, fraction), problem, theta, (X, y), (Xv, yv),
                   {"w": torch.zeros(d, dtype=DTYPE)}, {"w": p}, float(l2.min()), L, fraction)


MLP_SHAPES = ((2, 3, 1), (2, 4, 1), (3, 3, 2), (3, 4, 2))


@lru_cache(maxsize=256)
def mlp(seed: int, shape: int, n: int, log_wd: float, steps: int) -> Fuzzed | None:
    """``None`` when no suitable saddle was found from 10 random starts.

    Suitable: a nondegenerate saddle (eigenvalues of both signs, none within 1e-4 of the largest
    in size) where the outer gradient has a relative component of at least 1e-3 on the negative
    eigenspace. Most saddles Newton's method finds have a dead hidden unit (or two identical ones),
    and there the outer gradient is orthogonal to every negative-curvature direction, so every
    linear solver meets a positive definite system: they would not test the indefinite case."""
    n_in, hidden, n_out = MLP_SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    X, Xv = randn(g, n, n_in), randn(g, n, n_in)
    Y, Yv = randn(g, n, n_out), randn(g, n, n_out)
    theta = {"log_wd": torch.tensor([log_wd], dtype=DTYPE), "shift": 0.3 * randn(g, n_out)}

    def net(phi, X):
        return torch.tanh(X @ phi["W1"] + phi["b1"]) @ phi["W2"] + phi["b2"]

    def inner(phi, theta, batch):
        X, Y = batch
        decay = sum((v ** 2).sum() for v in phi.values())
        return 0.5 * ((net(phi, X) - Y - theta["shift"]) ** 2).mean() + 0.5 * theta["log_wd"].exp()[0] * decay

    def outer(phi, theta, batch):
        Xv, Yv = batch
        return 0.5 * ((net(phi, Xv) - Yv) ** 2).mean()

    like = {"W1": torch.zeros(n_in, hidden, dtype=DTYPE), "b1": torch.zeros(hidden, dtype=DTYPE),
            "W2": torch.zeros(hidden, n_out, dtype=DTYPE), "b2": torch.zeros(n_out, dtype=DTYPE)}
    problem = BilevelProblem(inner, outer)
    flat_inner, flat_outer = flat_losses(problem, like, theta, (X, Y), (Xv, Yv))
    t = ravel(theta)
    for _ in range(10):
        p0 = randn(g, sum(v.numel() for v in like.values()))
        p, res = newton_root(flat_inner, p0, t, iters=40)
        if float(res.norm()) > 1e-11:
            continue
        eig, V = torch.linalg.eigh(hessian(flat_inner, argnums=0)(p, t))
        if not (eig.min() < 0 < eig.max() and float(eig.abs().min() / eig.abs().max()) > 1e-4):
            continue
        g_phi = grad(flat_outer, argnums=0)(p, t)
        if float((V[:, eig < 0].T @ g_phi).norm() / g_phi.norm()) >= 1e-3:
            break
    else:
        return None
    phi0 = unravel(p0, like)
    # GD from the same start, with a step safe for the curvature there (it goes downhill, to a minimum).
    L0 = float(torch.linalg.eigvalsh(hessian(flat_inner, argnums=0)(p0, t)).abs().max())
    lr = 0.5 / max(L0, 1e-3)
    truncated_steps = max(1, (3 * steps) // 4)
    problem = BilevelProblem(inner, outer, GradientDescent(lr=lr, steps=steps), phi0)
    ift, eig = dense_ift(problem, unravel(p, like), theta, (X, Y), (Xv, Yv))
    full, truncated = unrolled_references(problem, phi0, theta, (X, Y), (Xv, Yv), lr, steps, truncated_steps)
    return Fuzzed("mlp", (seed, shape, n, log_wd, steps), problem, theta, (X, Y), (Xv, Yv), unravel(p, like), True,
                  ift, eig, lr, steps, truncated_steps, full, truncated)


@lru_cache(maxsize=256)
def saddle(seed: int, d: int, k: int, m: int, eps: float) -> Fuzzed | None:
    k = min(k, d)  # more constraints than variables: a singular KKT matrix at eps = 0
    g = torch.Generator().manual_seed(seed)
    M = randn(g, d, d)
    P = M @ M.T / d + 0.5 * torch.eye(d, dtype=DTYPE)
    C, B, c, D, d0 = randn(g, k, d), randn(g, d, m), randn(g, d), randn(g, k, m), randn(g, k)
    target, e = randn(g, d), randn(g, m)
    theta = {"theta": randn(g, m)}

    def lagrangian(phi, theta, batch):
        w, mu = phi["w"], phi["mu"]
        f = 0.5 * w @ (P @ w) + 0.3 * torch.log(torch.cosh(w)).sum() - w @ (B @ theta["theta"] + c)
        constraint = C @ (w + 0.2 * torch.tanh(w)) - D @ theta["theta"] - d0
        return f + mu @ constraint - 0.5 * eps * (mu ** 2).sum()

    def outer(phi, theta, batch):
        return (0.5 * ((phi["w"] - target) ** 2).sum() + 0.05 * (phi["mu"] ** 2).sum()
                + 0.1 * e @ theta["theta"])

    like = {"w": torch.zeros(d, dtype=DTYPE), "mu": torch.zeros(k, dtype=DTYPE)}
    problem = BilevelProblem(lagrangian, outer, None, like)
    flat_inner, _ = flat_losses(problem, like, theta, None, None)
    p, res = newton_root(flat_inner, torch.zeros(d + k, dtype=DTYPE), ravel(theta))
    if float(res.norm()) > 1e-11:
        return None
    phi_star = unravel(p, like)
    ift, eig = dense_ift(problem, phi_star, theta, None, None)
    if float(eig.abs().min() / eig.abs().max()) < 1e-6:  # a nearly singular KKT matrix: C not of full rank
        return None
    return Fuzzed("saddle", (seed, d, k, m, eps), problem, theta, None, None, phi_star, True, ift, eig)


# --- The drawn parameters: one table feeds the hypothesis strategies and the benchmark's sampler.


@dataclass(frozen=True)
class Ints:
    lo: int
    hi: int

    def strategy(self):
        return st.integers(self.lo, self.hi)

    def sample(self, rng):
        return rng.randint(self.lo, self.hi)


@dataclass(frozen=True)
class Floats:
    lo: float
    hi: float

    def strategy(self):
        return st.floats(self.lo, self.hi)

    def sample(self, rng):
        return rng.uniform(self.lo, self.hi)


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def strategy(self):
        return st.sampled_from(self.values)

    def sample(self, rng):
        return rng.choice(self.values)


@dataclass(frozen=True)
class Either:
    """``first`` or ``second``, with even odds."""

    first: object
    second: object

    def strategy(self):
        return st.one_of(self.first.strategy(), self.second.strategy())

    def sample(self, rng):
        return (self.first if rng.random() < 0.5 else self.second).sample(rng)


SEED = Ints(0, 2 ** 31 - 1)
# Of the converged GD budget: half the draws converge, half stop short (where the stationarity
# check's 1e-2 threshold falls between 0.05 and 0.3 of the budget, depending on the problem).
FRACTION = Either(OneOf((1.0,)), Floats(0.02, 0.6))
PARAMS = {  # kind -> the builder's arguments, in order
    "quadratic": (SEED, Ints(2, 8), Ints(1, 3), Floats(1.0, 20.0), FRACTION),  # seed, d, m, kappa, fraction
    "logistic": (SEED, Ints(2, 8), Ints(10, 30), FRACTION),  # seed, d, n, fraction
    "mlp": (SEED, Ints(0, len(MLP_SHAPES) - 1), Ints(6, 12), OneOf((-4.0, -3.0)), Ints(5, 60)),
    # seed, shape, n, log weight decay, GD steps of the unrolled backends
    "saddle": (SEED, Ints(2, 6), Ints(1, 3), Ints(1, 3), OneOf((0.0, 0.1, 0.5))),  # seed, d, k, m, eps
}
SPECS = {kind: st.tuples(*(p.strategy() for p in params)) for kind, params in PARAMS.items()}


def sample_spec(kind: str, rng) -> tuple:
    return tuple(p.sample(rng) for p in PARAMS[kind])


BUILD = {"quadratic": quadratic, "logistic": logistic, "mlp": mlp, "saddle": saddle}
HAS_SOLVER = {"quadratic": True, "logistic": True, "mlp": True, "saddle": False}


# --- The backends.


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Fuzzed], object]
    family: str  # "implicit" (reference: IFT), "unrolled" or "truncated" (references: finite differences)
    needs: str | None = None  # an optional library

    def available(self) -> bool:
        if self.needs == "minres":
            return MINRES is not None
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


CASES = [
    Case("Unrolled", lambda fz: Unrolled(), "unrolled"),
    Case("TruncatedUnrolled", lambda fz: TruncatedUnrolled(fz.truncated_steps), "truncated"),
    Case("HigherUnrolled", lambda fz: HigherUnrolled(), "unrolled", "higher"),
    Case("Implicit-CG", lambda fz: Implicit(CG()), "implicit"),
    Case("Implicit-CG-continue", lambda fz: Implicit(CG(negative_curvature="continue")), "implicit"),
    Case("Implicit-Neumann", lambda fz: Implicit(Neumann(*fz.neumann)), "implicit"),
    Case("Implicit-GMRES", lambda fz: Implicit(GMRES()), "implicit"),
    Case("Implicit-Dense", lambda fz: Implicit(Dense()), "implicit"),
    Case("Implicit-MINRES", lambda fz: Implicit(MINRES()), "implicit", "minres"),
    Case("Torchopt-CG", lambda fz: TorchoptImplicit(CG(negative_curvature="continue")), "implicit", "torchopt"),
    Case("Torchopt-Neumann", lambda fz: TorchoptImplicit(Neumann(*fz.neumann)), "implicit", "torchopt"),
]


def applies(kind: str, case: Case) -> bool:
    return case.family == "implicit" or HAS_SOLVER[kind]


@dataclass(frozen=True)
class Outcome:
    """``status``: "right" (within the case's tolerance), "warned", "raised" or "silent" (neither)."""

    status: str
    err: float | None
    message: str = ""
    stats: dict | None = None  # the result's diagnostics, as floats
    reasons: tuple = ()  # the failure kinds the diagnostics name (bilevel.diagnostics.failures)

    @property
    def wrong(self) -> bool:
        return self.err is None or not self.err <= WRONG


def reference(fz: Fuzzed, case: Case) -> tuple[dict, float, float]:
    """``(reference, floor of its norm in rel_err, tolerance)`` for ``case`` on ``fz``."""
    if case.family == "implicit":
        exact = fz.given_solution or fz.converged
        return fz.ift, 0.0, TOL if exact else BUDGET_TOL
    return (fz.unrolled_fd if case.family == "unrolled" else fz.truncated_fd), FD_FLOOR, TOL


def run_case(fz: Fuzzed, case: Case) -> Outcome:
    """One hypergradient with ``on_failure="warn"``, classified against the reference."""
    backend = case.make(fz)
    solution = fz.phi_star if case.family == "implicit" and fz.given_solution else None
    expected, floor, tol = reference(fz, case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = hypergrad(fz.problem, fz.theta, fz.inner_batch, fz.outer_batch, backend=backend,
                               inner_solution=solution, on_failure="warn")
        except (SolverError, NonFiniteError) as exc:
            return Outcome("raised", None, f"{type(exc).__name__}: {exc}")
    err = rel_err(result.grad, expected, floor)
    found = [str(w.message) for w in caught if issubclass(w.category, SolverWarning)]
    stats = {k: float(v) for k, v in result.stats.items()}
    reasons = tuple(f.kind for f in failures(result.diagnostics))
    if err <= tol:
        return Outcome("right", err, "; ".join(found), stats, reasons)
    if found:
        return Outcome("warned", err, "; ".join(found), stats, reasons)
    return Outcome("silent", err, ", ".join(f"{k}={v:.3g}" for k, v in stats.items()), stats, reasons)


# --- The property.

EXAMPLES = {"quadratic": 8, "logistic": 8, "mlp": 6, "saddle": 15}  # mlp: ~1.5 s a problem (Newton from random starts)
# Shrinking is off: a failure prints its problem (the drawn spec rebuilds it), and CI time stays bounded.
FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=False,
            phases=(Phase.explicit, Phase.generate),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("kind", list(SPECS))
def test_right_or_reported(kind):
    """Every applicable backend on every drawn problem: within its tolerance of the reference, or a
    SolverWarning, or SolverError/NonFiniteError."""
    cases = [c for c in CASES if applies(kind, c) and c.available()]

    @settings(max_examples=EXAMPLES[kind], **FUZZ)
    @given(spec=SPECS[kind])
    def right_or_reported(spec):
        fz = BUILD[kind](*spec)
        assume(fz is not None)
        silent = []
        for case in cases:
            out = run_case(fz, case)
            if out.status == "silent":
                silent.append(f"{case.id}: silent error {out.err:.3e} (above tolerance, no SolverWarning); "
                              f"diagnostics {out.message}")
        assert not silent, f"{fz.describe()}\n" + "\n".join(silent)

    right_or_reported()


def test_a_short_inner_budget_that_passes_the_gradient_test_is_caught_by_the_newton_check():
    """1-D: L_in = 0.5 w^2 - w theta (w* = theta), L_out = 0.5 (w - 0.9)^2, theta = 1: the true hypergradient
    is 0.1. GD(lr=0.1) from 0 for 44 steps leaves |grad L_in| = 0.9^44 = 0.0097 of its start, which passes
    stationarity_rtol=1e-2, while the implicit hypergradient is w_44 - 0.9 = 0.0903: 9.7% off. One Newton
    step of the inner problem moves it to 0.1 (a change of 9.7% of the refined norm), so newton_check=1e-2 warns;
    with newton_check=None it is the silent answer it used to be."""
    problem = BilevelProblem(lambda phi, th, b: 0.5 * (phi["w"] ** 2).sum() - (phi["w"] * th["t"]).sum(),
                             lambda phi, th, b: 0.5 * ((phi["w"] - 0.9) ** 2).sum(),
                             GradientDescent(lr=0.1, steps=44), {"w": torch.zeros(1, dtype=DTYPE)})
    theta = {"t": torch.ones(1, dtype=DTYPE)}
    with pytest.warns(SolverWarning, match="one Newton step of the inner problem"):
        result = hypergrad(problem, theta, None, None, backend=Implicit(Dense()))
    err = abs(float(result.grad["t"]) - 0.1) / 0.1
    assert err > WRONG  # the value is unchanged: the check reports, it does not correct
    change = float(result.diagnostics.stationarity.newton_change)
    assert abs(change - (0.1 - 0.0903) / 0.1) < 2e-3 and not bool(result.diagnostics.stationarity.stationary)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = hypergrad(problem, theta, None, None, backend=Implicit(Dense(), newton_check=None))
    assert bool(quiet.diagnostics.stationarity.stationary)
    # A solved inner problem passes: the Newton step is zero and the check costs nothing more.
    solved = dataclasses.replace(problem, inner_solver=GradientDescent(lr=1.0, steps=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = hypergrad(solved, theta, None, None, backend=Implicit(Dense()))
    assert float(exact.diagnostics.stationarity.newton_change) == 0.0


def test_the_property_can_fail():
    """The check is not vacuous: a declared CG budget of one step is silently wrong on a quadratic."""
    fz = quadratic(0, 6, 2, 20.0, 1.0)
    out = run_case(fz, Case("Implicit-CG-1", lambda fz: Implicit(CG(maxiter=1, truncated=True)), "implicit"))
    assert out.status == "silent" and out.err > WRONG


def test_references_agree_where_they_must():
    """The references check each other: a converged GD budget makes the unrolled and truncated
    derivatives the IFT answer, on a quadratic and on a logistic regression."""
    for fz in (quadratic(1, 5, 2, 8.0, 1.0), logistic(2, 4, 20, 1.0)):
        assert rel_err(fz.unrolled_fd, fz.ift) < TOL, fz.describe()
        assert rel_err(fz.truncated_fd, fz.ift) < TOL, fz.describe()
