"""Linear solvers against dense solves, with their diagnostics, in float64."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from bilevel import CG, Dense, Neumann, SolverError, solve_cg, solve_dense, solve_neumann

DTYPE = torch.float64


def spd(n, cond=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)), n, dtype=DTYPE)
    return q @ torch.diag(eig) @ q.T


def as_dict_matvec(A, split=(3,)):
    """A matvec over a two-leaf dict, so the solvers see a parameter dict, not a vector."""
    n = A.shape[0]
    k = split[0]

    def matvec(v):
        x = torch.cat([v["a"], v["b"].reshape(-1)])
        y = A @ x
        return {"a": y[:k], "b": y[k:].reshape(v["b"].shape)}

    return matvec, k, n


def rhs(n, k, seed=1):
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return b, {"a": b[:k], "b": b[k:].reshape(-1, 1)}


SOLVERS = [
    ("cg", lambda: CG(tol=1e-13)),
    ("neumann", lambda: Neumann(alpha=1.0 / 10.0, steps=400)),
    ("dense", lambda: Dense()),
]


@pytest.mark.parametrize("name,make", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_solves_spd_system(name, make):
    A = spd(7, cond=10.0)
    matvec, k, n = as_dict_matvec(A)
    b, b_dict = rhs(n, k)
    result = make()(matvec, b_dict)
    x = torch.cat([result.solution["a"], result.solution["b"].reshape(-1)])
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=0)
    assert bool(result.converged) and not bool(result.diverged) and not bool(result.negative_curvature)
    assert float(result.residual_norm) < 1e-9 * float(b.norm())


def test_cg_takes_at_most_n_steps_and_stops_early():
    A = spd(6, cond=50.0)
    matvec, k, n = as_dict_matvec(A)
    _, b = rhs(n, k)
    result = solve_cg(matvec, b, tol=1e-12)
    assert 1 <= int(result.steps) <= n
    assert bool(result.converged)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 10_000), log_cond=st.floats(0.0, 3.0))
def test_cg_property_matches_dense(n, seed, log_cond):
    A = spd(n, cond=10.0**log_cond, seed=seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    result = solve_cg(lambda v: {"x": A @ v["x"]}, {"x": b}, tol=1e-12, maxiter=4 * n)
    assert bool(result.converged)
    torch.testing.assert_close(result.solution["x"], torch.linalg.solve(A, b), rtol=1e-7, atol=1e-9)
    dense = solve_dense(lambda v: {"x": A @ v["x"]}, {"x": b})
    torch.testing.assert_close(dense.solution["x"], torch.linalg.solve(A, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(), (1,)], ids=["scalar", "one-element"])
def test_scalar_and_one_element_systems(shape):
    """TorchOpt's CG once set maxiter to 0 for a scalar (metaopt/torchopt#222): ours solves it."""
    b = {"x": torch.full(shape, 3.0, dtype=DTYPE)}
    result = solve_cg(lambda v: {"x": 4.0 * v["x"]}, b)
    assert int(result.steps) == 1 and bool(result.converged)
    torch.testing.assert_close(result.solution["x"], torch.full(shape, 0.75, dtype=DTYPE))
    assert result.solution["x"].shape == shape
    torch.testing.assert_close(solve_neumann(lambda v: {"x": 0.5 * v["x"]}, b, alpha=1.0, steps=80).solution["x"],
                               torch.full(shape, 6.0, dtype=DTYPE))
    torch.testing.assert_close(solve_dense(lambda v: {"x": 4.0 * v["x"]}, b).solution["x"],
                               torch.full(shape, 0.75, dtype=DTYPE))


def test_cg_reports_negative_curvature_on_indefinite_system():
    A = torch.diag(torch.tensor([2.0, 1.0, -3.0], dtype=DTYPE))
    b = {"x": torch.ones(3, dtype=DTYPE)}
    result = solve_cg(lambda v: {"x": A @ v["x"]}, b)
    assert bool(result.negative_curvature)
    assert not bool(result.converged)
    assert torch.isfinite(result.solution["x"]).all()
    with pytest.raises(SolverError, match="negative curvature"):
        solve_cg(lambda v: {"x": A @ v["x"]}, b, throw=True)


def test_neumann_reports_divergence_when_alpha_is_too_large():
    A = spd(5, cond=10.0)  # eigenvalues in [1, 10]: alpha must be below 0.2
    b = {"x": torch.ones(5, dtype=DTYPE)}
    result = solve_neumann(lambda v: {"x": A @ v["x"]}, b, alpha=0.5, steps=30)
    assert bool(result.diverged) and not bool(result.converged)
    with pytest.raises(SolverError, match="diverged"):
        solve_neumann(lambda v: {"x": A @ v["x"]}, b, alpha=0.5, steps=30, throw=True)
    ok = solve_neumann(lambda v: {"x": A @ v["x"]}, b, alpha=0.1, steps=30)
    assert not bool(ok.diverged)


