"""Fixed points z* = T(z*, theta): forward solvers, GMRES, and the fixed-point backends in float64,
against a closed-form linear fixed point, the ridge argmin (as a gradient-step fixed point) and
central finite differences of a tanh equilibrium layer."""

import pytest
import torch
from torch.func import vmap

from bilevel import CG, BilevelProblem, Dense, Neumann, SolverError
from bilevel.adapters import FixedPointImplicit, UnrolledFixedPoint
from bilevel import (Anderson, FixedPointIteration, FixedPointProblem, batched_fixed_point_hypergrad,
                                 fixed_point_hypergrad)
from bilevel.solvers.linear import GMRES, check_linear_solver, solve_gmres
from problems import DTYPE, rel_err, ridge_data, ridge_exact

EXACT_RTOL = 1e-10  # converged solves of a well-conditioned linear system in float64
FD_RTOL = 1e-6  # central differences with h = 1e-5: truncation ~h^2, rounding ~eps/h
BATCH_RTOL = 1e-12  # vmap and a loop run the same masked iterations; only summation order differs
N, P = 6, 3


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- (a) A linear fixed point z = A z + B x with a closed form.


def linear_theta(seed=0, norm=0.8):
    g = _gen(seed)
    A = torch.randn(N, N, generator=g, dtype=DTYPE)  # not symmetric
    return {"A": norm * A / torch.linalg.matrix_norm(A, 2), "B": torch.randn(N, P, generator=g, dtype=DTYPE)}


def linear_data(seed=1, tasks=None):
    g = _gen(seed)
    shape = () if tasks is None else (tasks,)
    return torch.randn(*shape, P, generator=g, dtype=DTYPE), torch.randn(*shape, N, generator=g, dtype=DTYPE)


def linear_map(z, theta, x):
    return {"z": theta["A"] @ z["z"] + theta["B"] @ x}


def linear_outer(z, theta, y):
    return 0.5 * ((z["z"] - y) ** 2).sum() + 0.05 * (theta["B"] ** 2).sum()


def linear_problem(forward_solver=None, init="zeros"):
    if init == "zeros":
        init = {"z": torch.zeros(N, dtype=DTYPE)}
    return FixedPointProblem(linear_map, linear_outer, forward_solver, init)


def linear_exact(theta, x, y):
    """z* = (I - A)^-1 B x; w = (I - A)^-T (z* - y); dL/dA = w z*^T, dL/dB = w x^T + 0.1 B."""
    I = torch.eye(N, dtype=DTYPE)
    z = torch.linalg.solve(I - theta["A"], theta["B"] @ x)
    w = torch.linalg.solve((I - theta["A"]).T, z - y)
    loss = 0.5 * ((z - y) ** 2).sum() + 0.05 * (theta["B"] ** 2).sum()
    return z, {"A": torch.outer(w, z), "B": torch.outer(w, x) + 0.1 * theta["B"]}, loss


FORWARD = [
    ("iteration", FixedPointIteration(steps=400, tol=1e-14)),
    ("iteration-damped", FixedPointIteration(steps=800, tol=1e-14, damping=0.7)),
    ("anderson", Anderson(steps=100, memory=N, tol=1e-14)),
    ("anderson-short-memory", Anderson(steps=200, memory=2, tol=1e-14, mixing=0.8)),
]

ADJOINT = [
    ("gmres", GMRES(tol=1e-14)),
    ("neumann", Neumann(alpha=1.0, steps=300)),  # sum_k (A^T)^k g with ||A|| = 0.8: 0.8^300 ~ 1e-29
    ("dense", Dense()),
]


@pytest.mark.parametrize("name,solver", FORWARD, ids=[f[0] for f in FORWARD])
def test_forward_solvers_find_the_linear_fixed_point(name, solver):
    theta = linear_theta()
    x, y = linear_data()
    z_star, _, _ = linear_exact(theta, x, y)
    res = linear_problem(solver).solve(theta, x)
    assert rel_err(res.solution, {"z": z_star}) < EXACT_RTOL
    assert bool(res.converged) and not bool(res.diverged)
    assert float(res.residual_norm) <= 1e-14 * float(z_star.norm())
    assert 0 < int(res.steps) < solver.steps


