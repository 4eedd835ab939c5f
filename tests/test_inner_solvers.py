"""Inner solvers: each step equals its torch.optim twin; Newton-CG converges, and its
line search works under vmap."""

import pytest
import torch
from torch.func import vmap

from bilevel import Adam, GradientDescent, Momentum, NewtonCG, run_inner

DTYPE = torch.float64


def quartic(p):
    return ((p["w"] - 1.0) ** 4).sum() + 0.5 * (p["w"] ** 2).sum() + (p["b"] ** 2).sum()


def start():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, generator=g, dtype=DTYPE), "b": torch.randn(2, generator=g, dtype=DTYPE)}


def torch_optim_run(make_opt, steps):
    params = {k: v.clone().requires_grad_(True) for k, v in start().items()}
    opt = make_opt(list(params.values()))
    for _ in range(steps):
        opt.zero_grad()
        quartic(params).backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


@pytest.mark.parametrize("solver,make_opt", [
    (GradientDescent(lr=0.05, steps=7), lambda ps: torch.optim.SGD(ps, lr=0.05)),
    (Momentum(lr=0.05, steps=7, momentum=0.8), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8)),
    (Momentum(lr=0.05, steps=7, momentum=0.8, nesterov=True),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True)),
], ids=["gd", "momentum", "nesterov"])
def test_steps_equal_torch_optim(solver, make_opt):
    phi, _ = run_inner(solver, quartic, start())
    expected = torch_optim_run(make_opt, solver.steps)
    for k in phi:
        torch.testing.assert_close(phi[k], expected[k], rtol=1e-12, atol=1e-14)


def test_adam_matches_its_formula():
    """higher's differentiable Adam update: lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps)."""
    solver = Adam(lr=0.1, steps=5, betas=(0.8, 0.9), eps=1e-6)
    phi, _ = run_inner(solver, quartic, start())
    p = start()
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p.items()}
    for t in range(1, 6):
        g = torch.func.grad(quartic)(p)
        for k in p:
            m[k] = 0.8 * m[k] + 0.2 * g[k]
            v2[k] = 0.9 * v2[k] + 0.1 * g[k] ** 2
            p[k] = p[k] - 0.1 * (1 - 0.9**t) ** 0.5 / (1 - 0.8**t) * m[k] / (v2[k].sqrt() + 1e-6)
    for k in phi:
        torch.testing.assert_close(phi[k], p[k], rtol=1e-12, atol=1e-14)


def test_adam_unrolls_through_zero_gradient_entries_without_nan():
    solver = Adam(lr=0.1, steps=3)
    f = lambda p: (p["w"][0] - 2.0) ** 2  # w[1] never gets a gradient
    g = torch.func.grad(lambda th: run_inner(solver, f, th)[0]["w"].sum())({"w": torch.zeros(2, dtype=DTYPE)})
    assert torch.isfinite(g["w"]).all()


def test_newton_cg_solves_a_quadratic_in_one_step():
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=DTYPE)
    c = torch.tensor([1.0, -1.0], dtype=DTYPE)
    f = lambda p: 0.5 * p["x"] @ A @ p["x"] - c @ p["x"]
    phi, _ = run_inner(NewtonCG(steps=1, cg_steps=2), f, {"x": torch.zeros(2, dtype=DTYPE)})
    torch.testing.assert_close(phi["x"], torch.linalg.solve(A, c), rtol=1e-12, atol=1e-14)


def test_newton_cg_line_search_prevents_overshoot():
    """sqrt(1 + x^2): a full Newton step from |x| > 1 overshoots and grows |x|; Armijo backtracks."""
    f = lambda p: torch.sqrt(1 + p["x"] ** 2).sum()
    x0 = {"x": torch.tensor([3.0], dtype=DTYPE)}
    values = [float(f(x0))]
    phi, state = x0, ()
    solver = NewtonCG(steps=1, cg_steps=1)
    for _ in range(6):
        phi, state = solver.step(f, phi, state)
        values.append(float(f(phi)))
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert values[1] < values[0]  # the full step (x -> -27) was rejected, a shorter one taken
    assert abs(float(phi["x"])) < 1e-6


def test_newton_cg_uses_steepest_descent_on_immediate_negative_curvature():
    f = lambda p: (-(p["x"] ** 2) + 0.1 * p["x"] ** 4).sum()  # concave at x = 0.5
    phi, _ = NewtonCG(steps=1, cg_steps=3).step(f, {"x": torch.tensor([0.5], dtype=DTYPE)}, ())
    assert float(f(phi)) < float(f({"x": torch.tensor([0.5], dtype=DTYPE)}))


