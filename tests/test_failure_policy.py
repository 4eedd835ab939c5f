"""Correct or loud on a user's own problem: the failure policy, the explicit gradient mode,
composable and per-task hypergradients, warm starts, bad inputs and low precision.

Each test builds the failing situation the issue measured and checks that the result is now
either right (float64, against a dense solve or central finite differences) or loud.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

from bilevel import (CG, GMRES, MINRES, Anderson, BilevelProblem, Dense, FirstOrder, FixedPointImplicit,
                     FixedPointIteration, FixedPointProblem, GradientDescent, Implicit, Neumann, SolverError,
                     SolverWarning, TorchoptImplicit, TruncatedUnrolled, Unrolled, UnrolledFixedPoint,
                     batched_hypergrad, hypergrad, maml_problem, map_tasks, solve_neumann)
from bilevel.hvp import make_hvp, resolve_hvp_mode
from bilevel.tree import tree_ravel

DT = torch.float64


def rel(a, b):
    a, b = tree_ravel(a), tree_ravel(b)
    return float((a - b).norm() / b.norm())


# --- A nonconvex inner problem at a stationary point with an indefinite Hessian.

def indefinite_problem():
    """L_in(phi, theta) = sum_i c_i cos(phi_i) + (theta . phi): stationary at phi_i = pi + asin(theta_i/c_i)
    (where -c_i cos > 0 is a minimum) or at asin(theta_i/c_i) (a maximum direction): we pass a saddle
    point whose Hessian diag(-c_i cos phi_i) has both signs. L_out = ||phi - 1||^2 / 2."""
    c = torch.tensor([1.0, 2.0, 1.5], dtype=DT)
    theta = {"t": torch.tensor([0.3, -0.4, 0.2], dtype=DT)}
    # phi_0: a maximum of cos-part (Hessian -c cos < 0 near 0), phi_1, phi_2: minima near pi
    phi = torch.stack([torch.asin(theta["t"][0] / c[0]), torch.pi - torch.asin(theta["t"][1] / c[1]),
                       torch.pi - torch.asin(theta["t"][2] / c[2])])
    # grad: -c sin(phi) + theta = 0 at each
    problem = BilevelProblem(lambda p, th, b: (c * torch.cos(p["p"])).sum() + (th["t"] * p["p"]).sum(),
                             lambda p, th, b: 0.5 * ((p["p"] - 1.0) ** 2).sum(), inner_init={"p": phi.clone()})
    return problem, theta, {"p": phi}, c


def exact_indefinite(theta, phi, c):
    """dphi/dtheta = -H^-1 (H = diag(-c cos phi)), dL/dtheta = -(phi - 1) / (-c cos phi)."""
    h = -c * torch.cos(phi["p"])
    return {"t": -(phi["p"] - 1.0) / h}


def test_default_cg_at_negative_curvature_warns_and_names_the_fix():
    problem, theta, phi, c = indefinite_problem()
    exact = exact_indefinite(theta, phi, c)
    with pytest.warns(SolverWarning, match=r"negative curvature.*MINRES\(\), GMRES\(\) or CG\(negative_curvature='continue'\)"):
        wrong = hypergrad(problem, theta, None, None, backend=Implicit(), inner_solution=phi)
    assert rel(wrong.grad, exact) > 1e-2  # it is wrong, and it said so
    with pytest.raises(SolverError, match="negative curvature"):
        hypergrad(problem, theta, None, None, backend=Implicit(), inner_solution=phi, on_failure="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = hypergrad(problem, theta, None, None, backend=Implicit(), inner_solution=phi, on_failure="ignore")
    assert bool(quiet.diagnostics.linear_solve.negative_curvature)


@pytest.mark.parametrize("solver", [MINRES(tol=1e-13), GMRES(tol=1e-13), CG(negative_curvature="continue", tol=1e-13),
                                    Dense()], ids=["minres", "gmres", "cg-continue", "dense"])
def test_the_named_fixes_are_right_and_quiet(solver):
    problem, theta, phi, c = indefinite_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        result = hypergrad(problem, theta, None, None, backend=Implicit(solver), inner_solution=phi)
    assert rel(result.grad, exact_indefinite(theta, phi, c)) < 1e-10


def ridge():
    torch.manual_seed(0)
    X, y = torch.randn(20, 5, dtype=DT), torch.randn(20, dtype=DT)
    problem = BilevelProblem(lambda p, th, b: ((b[0] @ p["w"] - b[1]) ** 2).mean() + (th["l"].exp() * p["w"] ** 2).sum(),
                             lambda p, th, b: ((b[0] @ p["w"] - b[1]) ** 2).mean(),
                             GradientDescent(lr=0.2, steps=300), inner_init={"w": torch.zeros(5, dtype=DT)})
    return problem, {"l": torch.full((5,), -1.0, dtype=DT)}, (X, y)


def test_a_truncated_budget_is_quiet_by_configuration_and_an_unconverged_solve_is_not():
    problem, theta, data = ridge()
    with pytest.warns(SolverWarning, match="did not converge .*truncated=True"):
        hypergrad(problem, theta, data, data, backend=Implicit(CG(maxiter=2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        r = hypergrad(problem, theta, data, data, backend=Implicit(CG(maxiter=2, truncated=True)))
    assert not bool(r.diagnostics.linear_solve.converged) and bool(r.diagnostics.linear_solve.truncated)
    with pytest.raises(ValueError, match="truncated=True declares maxiter a deliberate budget"):
        CG(truncated=True)


def test_an_inner_solution_far_from_stationary_warns():
    problem, theta, data = ridge()
    short = BilevelProblem(problem.inner_loss, problem.outer_loss, GradientDescent(lr=0.2, steps=2),
                           inner_init=problem.inner_init)
    with pytest.warns(SolverWarning, match="not stationary .*Run the inner solver longer"):
        hypergrad(short, theta, data, data, backend=Implicit(Dense()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        hypergrad(short, theta, data, data, backend=Implicit(Dense(), stationarity_rtol=None))


def test_neumann_divergence_is_reported_even_before_the_residual_exceeds_b():
    """rho(I - alpha A) = 1.5 on one eigenvector with a tiny component: after 10 steps the residual is
    still below ||b||, but it grew over the last step, which for symmetric A means divergence."""
    A = torch.diag(torch.tensor([1.0, 2.5], dtype=DT))
    b = {"x": torch.tensor([1.0, 1e-3], dtype=DT)}
    res = solve_neumann(lambda v: {"x": A @ v["x"]}, b, alpha=1.0, steps=10)
    assert float(res.residual_norm) < float(b["x"].norm())
    assert bool(res.diverged) and not bool(res.converged)
    good = solve_neumann(lambda v: {"x": A @ v["x"]}, b, alpha=0.5, steps=200)
    assert bool(good.converged) and not bool(good.diverged)


def test_torchopt_adapter_fills_the_diagnostics_and_honours_the_policy():
    pytest.importorskip("torchopt")
    problem, theta, data = ridge()
    with pytest.raises(SolverError, match="did not converge"):
        hypergrad(problem, theta, data, data, backend=TorchoptImplicit(CG(maxiter=1, negative_curvature="continue")),
                  on_failure="raise")
    good = hypergrad(problem, theta, data, data, backend=TorchoptImplicit(CG(tol=1e-12, negative_curvature="continue")))
    ours = hypergrad(problem, theta, data, data, backend=Implicit(Dense()))
    assert bool(good.diagnostics.linear_solve.converged) and rel(good.grad, ours.grad) < 1e-8
    with pytest.raises(ValueError, match="always continues through negative curvature"):
        TorchoptImplicit(CG())


def contraction_problem(steps):
    return FixedPointProblem(map=lambda z, th, x: {"z": torch.tanh(th["W"] @ z["z"] + x)},
                             outer_loss=lambda z, th, y: ((z["z"] - y) ** 2).sum(),
                             forward_solver=FixedPointIteration(steps=steps, tol=1e-12),
                             init={"z": torch.zeros(3, dtype=DT)})


def test_a_fixed_point_that_did_not_converge_raises_through_hypergrad_too():
    theta = {"W": 0.5 * torch.eye(3, dtype=DT)}
    x, y = torch.ones(3, dtype=DT), torch.zeros(3, dtype=DT)
    for backend in (FixedPointImplicit(), UnrolledFixedPoint()):
        with pytest.raises(SolverError, match="forward fixed-point solve did not converge"):
            hypergrad(contraction_problem(2), theta, x, y, backend=backend, on_failure="raise")
        with pytest.raises(SolverError, match="forward fixed-point solve did not converge"):
            hypergrad(contraction_problem(2), theta, x, y, backend=backend, throw=True)  # the older spelling
    hypergrad(contraction_problem(200), theta, x, y, backend=FixedPointImplicit(), on_failure="raise")


# --- The explicit gradient mode: a detached outer solve never changes a nested one.

def test_a_detached_solve_leaves_a_nested_maml_solve_second_order():
    """The user's inner loss runs a MAML step of its own (differentiable in its input); the outer
    backend solves detached. The nested step must stay the true (second-order) one."""
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, dtype=DT), torch.randn(8, dtype=DT)
    task = maml_problem(lambda p, b: (torch.tanh(b[0] @ p["w"]) - b[1]).pow(2).mean(), GradientDescent(lr=0.5, steps=2))

    def nested(w):  # level-2 quantity: the query loss after adapting from w
        phi = task.solve_inner({"w": w}, (x, y))
        return task.outer_loss(phi, {"w": w}, (x, y))

    w0 = torch.randn(3, dtype=DT)
    reference = torch.func.grad(nested)(w0)  # the true gradient of the nested computation
    seen = []
    outer = BilevelProblem(lambda p, th, b: nested(p["w"]) + 0.5 * ((p["w"] - th["w"]) ** 2).sum(),
                           lambda p, th, b: (p["w"] ** 2).sum(), GradientDescent(lr=0.1, steps=1),
                           inner_init=lambda th: {"w": w0.clone()})

    def spy(f, phi):  # record the gradient the outer detached step takes at w0
        from bilevel.solvers.inner import detached_gradient
        g, v = detached_gradient(f, phi)
        seen.append(g["w"] - (phi["w"] - theta["w"]))
        return g, v

    theta = {"w": torch.zeros(3, dtype=DT)}
    from bilevel.solvers.inner import run_inner
    run_inner(outer.inner_solver, outer.objective(theta, None, spy), {"w": w0.clone()}, detach=True)
    assert float((seen[0] - reference).norm()) < 1e-12
    hypergrad(outer, theta, None, None, backend=FirstOrder())  # and through a backend: runs, same mode
    hypergrad(outer, theta, None, None, backend=Implicit(Dense(), stationarity_rtol=None))


# --- Composition and per-task results.

def test_map_tasks_of_hypergrad_runs_under_vmap_and_reduction_none_is_per_task():
    problem, theta, (X, y) = ridge()
    Xs, ys = X.reshape(4, 5, 5), y.reshape(4, 5)
    backend = Implicit(CG(maxiter=5, tol=1e-14))
    mapped = map_tasks(lambda a, b: hypergrad(problem, theta, (a, b), (a, b), backend=backend), Xs, ys)
    per_task = batched_hypergrad(problem, theta, (Xs, ys), (Xs, ys), backend=backend, reduction="none")
    loop = [hypergrad(problem, theta, (Xs[i], ys[i]), (Xs[i], ys[i]), backend=backend).grad["l"] for i in range(4)]
    assert per_task.grad["l"].shape == (4, 5) and per_task.loss.shape == (4,)
    torch.testing.assert_close(per_task.grad["l"], torch.stack(loop), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mapped.grad["l"], torch.stack(loop), rtol=1e-10, atol=1e-12)
    mean = batched_hypergrad(problem, theta, (Xs, ys), (Xs, ys), backend=backend)
    torch.testing.assert_close(mean.grad["l"], torch.stack(loop).mean(0), rtol=1e-10, atol=1e-12)
    assert mean.diagnostics.linear_solve.converged.shape == (4,)


@pytest.mark.parametrize("backend", [Unrolled(), Implicit(Dense())], ids=["unrolled", "implicit"])
def test_create_graph_matches_finite_differences_of_the_hypergradient(backend):
    """d/ds of a function of hypergrad(theta = s * t0).grad, against central differences."""
    problem, theta, data = ridge()
    t0 = theta["l"]

    def h(s):
        g = hypergrad(problem, {"l": s * t0}, data, data, backend=backend, create_graph=True).grad["l"]
        return (g * torch.arange(5, dtype=DT)).sum()

    s = torch.tensor(1.0, dtype=DT, requires_grad=True)
    (ours,) = torch.autograd.grad(h(s), s)
    eps = 1e-5
    with torch.no_grad():
        fd = (h(torch.tensor(1 + eps, dtype=DT)) - h(torch.tensor(1 - eps, dtype=DT))) / (2 * eps)
    assert abs(float(ours) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


# --- Warm starts.

def test_every_solving_backend_takes_a_warm_start():
    problem, theta, data = ridge()
    exact = hypergrad(problem, theta, data, data, backend=Implicit(Dense()))
    start = {"w": exact.inner_solution["w"] + 1e-3}
    for backend in (Implicit(Dense()), Unrolled(), TruncatedUnrolled(5)):
        warm = hypergrad(problem, theta, data, data, backend=backend, inner_start=start)
        assert warm.grad["l"].shape == (5,)
    implicit = hypergrad(problem, theta, data, data, backend=Implicit(Dense()), inner_start=start)
    assert rel(implicit.grad, exact.grad) < 1e-8
    with pytest.raises(ValueError, match="not both"):
        hypergrad(problem, theta, data, data, backend=Implicit(), inner_start=start, inner_solution=start)
    with pytest.raises(TypeError, match="cannot take inner_solution=.*inner_start="):
        hypergrad(problem, theta, data, data, backend=Unrolled(), inner_solution=start)
    with pytest.raises(ValueError, match=r"inner_start\['w'\] has shape"):
        hypergrad(problem, theta, data, data, backend=Unrolled(), inner_start={"w": torch.zeros(2, dtype=DT)})
    fp = contraction_problem(200)
    z_theta = {"W": 0.5 * torch.eye(3, dtype=DT)}
    x = torch.ones(3, dtype=DT)
    cold = hypergrad(fp, z_theta, x, x * 0, backend=FixedPointImplicit())
    warm = hypergrad(fp, z_theta, x, x * 0, backend=FixedPointImplicit(), inner_start=cold.inner_solution)
    assert int(warm.diagnostics.forward_solve.steps) < int(cold.diagnostics.forward_solve.steps)


# --- Bad inputs name the problem.

def test_bad_inputs_say_what_to_write():
    problem, theta, data = ridge()
    with pytest.raises(TypeError, match=r"theta\['x'\] is a float \(-3.0\), not a Tensor; write e.g. theta = "):
        hypergrad(problem, {"x": -3.0}, data, data, backend=Unrolled())
    with pytest.raises(TypeError, match=r"theta\['l'\] has dtype torch.int64; hypergradients need floating-point"):
        hypergrad(problem, {"l": torch.zeros(5, dtype=torch.int64)}, data, data, backend=Unrolled())
    with pytest.raises(TypeError, match="inner_init got a module .* it takes the starting point as a dict"):
        BilevelProblem(problem.inner_loss, problem.outer_loss, inner_init=torch.nn.Linear(2, 2))
    missing = BilevelProblem(problem.inner_loss, problem.outer_loss, GradientDescent(lr=0.1, steps=2))
    with pytest.raises(KeyError, match=r"phi starts at theta \(inner_init='theta'.*give BilevelProblem inner_init="):
        hypergrad(missing, theta, data, data, backend=Implicit())


# --- Device-independent HVPs and low precision.

def test_auto_hvp_is_reverse_over_reverse_on_every_device_so_mse_loss_works():
    assert resolve_hvp_mode("auto", {"w": torch.empty(2, device="meta")}) == "reverse-over-reverse"
    x, y = torch.randn(6, 2, dtype=DT), torch.randn(6, dtype=DT)
    f = lambda p: F.mse_loss(x @ p["w"], y)
    w = {"w": torch.randn(2, dtype=DT)}
    auto = make_hvp(f, w, "auto")({"w": torch.ones(2, dtype=DT)})["w"]
    torch.testing.assert_close(auto, 2 / 6 * x.T @ x @ torch.ones(2, dtype=DT))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(dtype):
    problem, theta, (X, y) = ridge()
    exact = hypergrad(problem, theta, (X, y), (X, y), backend=Implicit(Dense()))
    half = lambda t: t.to(dtype)
    problem_h = BilevelProblem(problem.inner_loss, problem.outer_loss, problem.inner_solver,
                               inner_init={"w": torch.zeros(5, dtype=dtype)})
    for backend in (Unrolled(), Implicit(CG(tol=1e-6))):
        r = hypergrad(problem_h, {"l": half(theta["l"])}, (half(X), half(y)), (half(X), half(y)), backend=backend)
        assert r.grad["l"].dtype == dtype
        # float32 arithmetic on half-rounded inputs: the error is the inputs' rounding, not the solve's
        assert rel({"l": r.grad["l"].double()}, exact.grad) < (3e-2 if dtype == torch.bfloat16 else 5e-3)


def test_a_non_finite_newton_change_fails_the_stationarity_check():
    """A refinement that left the losses' domain (NaN) is not a pass."""
    from bilevel.diagnostics import InnerStationarity, stationarity

    one = torch.tensor(1e-6, dtype=torch.float64)
    for bad in (float("nan"), float("inf")):
        st = stationarity(InnerStationarity, one, torch.tensor(1.0, dtype=torch.float64), 1e-2,
                          newton_change=torch.tensor(bad, dtype=torch.float64), newton_check=1e-2)
        assert not bool(st.stationary)


def test_the_convergence_floor_is_float32s_only():
    """100 eps in float32 (what it can reach); none in float64, and none in bfloat16/float16, whose
    100 eps would pass a residual of 78% / 10% of ||b||."""
    from bilevel.solvers.linear import threshold

    floor32 = 100 * torch.finfo(torch.float32).eps
    assert abs(float(threshold(torch.tensor(1.0), 1e-10, 0.0)) - floor32) <= 1e-3 * floor32
    assert float(threshold(torch.tensor(1.0, dtype=torch.float64), 1e-10, 0.0)) == 1e-10
    for half in (torch.bfloat16, torch.float16):  # tol * ||b|| in that dtype (1e-10, or 0 where it underflows)
        assert float(threshold(torch.tensor(1.0, dtype=half), 1e-10, 0.0)) < 1e-9