def test_anderson_takes_fewer_iterations_than_plain_iteration(capsys):
    theta = linear_theta(norm=0.95)
    x, _ = linear_data()
    steps = {}
    for name, solver in [("iteration", FixedPointIteration(steps=2000, tol=1e-12)),
                         ("anderson", Anderson(steps=200, memory=N, tol=1e-12))]:
        res = linear_problem(solver).solve(theta, x)
        assert bool(res.converged), name
        steps[name] = int(res.steps)
    with capsys.disabled():
        print(f"\n  linear fixed point, ||A|| = 0.95, tol 1e-12: iterations {steps}")
    # With memory >= n, Anderson on a linear map is GMRES in disguise: about n + a few steps.
    assert steps["anderson"] <= 3 * N < steps["iteration"]


@pytest.mark.parametrize("name,linear_solver", ADJOINT, ids=[a[0] for a in ADJOINT])
def test_implicit_backend_matches_the_closed_form(name, linear_solver):
    theta = linear_theta()
    x, y = linear_data()
    z_star, exact, loss = linear_exact(theta, x, y)
    problem = linear_problem(Anderson(steps=100, memory=N, tol=1e-14))
    result = fixed_point_hypergrad(problem, theta, x, y, backend=FixedPointImplicit(linear_solver))
    assert rel_err(result.grad, exact) < EXACT_RTOL
    assert rel_err(result.inner_solution, {"z": z_star}) < EXACT_RTOL
    torch.testing.assert_close(result.loss, loss, rtol=1e-12, atol=0)
    s = result.stats
    assert bool(s["converged"]) and bool(s["forward_converged"]) and not bool(s["forward_diverged"])
    assert float(s["fixed_point_residual"]) < 1e-13


def test_unrolled_reference_matches_the_closed_form():
    theta = linear_theta()
    x, y = linear_data()
    _, exact, _ = linear_exact(theta, x, y)
    problem = linear_problem(FixedPointIteration(steps=400, tol=1e-15))
    result = fixed_point_hypergrad(problem, theta, x, y, backend=UnrolledFixedPoint())
    assert rel_err(result.grad, exact) < EXACT_RTOL
    assert bool(result.stats["forward_converged"])


def test_implicit_backend_at_a_given_fixed_point():
    """Only z* enters: here it comes from a plain loop outside the library, with no forward_solver."""
    theta = linear_theta()
    x, y = linear_data()
    _, exact, _ = linear_exact(theta, x, y)
    z = torch.zeros(N, dtype=DTYPE)
    for _ in range(300):
        z = theta["A"] @ z + theta["B"] @ x
    problem = linear_problem(forward_solver=None, init=None)
    result = fixed_point_hypergrad(problem, theta, x, y, backend=FixedPointImplicit(Dense()),
                                   inner_solution={"z": z})
    assert rel_err(result.grad, exact) < EXACT_RTOL
    assert "forward_converged" not in result.stats and float(result.stats["fixed_point_residual"]) < 1e-13


def test_gradient_step_fixed_point_equals_the_ridge_argmin():
    """z = z - eta grad L_in(z) has the ridge minimizer as its fixed point; I - dT/dz = eta H is
    symmetric, so CG applies, and the hypergradient is the closed-form ridge one (eta cancels)."""
    lam = 10.0
    inner, outer, theta = ridge_data()
    X, yy = inner
    L = float(torch.linalg.eigvalsh(X.T @ X).max()) + lam
    w_star, exact, _, _ = ridge_exact(lam, inner, outer, theta)

    def gradient_step(z, theta, batch):
        X, y = batch
        grad = X.T @ (X @ z["w"] - y) + lam * (z["w"] - theta["w"])
        return {"w": z["w"] - grad / L}

    def outer_loss(z, theta, batch):
        Xv, yv = batch
        return 0.5 * ((Xv @ z["w"] - yv) ** 2).sum()

    problem = FixedPointProblem(gradient_step, outer_loss, Anderson(steps=100, memory=5, tol=1e-14),
                                lambda theta, batch: dict(theta))
    for solver in (CG(tol=1e-14), GMRES(tol=1e-14)):
        result = fixed_point_hypergrad(problem, theta, inner, outer, backend=FixedPointImplicit(solver))
        assert rel_err(result.grad, {"w": exact}) < 1e-8, solver  # the bar of test_exact_hypergradients
        assert rel_err(result.inner_solution, {"w": w_star}) < 1e-8, solver