def test_newton_cg_under_vmap_equals_loop():
    f = lambda c: (lambda p: torch.sqrt(1 + (p["x"] - c) ** 2).sum() + 0.1 * (p["x"] ** 2).sum())
    cs = torch.tensor([[0.5, -4.0], [3.0, 0.1], [-2.0, 2.0]], dtype=DTYPE)
    solver = NewtonCG(steps=4, cg_steps=2)
    x0 = torch.tensor([2.0, -1.0], dtype=DTYPE)
    batched = vmap(lambda c: run_inner(solver, f(c), {"x": x0})[0]["x"])(cs)
    for i in range(3):
        torch.testing.assert_close(batched[i], run_inner(solver, f(cs[i]), {"x": x0})[0]["x"], rtol=1e-12, atol=1e-14)


def _least_squares_problem(curvature):
    """iMAML's proximal problem for a linear model ``A w`` under 0.5 ||A w - y||^2, lam = 0.5."""
    from bilevel import imaml_problem, make_ggn
    g = torch.Generator().manual_seed(1)
    A, y = torch.randn(6, 3, generator=g, dtype=DTYPE), torch.randn(6, generator=g, dtype=DTYPE)
    outputs, criterion = (lambda p, x: x @ p["w"]), (lambda out, t: 0.5 * ((out - t) ** 2).sum())
    ggn = (lambda theta, phi, b: make_ggn(lambda p: outputs(p, b[0]), lambda o: criterion(o, b[1]), phi, ridge=0.5))
    problem = imaml_problem(lambda p, b: criterion(outputs(p, b[0]), b[1]), 0.5, NewtonCG(steps=1, cg_steps=3),
                            inner_curvature=ggn if curvature else None)
    return problem, A, y


@pytest.mark.parametrize("curvature", [False, True], ids=["hessian", "gauss-newton"])
def test_newton_cg_with_the_problems_curvature_solves_least_squares_exactly(curvature):
    """For a linear model the Gauss-Newton matrix is the Hessian: one Newton step of 3 CG steps
    (3 unknowns) reaches (A^T A + lam I)^-1 (A^T y + lam theta) either way."""
    problem, A, y = _least_squares_problem(curvature)
    theta = {"w": torch.tensor([0.3, -0.2, 1.0], dtype=DTYPE)}
    phi = problem.solve_inner(theta, (A, y))
    exact = torch.linalg.solve(A.T @ A + 0.5 * torch.eye(3, dtype=DTYPE), A.T @ y + 0.5 * theta["w"])
    torch.testing.assert_close(phi["w"], exact, rtol=1e-10, atol=1e-12)


def test_newton_cg_uses_the_problems_curvature():
    """A curvature that is not the Hessian (here 4x it) changes the step: NewtonCG really uses it."""
    from bilevel import BilevelProblem
    f = lambda phi, theta, b: 0.5 * ((phi["x"] - b) ** 2).sum()
    four_h = lambda theta, phi, b: (lambda v: {"x": 4.0 * v["x"]})
    solver = NewtonCG(steps=1, cg_steps=1, line_search_steps=1)
    b = torch.tensor([2.0], dtype=DTYPE)
    plain = BilevelProblem(f, f, solver, inner_init={"x": torch.zeros(1, dtype=DTYPE)})
    scaled = BilevelProblem(f, f, solver, inner_init={"x": torch.zeros(1, dtype=DTYPE)}, inner_curvature=four_h)
    torch.testing.assert_close(plain.solve_inner({}, b)["x"], b)  # the full Newton step
    torch.testing.assert_close(scaled.solve_inner({}, b)["x"], b / 4)


@pytest.mark.parametrize("solver", [GradientDescent(lr=0.05, steps=5), Momentum(lr=0.05, steps=5, momentum=0.8),
                                    Adam(lr=0.05, steps=5), NewtonCG(steps=3, cg_steps=2)],
                         ids=["gd", "momentum", "adam", "newton-cg"])
def test_detached_steps_take_plain_autograd_with_the_same_numbers(solver):
    """run_inner(detach=True) outside torch.func transforms computes gradients with torch.autograd
    (faster); the result equals the torch.func path's, alone and under vmap over tasks."""
    from bilevel.solvers import inner as inner_solvers

    calls = []
    real = torch.autograd.grad
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inner_solvers.torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
        detached, _ = run_inner(solver, quartic, start(), detach=True)
    assert calls  # the autograd path ran
    traced, _ = run_inner(solver, quartic, start())
    for k in traced:
        torch.testing.assert_close(detached[k], traced[k], rtol=1e-14, atol=1e-15)
    shifts, phi0 = torch.tensor([0.0, 0.5], dtype=DTYPE), start()
    batched = vmap(lambda c: run_inner(solver, lambda p: quartic({"w": p["w"] + c, "b": p["b"]}), phi0,
                                       detach=True)[0]["w"])(shifts)
    torch.testing.assert_close(batched[0], traced["w"], rtol=1e-12, atol=1e-14)