def test_non_convergence_is_reported_and_raises_on_request():
    A = spd(20, cond=1e4)
    b = {"x": torch.ones(20, dtype=DTYPE)}
    result = solve_cg(lambda v: {"x": A @ v["x"]}, b, maxiter=2)
    assert not bool(result.converged) and int(result.steps) == 2
    assert float(result.residual_norm) > 0
    with pytest.raises(SolverError, match="did not converge after 2 steps"):
        solve_cg(lambda v: {"x": A @ v["x"]}, b, maxiter=2, throw=True)


def test_cg_residual_is_the_true_residual():
    A = spd(6, cond=100.0)
    b = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    result = solve_cg(lambda v: {"x": A @ v["x"]}, {"x": b}, maxiter=3)
    true = (b - A @ result.solution["x"]).norm()
    torch.testing.assert_close(result.residual_norm, true, rtol=1e-8, atol=1e-12)


def test_cg_init_and_ridge():
    A = spd(5)
    b = torch.randn(5, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    x_true = torch.linalg.solve(A + 0.5 * torch.eye(5, dtype=DTYPE), b)
    result = solve_cg(lambda v: {"x": A @ v["x"]}, {"x": b}, ridge=0.5, init={"x": x_true + 0.01}, tol=1e-12)
    torch.testing.assert_close(result.solution["x"], x_true, rtol=1e-9, atol=1e-12)


def test_batched_cg_under_vmap_equals_loop():
    """Systems that converge at different steps: masked updates keep each one exact."""
    As = torch.stack([spd(6, cond=c, seed=i) for i, c in enumerate([2.0, 50.0, 1e3])])
    bs = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=DTYPE)

    def solve(A, b):
        return solve_cg(lambda v: {"x": A @ v["x"]}, {"x": b}, maxiter=12, tol=1e-12)

    batched = vmap(solve)(As, bs)
    for i in range(3):
        single = solve(As[i], bs[i])
        torch.testing.assert_close(batched.solution["x"][i], single.solution["x"], rtol=1e-10, atol=1e-12)
        assert int(batched.steps[i]) == int(single.steps)
        assert bool(batched.converged[i]) == bool(single.converged)
    assert len(set(batched.steps.tolist())) > 1  # they really stopped at different steps


@pytest.mark.parametrize("make,match", [
    (lambda: CG(maxiter=0), "maxiter must be >= 1"),
    (lambda: CG(tol=-1.0), "tol must be a number >= 0"),
    (lambda: Neumann(alpha=0.0), "alpha must be a number > 0"),
    (lambda: Neumann(steps=-2), "steps must be >= 1"),
    (lambda: Dense(ridge=-1.0), "ridge must be a number >= 0"),
])
def test_bad_solver_options_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_cg_continue_through_negative_curvature_solves_indefinite_system():
    """Plain CG (negative_curvature="continue") solves a nonsingular indefinite system and
    still reports that it met negative curvature; "stop" freezes at the last good iterate."""
    A = torch.diag(torch.tensor([2.0, 1.0, -3.0], dtype=DTYPE))
    b = {"x": torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE)}
    result = solve_cg(lambda v: {"x": A @ v["x"]}, b, negative_curvature="continue")
    assert bool(result.negative_curvature) and bool(result.converged)
    torch.testing.assert_close(result.solution["x"], torch.tensor([0.5, 2.0, -1.0], dtype=DTYPE))
    with pytest.raises(ValueError, match="negative_curvature must be one of"):
        CG(negative_curvature="ignore")


@pytest.mark.parametrize("name,make", SOLVERS[:2], ids=[s[0] for s in SOLVERS[:2]])
def test_iterative_solvers_start_from_init(name, make):
    """Started at the exact solution, CG and Neumann stay there with a zero residual; started
    elsewhere, Neumann's residual is (I - alpha A)^steps (b - A x_0), exactly."""
    A = spd(7, cond=10.0)
    matvec, k, n = as_dict_matvec(A)
    b, b_dict = rhs(n, k)
    x_star = torch.linalg.solve(A, b)
    init = {"a": x_star[:k], "b": x_star[k:].reshape(-1, 1)}
    result = make()(matvec, b_dict, init=init)
    x = torch.cat([result.solution["a"], result.solution["b"].reshape(-1)])
    torch.testing.assert_close(x, x_star, rtol=1e-12, atol=0)
    assert float(result.residual_norm) < 1e-12 * float(b.norm())
    x0 = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    res = solve_neumann(matvec, b_dict, init={"a": x0[:k], "b": x0[k:].reshape(-1, 1)}, alpha=0.1, steps=7)
    expected = torch.linalg.matrix_power(torch.eye(n, dtype=DTYPE) - 0.1 * A, 7) @ (b - A @ x0)
    torch.testing.assert_close(res.residual_norm, expected.norm(), rtol=1e-12, atol=0)