# --- (b) A nonlinear contraction z = tanh(W z + U x + c) against central finite differences.

H, K = 4, 5  # hidden units, examples


def tanh_theta(seed=2):
    g = _gen(seed)
    W = torch.randn(H, H, generator=g, dtype=DTYPE)
    return {"W": 0.5 * W / torch.linalg.matrix_norm(W, 2), "U": torch.randn(H, P, generator=g, dtype=DTYPE),
            "c": 0.1 * torch.randn(H, generator=g, dtype=DTYPE)}


def tanh_data(seed=3, tasks=None):
    g = _gen(seed)
    shape = () if tasks is None else (tasks,)
    x = torch.randn(*shape, K, P, generator=g, dtype=DTYPE)
    y = (torch.randn(*shape, K, H, generator=g, dtype=DTYPE), torch.randn(*shape, K, generator=g, dtype=DTYPE))
    return x, y


def tanh_map(z, theta, x):
    return {"z": torch.tanh(z["z"] @ theta["W"].T + x @ theta["U"].T + theta["c"])}


def tanh_outer(z, theta, batch):
    V, t = batch
    return 0.5 * (((z["z"] * V).sum(-1) - t) ** 2).sum() + 0.01 * (theta["c"] ** 2).sum()


def tanh_problem(forward_solver):
    return FixedPointProblem(tanh_map, tanh_outer, forward_solver,
                             lambda theta, x: {"z": x.new_zeros(x.shape[0], H)})


@pytest.fixture(scope="module")
def tanh_fd():
    theta = tanh_theta()
    x, y = tanh_data()
    problem = tanh_problem(Anderson(steps=100, memory=8, tol=1e-15, atol=1e-15))
    h = 1e-5
    fd = {}
    for name, value in theta.items():
        flat = torch.zeros(value.numel(), dtype=DTYPE)
        for j in range(value.numel()):
            e = torch.zeros(value.numel(), dtype=DTYPE)
            e[j] = h
            values = []
            for sign in (1, -1):
                th = {**theta, name: value + sign * e.reshape(value.shape)}
                values.append(problem.outer_loss(problem.solve(th, x).solution, th, y))
            flat[j] = (values[0] - values[1]) / (2 * h)
        fd[name] = flat.reshape(value.shape)
    return theta, x, y, fd


TANH_BACKENDS = [
    ("implicit-gmres", FixedPointImplicit(GMRES(tol=1e-13)), Anderson(steps=100, memory=8, tol=1e-14)),
    ("implicit-neumann", FixedPointImplicit(Neumann(alpha=1.0, steps=100)), Anderson(steps=100, memory=8, tol=1e-14)),
    ("implicit-dense", FixedPointImplicit(Dense()), FixedPointIteration(steps=200, tol=1e-14)),
    ("unrolled-iteration", UnrolledFixedPoint(), FixedPointIteration(steps=200, tol=1e-15)),
    ("unrolled-anderson", UnrolledFixedPoint(), Anderson(steps=100, memory=8, tol=1e-15)),
]


@pytest.mark.parametrize("name,backend,forward", TANH_BACKENDS, ids=[b[0] for b in TANH_BACKENDS])
def test_tanh_equilibrium_against_finite_differences(name, backend, forward, tanh_fd):
    theta, x, y, fd = tanh_fd
    result = fixed_point_hypergrad(tanh_problem(forward), theta, x, y, backend=backend)
    assert rel_err(result.grad, fd) < FD_RTOL
    d = result.diagnostics
    residual = d.stationarity.residual_norm if d.stationarity is not None else d.forward_solve.residual_norm
    assert float(residual) < 1e-13


# --- (c) A batch of problems under vmap equals a loop, and the closed form.


# Under vmap every iteration runs: ||A|| = 0.5 keeps the counts small (0.5^70 ~ 1e-21).
@pytest.mark.parametrize("forward", [FixedPointIteration(steps=70, tol=1e-14),
                                     Anderson(steps=30, memory=N, tol=1e-14)], ids=["iteration", "anderson"])
