"""A truncated Neumann series whose alpha breaks 0 < alpha < 2 / lambda_max is reported as
diverged by its spectral check, not passed as a deliberate budget (float64, dense spectrum)."""

import torch

from bilevel import Neumann
from bilevel.solvers.linear import rayleigh_estimate


def spd(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.linspace(0.1, 1.0, n, dtype=torch.float64)
    return q @ torch.diag(eigenvalues) @ q.T, eigenvalues


def solve(A, solver, b=None):
    b = {"x": torch.ones(A.shape[0], dtype=torch.float64)} if b is None else b
    return solver(lambda v: {"x": A @ v["x"]}, b)


def test_a_short_series_with_alpha_above_two_over_lambda_max_is_diverged_not_truncated():
    A, ev = spd()
    bad = solve(A, Neumann(alpha=2.1 / float(ev.max()), steps=3, truncated=True))
    assert bool(bad.diverged) and not bool(bad.truncated)
    # Without the check, 3 steps do not show the growth: the same series passes as a budget.
    unchecked = solve(A, Neumann(alpha=2.1 / float(ev.max()), steps=3, truncated=True, spectral_check=0))
    assert not bool(unchecked.diverged) and bool(unchecked.truncated)


def test_a_valid_alpha_stays_a_quiet_budget():
    A, ev = spd()
    ok = solve(A, Neumann(alpha=1.0 / float(ev.max()), steps=3, truncated=True))
    assert bool(ok.truncated) and not bool(ok.diverged) and not bool(ok.negative_curvature)


def test_an_indefinite_matrix_is_reported_as_negative_curvature():
    A = torch.diag(torch.tensor([-2.0, 0.5, 0.3], dtype=torch.float64))
    r = solve(A, Neumann(alpha=0.5, steps=3, truncated=True))
    assert bool(r.negative_curvature) and not bool(r.truncated)


def test_the_rayleigh_estimate_is_bounded_by_the_spectrum_and_runs_under_vmap():
    A, ev = spd()
    b = torch.randn(4, A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rho = torch.func.vmap(lambda bb: rayleigh_estimate(lambda v: {"x": A @ v["x"]}, {"x": bb}, 20))(b)
    assert bool((rho <= ev.max() + 1e-12).all()) and bool((rho >= ev.min() - 1e-12).all())
    torch.testing.assert_close(rho, torch.full_like(rho, float(ev.max())), rtol=0.05, atol=0)
    zero = rayleigh_estimate(lambda v: {"x": A @ v["x"]}, {"x": torch.zeros(A.shape[0], dtype=torch.float64)}, 5)
    assert float(zero) == 0.0
