"""Every backend against exact answers in float64: a closed-form ridge problem and
central finite differences of a logistic-regression hyperparameter problem."""

import pytest
import torch

from backends import CASES, EXACT, ids
from bilevel import CG, GradientDescent, Implicit, NewtonCG, hypergrad
from problems import (DTYPE, rel_err, logistic_data, logistic_problem, ridge_data, ridge_exact,
                      ridge_lipschitz, ridge_problem)

LAM = 10.0
RIDGE_RTOL = 1e-8  # the bar for converged solvers in float64
FD_RTOL = 1e-6  # central differences with h = 1e-5: truncation ~h^2, rounding ~eps/h


def ridge_setup():
    inner, outer, theta = ridge_data()
    X, _ = inner
    eig = torch.linalg.eigvalsh(X.T @ X)
    return inner, outer, theta, float(eig.max()) + LAM, float(eig.min()) + LAM, X.shape[1]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_ridge_closed_form(case):
    inner, outer, theta, L, mu, d = ridge_setup()
    backend, solver = case.build(L, mu, d)
    w_star, exact, loss, g_w = ridge_exact(LAM, inner, outer, theta)
    result = hypergrad(ridge_problem(LAM, solver), theta, inner, outer, backend=backend)
    expected = {"exact": exact, "first_order": g_w, "reptile": theta["w"] - w_star}[case.answer]
    assert rel_err(result.grad, {"w": expected}) < RIDGE_RTOL
    assert rel_err(result.inner_solution, {"w": w_star}) < RIDGE_RTOL
    torch.testing.assert_close(result.loss, loss, rtol=1e-10, atol=0)
    if "converged" in result.stats:
        assert bool(result.stats["converged"])


def test_ridge_hyperparameter_form_with_constant_init():
    """theta enters only the inner loss (phi starts from a fixed point), unrolled and implicit agree."""
    inner, outer, theta, L, mu, d = ridge_setup()
    w0 = {"w": torch.zeros(d, dtype=DTYPE)}
    _, exact, _, _ = ridge_exact(LAM, inner, outer, theta)
    for case in EXACT:
        backend, solver = case.build(L, mu, d)
        result = hypergrad(ridge_problem(LAM, solver, inner_init=w0), theta, inner, outer, backend=backend)
        assert rel_err(result.grad, {"w": exact}) < RIDGE_RTOL, case.id


def test_implicit_after_a_user_torch_optim_loop():
    """The implicit backend needs only phi*: here it comes from torch.optim.LBFGS."""
    inner, outer, theta, L, mu, d = ridge_setup()
    w_star, exact, _, _ = ridge_exact(LAM, inner, outer, theta)
    problem = ridge_problem(LAM, inner_solver=None)
    w = theta["w"].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=100, tolerance_grad=1e-14, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = problem.inner_loss({"w": w}, theta, inner)
        loss.backward()
        return loss

    opt.step(closure)
    result = hypergrad(problem, theta, inner, outer, backend=Implicit(CG(tol=1e-14)),
                       inner_solution={"w": w.detach()})
    assert rel_err(result.grad, {"w": exact}) < RIDGE_RTOL


def logistic_outer_value(theta, inner, outer, d):
    solver = NewtonCG(steps=30, cg_steps=d)
    problem = logistic_problem(solver, d)
    phi = problem.solve_inner(theta, inner)
    return problem.outer_loss(phi, theta, outer)


@pytest.fixture(scope="module")
def logistic_fd():
    inner, outer, theta = logistic_data()
    d = theta["log_l2"].numel()
    h = 1e-5
    fd = torch.zeros(d, dtype=DTYPE)
    for j in range(d):
        e = torch.zeros(d, dtype=DTYPE)
        e[j] = h
        plus = logistic_outer_value({"log_l2": theta["log_l2"] + e}, inner, outer, d)
        minus = logistic_outer_value({"log_l2": theta["log_l2"] - e}, inner, outer, d)
        fd[j] = (plus - minus) / (2 * h)
    X = inner[0]
    l2 = theta["log_l2"].exp()
    L = 0.25 * float(torch.linalg.eigvalsh(X.T @ X / X.shape[0]).max()) + float(l2.max())
    mu = float(l2.min())
    return inner, outer, theta, fd, L, mu, d


@pytest.mark.parametrize("case", EXACT, ids=ids(EXACT))
def test_logistic_central_finite_differences(case, logistic_fd):
    inner, outer, theta, fd, L, mu, d = logistic_fd
    backend, solver = case.build(L, mu, d)
    result = hypergrad(logistic_problem(solver, d), theta, inner, outer, backend=backend)
    assert rel_err(result.grad, {"log_l2": fd}) < FD_RTOL


def test_truncation_is_biased_when_it_drops_most_steps():
    """Sanity check that the exact tests can fail: 2 of 40 GD steps miss the hypergradient."""
    from bilevel import TruncatedUnrolled

    inner, outer, theta, L, mu, d = ridge_setup()
    _, exact, _, _ = ridge_exact(LAM, inner, outer, theta)
    result = hypergrad(ridge_problem(LAM, GradientDescent(lr=1.0 / L, steps=40)), theta, inner, outer,
                       backend=TruncatedUnrolled(2))
    assert rel_err(result.grad, {"w": exact}) > 1e-3