@pytest.mark.parametrize("linear_solver", [GMRES(maxiter=12, tol=1e-14), Neumann(alpha=1.0, steps=70)],
                         ids=["gmres", "neumann"])
def test_batched_linear_problems_vmap_equals_loop_and_closed_form(forward, linear_solver):
    theta = linear_theta(norm=0.5)
    xs, ys = linear_data(tasks=3)
    problem = linear_problem(forward)
    backend = FixedPointImplicit(linear_solver)
    batched = batched_fixed_point_hypergrad(problem, theta, xs, ys, backend=backend)
    looped = batched_fixed_point_hypergrad(problem, theta, xs, ys, backend=backend, vectorize=False)
    assert rel_err(batched.grad, looped.grad) < BATCH_RTOL
    assert rel_err(batched.inner_solution, looped.inner_solution) < BATCH_RTOL
    torch.testing.assert_close(batched.stats["task_loss"], looped.stats["task_loss"], rtol=BATCH_RTOL, atol=0)
    # Under vmap every iteration runs, frozen once converged: the same counts as the early-exit loop.
    assert torch.equal(batched.stats["forward_steps"], looped.stats["forward_steps"])
    assert torch.equal(batched.stats["steps"], looped.stats["steps"])
    assert bool(batched.stats["converged"].all()) and bool(batched.stats["forward_converged"].all())
    exact = [linear_exact(theta, xs[i], ys[i])[1] for i in range(3)]
    mean = {k: torch.stack([e[k] for e in exact]).mean(0) for k in exact[0]}
    assert rel_err(batched.grad, mean) < EXACT_RTOL


def test_batched_tanh_problems_vmap_equals_loop_and_given_solutions():
    theta = tanh_theta()
    xs, ys = tanh_data(tasks=3)
    problem = tanh_problem(Anderson(steps=30, memory=8, tol=1e-14))
    backend = FixedPointImplicit(GMRES(maxiter=20, tol=1e-13))
    batched = batched_fixed_point_hypergrad(problem, theta, xs, ys, backend=backend)
    looped = [fixed_point_hypergrad(problem, theta, xs[i], (ys[0][i], ys[1][i]), backend=backend)
              for i in range(3)]
    mean = {k: torch.stack([r.grad[k] for r in looped]).mean(0) for k in theta}
    assert rel_err(batched.grad, mean) < BATCH_RTOL
    # Given fixed points (from the batched solve) under vmap: the same answer without a forward solve.
    given = batched_fixed_point_hypergrad(problem, theta, xs, ys, backend=backend,
                                          inner_solutions=batched.inner_solution)
    assert rel_err(given.grad, batched.grad) < BATCH_RTOL


def test_forward_solvers_under_vmap_equal_a_loop():
    theta = linear_theta(norm=0.5)
    xs, _ = linear_data(tasks=3)
    for solver in (FixedPointIteration(steps=70, tol=1e-13), Anderson(steps=30, memory=3, tol=1e-13)):
        def solve(x):
            return solver(lambda z: linear_map(z, theta, x), {"z": torch.zeros(N, dtype=DTYPE)})

        batched = vmap(solve)(xs)
        for i in range(3):
            one = solve(xs[i])
            torch.testing.assert_close(batched.solution["z"][i], one.solution["z"], rtol=BATCH_RTOL, atol=0)
            assert int(batched.steps[i]) == int(one.steps)


def test_gmres_solves_a_nonsymmetric_system_like_a_dense_solve_and_under_vmap():
    g = _gen(4)
    A = torch.eye(7, dtype=DTYPE) + 0.4 * torch.randn(7, 7, generator=g, dtype=DTYPE)
    b = torch.randn(7, generator=g, dtype=DTYPE)

    def matvec(v):  # a two-leaf dict, as the solvers see parameter dicts
        y = A @ torch.cat([v["a"], v["b"].reshape(-1)])
        return {"a": y[:3], "b": y[3:].reshape(2, 2)}

    res = solve_gmres(matvec, {"a": b[:3], "b": b[3:].reshape(2, 2)}, tol=1e-13)
    x = torch.cat([res.solution["a"], res.solution["b"].reshape(-1)])
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-10, atol=0)
    assert bool(res.converged) and int(res.steps) <= 7 and float(res.residual_norm) < 1e-12
    As = torch.stack([A, A.T, 2 * torch.eye(7, dtype=DTYPE)])
    bs = torch.randn(3, 7, generator=g, dtype=DTYPE)
    solve = lambda A, b: solve_gmres(lambda v: {"x": A @ v["x"]}, {"x": b}, maxiter=12, tol=1e-13)  # noqa: E731
    batched = vmap(solve)(As, bs)
    for i in range(3):
        torch.testing.assert_close(batched.solution["x"][i], torch.linalg.solve(As[i], bs[i]), rtol=1e-10, atol=0)
        assert int(batched.steps[i]) == int(solve(As[i], bs[i]).steps)


