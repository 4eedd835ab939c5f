"""MINRES against independent references in float64: a dense solve, SciPy's MINRES, CG on
SPD systems, GMRES (the same minimal residual for symmetric A), and the analytic derivative
of A^-1 b."""

import pytest
import scipy
import scipy.sparse.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from bilevel import SolverError, solve_cg, solve_gmres
from bilevel.solvers.linear import LinearSolveResult, check_linear_solver
from bilevel.solvers.minres import MINRES, solve_minres

DTYPE = torch.float64
HAS_TRUNCATED = "truncated" in LinearSolveResult._fields


def indefinite(n, cond=10.0, negative=0.5, seed=0):
    """Q diag(+-lambda) Q^T with |lambda| log-spaced in [1, cond], a fraction ``negative`` of them < 0."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    mag = torch.logspace(0, torch.log10(torch.tensor(float(cond))), n, dtype=DTYPE)
    sign = torch.ones(n, dtype=DTYPE)
    sign[torch.randperm(n, generator=g)[: int(round(negative * n))]] = -1.0
    return q @ torch.diag(sign * mag) @ q.T


def spd(n, cond=10.0, seed=0):
    return indefinite(n, cond, negative=0.0, seed=seed)


def saddle(n_h=12, n_b=4, seed=0):
    """The KKT matrix [[H, B^T], [B, 0]] of an equality-constrained quadratic: n_h positive and
    n_b negative eigenvalues for H SPD and B of full row rank."""
    g = torch.Generator().manual_seed(seed)
    H = spd(n_h, cond=20.0, seed=seed)
    B = torch.randn(n_b, n_h, generator=g, dtype=DTYPE)
    return torch.cat([torch.cat([H, B.T], 1), torch.cat([B, torch.zeros(n_b, n_b, dtype=DTYPE)], 1)], 0)


def vec(A):
    return lambda v: {"x": A @ v["x"]}


def rhs(n, seed=1):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# (name, matrix, maxiter, relative error to the dense solve): the bound grows with the
# condition number (forward error <= cond * backward error) and with lost orthogonality.
SYSTEMS = [
    ("indefinite-5-cond10", lambda: indefinite(5, 10.0), 20, 1e-10),
    ("indefinite-20-cond1e3", lambda: indefinite(20, 1e3, negative=0.3, seed=1), 200, 1e-7),
    ("indefinite-40-cond1e2", lambda: indefinite(40, 1e2, negative=0.5, seed=2), 200, 1e-8),
    ("saddle-12+4", lambda: saddle(12, 4), 80, 1e-9),
]


@pytest.mark.parametrize("name,make,maxiter,rtol", SYSTEMS, ids=[s[0] for s in SYSTEMS])
def test_matches_dense_solve_and_scipy(name, make, maxiter, rtol):
    A = make()
    n = A.shape[0]
    b = rhs(n)
    assert float(torch.linalg.eigvalsh(A).min()) < 0 < float(torch.linalg.eigvalsh(A).max())
    result = solve_minres(vec(A), {"x": b}, tol=1e-12, maxiter=maxiter)
    x = result.solution["x"]
    exact = torch.linalg.solve(A, b)
    assert bool(result.converged) and not bool(result.diverged)
    assert bool(result.negative_curvature)  # indefinite: T_k picks up a negative pivot
    assert float((x - exact).norm() / exact.norm()) < rtol
    torch.testing.assert_close(result.residual_norm, (b - A @ x).norm(), rtol=0, atol=1e-14 * float(b.norm()))
    x_sp, info = scipy.sparse.linalg.minres(A.numpy(), b.numpy(), rtol=1e-12, maxiter=maxiter)
    assert info == 0
    assert float((x - torch.from_numpy(x_sp)).norm() / exact.norm()) < 2 * rtol


def test_agrees_with_cg_on_spd_and_reports_no_negative_curvature():
    A = spd(15, cond=100.0, seed=3)
    b = {"x": rhs(15, seed=4)}
    minres = solve_minres(vec(A), b, tol=1e-12, maxiter=60)
    cg = solve_cg(vec(A), b, tol=1e-12, maxiter=60)
    torch.testing.assert_close(minres.solution["x"], cg.solution["x"], rtol=1e-9, atol=0)
    assert bool(minres.converged) and not bool(minres.negative_curvature)
    assert abs(int(minres.steps) - int(cg.steps)) <= 2  # the same Krylov spaces


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_iterate_is_the_minimal_residual_one_gmres_finds(k):
    """For symmetric A, MINRES and GMRES minimize ||b - A x|| over the same Krylov space."""
    A = indefinite(10, cond=30.0, seed=5)
    b = {"x": rhs(10, seed=6)}
    minres = solve_minres(vec(A), b, maxiter=k, tol=0.0)
    gmres = solve_gmres(vec(A), b, maxiter=k, tol=0.0)
    torch.testing.assert_close(minres.solution["x"], gmres.solution["x"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(minres.residual_norm, gmres.residual_norm, rtol=1e-9, atol=1e-12)
    assert int(minres.steps) == k


def test_batched_under_vmap_equals_loop():
    """Systems that stop at different steps (6, 3 and 2: a matrix with k distinct eigenvalues
    has a Krylov space of dimension k, so MINRES ends there at a lucky breakdown): frozen updates
    keep each exact. Each stops with a wide margin below tol: past n steps Lanczos vectors are
    made of rounding, which differs between the batched and the single matvec."""
    q = indefinite(6, seed=3)  # symmetric: its eigenvectors are an orthonormal basis
    q = torch.linalg.eigh(q).eigenvectors
    three = q @ torch.diag(torch.tensor([3.0, 3.0, -1.0, -1.0, 0.5, 0.5], dtype=DTYPE)) @ q.T
    two = torch.diag(torch.tensor([2.0, 2.0, 2.0, -1.0, -1.0, -1.0], dtype=DTYPE))
    As = torch.stack([indefinite(6, 3.0, seed=0), three, two])
    bs = torch.stack([rhs(6, seed=i) for i in range(3)])

    def solve(A, b):
        return solve_minres(vec(A), {"x": b}, maxiter=15, tol=1e-10)

    batched = vmap(solve)(As, bs)
    for i in range(3):
        single = solve(As[i], bs[i])
        torch.testing.assert_close(batched.solution["x"][i], single.solution["x"], rtol=1e-10, atol=1e-12)
        for field in LinearSolveResult._fields[1:]:
            torch.testing.assert_close(getattr(batched, field)[i], getattr(single, field),
                                       rtol=1e-6, atol=1e-14, msg=field)
        assert bool(single.converged)
    assert batched.steps.tolist() == [6, 3, 2]
    assert torch.isfinite(batched.solution["x"]).all()


def test_ridge_and_init():
    A = indefinite(8, 10.0, seed=7)
    b = rhs(8, seed=8)
    exact = torch.linalg.solve(A + 0.3 * torch.eye(8, dtype=DTYPE), b)
    for init in (None, {"x": exact + 0.01}):
        result = MINRES(ridge=0.3, tol=1e-12, maxiter=40)(vec(A), {"x": b}, init=init)
        torch.testing.assert_close(result.solution["x"], exact, rtol=1e-10, atol=0)
    at_solution = solve_minres(vec(A), {"x": b}, ridge=0.3, init={"x": exact}, tol=1e-10)
    assert int(at_solution.steps) == 0 and bool(at_solution.converged)


def test_dict_with_two_leaves_of_different_shapes():
    A = saddle(9, 3, seed=1)  # 12 unknowns, split into a (3,) and a (3, 3) leaf

    def matvec(v):
        y = A @ torch.cat([v["a"], v["b"].reshape(-1)])
        return {"a": y[:3], "b": y[3:].reshape(3, 3)}

    b = rhs(12, seed=2)
    result = solve_minres(matvec, {"a": b[:3], "b": b[3:].reshape(3, 3)}, tol=1e-12, maxiter=60)
    assert result.solution["b"].shape == (3, 3) and bool(result.converged)
    x = torch.cat([result.solution["a"], result.solution["b"].reshape(-1)])
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=0)


def test_zero_rhs_scalar_and_lucky_breakdown_are_finite():
    A = indefinite(5, seed=9)
    zero = solve_minres(vec(A), {"x": torch.zeros(5, dtype=DTYPE)})
    assert int(zero.steps) == 0 and bool(zero.converged)
    torch.testing.assert_close(zero.solution["x"], torch.zeros(5, dtype=DTYPE))
    scalar = solve_minres(lambda v: {"x": -4.0 * v["x"]}, {"x": torch.tensor(3.0, dtype=DTYPE)})
    assert int(scalar.steps) == 1 and bool(scalar.converged) and bool(scalar.negative_curvature)
    torch.testing.assert_close(scalar.solution["x"], torch.tensor(-0.75, dtype=DTYPE))
    # b an eigenvector: beta_2 = 0 after one step, exactly.
    D = torch.diag(torch.tensor([3.0, -2.0, 1.0], dtype=DTYPE))
    lucky = solve_minres(vec(D), {"x": torch.tensor([0.0, 4.0, 0.0], dtype=DTYPE)}, tol=0.0)
    assert int(lucky.steps) == 1 and bool(lucky.converged)
    torch.testing.assert_close(lucky.solution["x"], torch.tensor([0.0, -2.0, 0.0], dtype=DTYPE))


def test_maxiter_truncation_is_reported_and_raises_on_request():
    A = indefinite(20, 1e3, seed=10)
    b = {"x": rhs(20, seed=11)}
    plain = solve_minres(vec(A), b, maxiter=3)
    assert not bool(plain.converged) and int(plain.steps) == 3 and not bool(plain.diverged)
    budget = MINRES(maxiter=3, truncated=True)(vec(A), b)
    assert not bool(budget.converged)
    if HAS_TRUNCATED:
        assert not bool(plain.truncated) and bool(budget.truncated)
        assert not bool(MINRES(maxiter=100, truncated=True, tol=1e-8)(vec(A), b).truncated)  # converged
    with pytest.raises(SolverError, match="solve_minres: did not converge after 3 steps.*raise maxiter"):
        solve_minres(vec(A), b, maxiter=3, throw=True)
    assert bool(solve_minres(vec(A), b, maxiter=200, tol=1e-8, throw=True).converged)


@pytest.mark.parametrize("make,error,match", [
    (lambda: MINRES(maxiter=0), ValueError, "MINRES: maxiter must be >= 1"),
    (lambda: MINRES(maxiter=2.5), TypeError, "MINRES: maxiter must be an int"),
    (lambda: MINRES(tol=-1.0), ValueError, "MINRES: tol must be a number >= 0"),
    (lambda: MINRES(ridge=-1.0), ValueError, "MINRES: ridge must be a number >= 0"),
    (lambda: MINRES(truncated=1), TypeError, "MINRES: truncated must be True or False"),
    (lambda: MINRES(truncated=True), ValueError, "give maxiter"),
    (lambda: solve_minres(vec(torch.eye(2)), {"x": torch.ones(2)}, atol=-1), ValueError, "solve_minres: atol"),
])
def test_bad_options_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_is_a_linear_solver():
    solver = MINRES(maxiter=5)
    assert check_linear_solver("Implicit", solver) is solver
    with pytest.raises(Exception):
        solver.maxiter = 6  # frozen


def test_autograd_through_iterations_matches_analytic_derivative():
    """d(c^T A^-1 b)/dM for A = (M + M^T)/2: G = -(A^-1 c)(A^-1 b)^T, symmetrized."""
    n = 6
    M = indefinite(n, 5.0, seed=12).requires_grad_(True)
    b, c = rhs(n, seed=13), rhs(n, seed=14)

    def loss(M):
        A = 0.5 * (M + M.T)
        return torch.dot(c, solve_minres(vec(A), {"x": b}, tol=1e-13, maxiter=3 * n).solution["x"])

    (grad,) = torch.autograd.grad(loss(M), M)
    A = 0.5 * (M + M.T).detach()
    G = -torch.outer(torch.linalg.solve(A, c), torch.linalg.solve(A, b))
    torch.testing.assert_close(grad, 0.5 * (G + G.T), rtol=1e-8, atol=1e-10)
    # torch.func differentiates through it too, here under vmap-free jacrev of the solution.
    jac = torch.func.jacrev(lambda b: solve_minres(vec(A), {"x": b}, tol=1e-13, maxiter=3 * n).solution["x"])(b)
    torch.testing.assert_close(jac, torch.linalg.inv(A), rtol=1e-8, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 10), seed=st.integers(0, 10_000), log_cond=st.floats(0.0, 3.0),
       negative=st.floats(0.0, 1.0))
def test_property_matches_dense_on_random_indefinite(n, seed, log_cond, negative):
    A = indefinite(n, 10.0**log_cond, negative=negative, seed=seed)
    b = rhs(n, seed=seed + 1)
    result = solve_minres(vec(A), {"x": b}, tol=1e-12, maxiter=10 * n)
    exact = torch.linalg.solve(A, b)
    assert bool(result.converged) and not bool(result.diverged)
    # forward error <= cond * relative residual (1e-12), with room for rounding
    assert float((result.solution["x"] - exact).norm() / exact.norm()) < 1e-9 * 10.0**log_cond
    has_negative = bool((torch.linalg.eigvalsh(A) < 0).any())
    assert bool(result.negative_curvature) <= has_negative  # never flags an SPD system