# --- (d) Clear errors, and non-convergence reported rather than raised.


def test_map_with_wrong_keys_or_shapes_is_named():
    theta = linear_theta()
    x, y = linear_data()
    init = {"z": torch.zeros(N, dtype=DTYPE)}
    backend = FixedPointImplicit()
    wrong_key = FixedPointProblem(lambda z, th, x: {"h": z["z"]}, linear_outer, Anderson(), init)
    with pytest.raises(ValueError, match=r"map\(z, theta, batch\): the map's output has keys \['h'\].*missing \['z'\]"):
        fixed_point_hypergrad(wrong_key, theta, x, y, backend=backend)
    wrong_shape = FixedPointProblem(lambda z, th, x: {"z": z["z"][:3]}, linear_outer, FixedPointIteration(), init)
    with pytest.raises(ValueError, match=r"output\['z'\] has shape \(3,\), but z\['z'\] has shape \(6,\)"):
        fixed_point_hypergrad(wrong_shape, theta, x, y, backend=backend)
    not_a_dict = FixedPointProblem(lambda z, th, x: z["z"], linear_outer, Anderson(), init)
    with pytest.raises(TypeError, match=r"must return a dict\[str, Tensor\].*got Tensor"):
        not_a_dict.solve(theta, x)
    with pytest.raises(ValueError, match="Anderson: the map's output"):  # a bare solver checks too
        Anderson()(lambda z: {"q": z["z"]}, init)
    with pytest.raises(ValueError, match=r"inner_solution names do not match"):
        fixed_point_hypergrad(linear_problem(Anderson()), theta, x, y, backend=backend,
                              inner_solution={"w": torch.zeros(N, dtype=DTYPE)})


def test_non_convergence_is_reported_in_stats_and_raised_on_request():
    theta = linear_theta(norm=0.95)
    x, y = linear_data()
    problem = linear_problem(FixedPointIteration(steps=3))
    result = fixed_point_hypergrad(problem, theta, x, y, backend=FixedPointImplicit(GMRES(maxiter=2)))
    s = result.stats
    assert not bool(s["forward_converged"]) and int(s["forward_steps"]) == 3
    assert float(s["fixed_point_residual"]) > 1e-3
    assert not bool(s["converged"]) and int(s["steps"]) == 2
    with pytest.raises(SolverError, match="linear solve did not converge"):
        fixed_point_hypergrad(problem, theta, x, y, backend=FixedPointImplicit(GMRES(maxiter=2)), throw=True)
    with pytest.raises(SolverError, match="forward fixed-point solve did not converge in 1 of 1"):
        fixed_point_hypergrad(problem, theta, x, y, backend=FixedPointImplicit(Dense()), throw=True)
    # An expanding map (||A|| = 1.5 along a direction, with spectral radius > 1): reported as diverged.
    expanding = {"A": 1.5 * torch.eye(N, dtype=DTYPE), "B": theta["B"]}
    result = fixed_point_hypergrad(linear_problem(FixedPointIteration(steps=50)), expanding, x, y,
                                   backend=FixedPointImplicit(Neumann(alpha=1.0, steps=20)))
    assert bool(result.stats["forward_diverged"]) and bool(result.stats["diverged"])


@pytest.mark.parametrize("make,match", [
    (lambda: FixedPointIteration(steps=0), r"FixedPointIteration: steps must be >= 1, got 0"),
    (lambda: FixedPointIteration(steps=2.5), r"FixedPointIteration: steps must be an int"),
    (lambda: FixedPointIteration(damping=0.0), r"FixedPointIteration: damping must be a number in \(0, 1\]"),
    (lambda: FixedPointIteration(damping=1.5), r"damping must be a number in \(0, 1\], got 1.5"),
    (lambda: FixedPointIteration(tol=-1.0), r"FixedPointIteration: tol must be a number >= 0"),
    (lambda: Anderson(memory=0), r"Anderson: memory must be >= 1, got 0"),
    (lambda: Anderson(ridge=-1e-3), r"Anderson: ridge must be a number >= 0"),
    (lambda: Anderson(mixing=0), r"Anderson: mixing must be a number in \(0, 1\]"),
    (lambda: GMRES(maxiter=0), r"GMRES: maxiter must be >= 1"),
    (lambda: FixedPointImplicit("gmres"), r"FixedPointImplicit: linear_solver must be a LinearSolver.*"
                                          r"write GMRES\(\)"),
    (lambda: FixedPointProblem(3, linear_outer), r"FixedPointProblem: map must be callable"),
    (lambda: FixedPointProblem(linear_map, linear_outer, "anderson", {}), r"forward_solver must be a "
                                                                         r"FixedPointSolver"),
    (lambda: FixedPointProblem(linear_map, linear_outer, Anderson()), r"a forward_solver needs a starting point"),
    (lambda: FixedPointProblem(linear_map, linear_outer, Anderson(), "zeros"), r"init='zeros' is not accepted"),
    (lambda: FixedPointProblem(linear_map, linear_outer, Anderson(), 3), r"init must be a dict z0 or a callable"),
])
def test_bad_arguments_are_rejected_at_construction(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_wrong_problem_type_and_unrolled_with_a_given_solution():
    theta = linear_theta()
    x, y = linear_data()
    argmin = BilevelProblem(lambda p, t, b: (p["z"] ** 2).sum(), lambda p, t, b: (p["z"] ** 2).sum())
    with pytest.raises(TypeError, match=r"fixed_point_hypergrad: expected a FixedPointProblem, got BilevelProblem "
                                        r"\(use bilevel.hypergrad"):
        fixed_point_hypergrad(argmin, theta, x, y, backend=FixedPointImplicit())
    with pytest.raises(TypeError, match=r"FixedPointImplicit.hypergrad: expected a FixedPointProblem"):
        FixedPointImplicit().hypergrad(argmin, theta, x, y)
    with pytest.raises(TypeError, match=r"UnrolledFixedPoint.hypergrad: .*cannot take inner_solution="):
        fixed_point_hypergrad(linear_problem(Anderson()), theta, x, y, backend=UnrolledFixedPoint(),
                              inner_solution={"z": torch.zeros(N, dtype=DTYPE)})
    with pytest.raises(ValueError, match=r"the problem has no forward_solver"):
        fixed_point_hypergrad(linear_problem(None, init=None), theta, x, y, backend=FixedPointImplicit())
    assert isinstance(check_linear_solver("t", GMRES()), GMRES)


def test_anderson_with_more_memory_than_unknowns_in_float32_under_vmap():
    """A scalar z with memory 5: the residual differences are rank 1, and the small system must
    stay solvable in float32 for every task (a singular one would stop the whole vmap)."""
    problem = FixedPointProblem(lambda z, theta, x: {"z": 0.5 * z["z"] + theta["b"] * x},
                                lambda z, theta, y: (z["z"] * y).sum(), Anderson(steps=30, memory=5, tol=1e-6),
                                {"z": torch.zeros(())})
    xs = torch.tensor([0.0, 1.0, 2.0])
    result = batched_fixed_point_hypergrad(problem, {"b": torch.tensor(3.0)}, xs, torch.ones(3),
                                           backend=FixedPointImplicit())
    torch.testing.assert_close(result.inner_solution["z"], 6.0 * xs)  # z* = 2 b x
    torch.testing.assert_close(result.grad["b"], torch.tensor(2.0))  # mean of 2 x y
    assert bool(result.stats["forward_converged"].all())


def test_docs_snippet_runs():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "fixed-point.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    scope = {}
    exec(compile(code, "docs/fixed-point.md", "exec"), scope)
    result = scope["result"]
    assert bool(result.stats["converged"]) and bool(result.stats["forward_converged"])
    assert result.grad["W"].shape == (8, 8)
